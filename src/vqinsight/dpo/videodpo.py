"""Convert VideoDPO's released pairs (``<META>/pair.json`` + ``<META>/metadata.json``) to this project's pairs JSONL.

    python -m vqinsight.dpo.videodpo --meta VIDEODPO_META_DIR --out pairs.jsonl [--dupbeta 0]

The formats and the weighting are described in ``vqinsight.dpo.data``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .data import read_videodpo, write_pairs

log = logging.getLogger("vqinsight.dpo.videodpo")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--meta", required=True, type=Path, help="the directory holding pair.json and metadata.json")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--dupbeta", type=float, default=0.0, help="weight = (0.72/score)**dupbeta; 0 = uniform")
    ap.add_argument("--no-check-files", action="store_true", help="do not require the clips to exist")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        pairs = read_videodpo(a.meta, a.dupbeta, check_files=not a.no_check_files)
    except (FileNotFoundError, ValueError) as e:
        log.error("%s", e)
        return 2
    write_pairs(pairs, a.out)
    log.info("wrote %d pairs (%d prompts) to %s", len(pairs), len({p["prompt_id"] for p in pairs}), a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
