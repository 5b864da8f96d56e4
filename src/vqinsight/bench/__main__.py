"""Dispatch ``python -m vqinsight.bench NAME [options]`` to the named benchmark's ``main(argv) -> int``."""

from __future__ import annotations

import importlib
import logging
import sys

log = logging.getLogger("vqinsight.bench")

# name -> module with a ``main(argv: list[str] | None) -> int``; imported lazily so one bench's deps don't load all.
BENCHES: dict[str, str] = {
    "frames": "vqinsight.bench.frames",
    "decode": "vqinsight.bench.decode",
    "grpo_step": "vqinsight.bench.grpo_step",
    "t2v": "vqinsight.bench.t2v",
    "judge": "vqinsight.bench.judge",
    "vision": "vqinsight.bench.vision",
    "dag": "vqinsight.bench.dag",
    "smoke": "vqinsight.bench.smoke",
}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark named by the first argument; exit 2 with the list of names when it is unknown."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    names = ", ".join(sorted(BENCHES))
    if not argv or argv[0] in ("-h", "--help"):
        log.info("usage: python -m vqinsight.bench NAME [options]; NAME is one of: %s", names)
        return 0 if argv else 2
    name = argv[0]
    if name not in BENCHES:
        log.error("unknown benchmark %r; available: %s", name, names)
        return 2
    return int(importlib.import_module(BENCHES[name]).main(argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
