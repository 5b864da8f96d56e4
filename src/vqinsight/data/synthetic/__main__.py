"""Command line: ``python -m vqinsight.data.synthetic --dataset KEY|all --out DIR [--seed 0] [--nframes 16] ...``.

With ``--dataset all`` every dataset is written into ``DIR/<key>``; otherwise ``DIR`` is the dataset's raw dir.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from vqinsight.data.synthetic.generate import DATASET_KEYS, generate_dataset

log = logging.getLogger("vqinsight.data.synthetic")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, generate, log a one-line summary per dataset. Returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m vqinsight.data.synthetic", description=__doc__)
    ap.add_argument("--dataset", required=True, choices=[*DATASET_KEYS, "all"])
    ap.add_argument("--out", required=True, type=Path, help="raw dir of the dataset (or parent dir with 'all')")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nframes", type=int, default=16)
    ap.add_argument("--height", type=int, default=56)
    ap.add_argument("--width", type=int, default=84)
    ap.add_argument("--fps", type=float, default=8.0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keys = DATASET_KEYS if args.dataset == "all" else (args.dataset,)
    t0 = time.perf_counter()
    for key in keys:
        out = args.out / key if args.dataset == "all" else args.out
        t = time.perf_counter()
        summary = generate_dataset(
            key, out, seed=args.seed, nframes=args.nframes, height=args.height, width=args.width, fps=args.fps
        )
        secs = time.perf_counter() - t
        log.info("%s: %d files, counts %s, %.1f s", key, len(summary["files"]), summary["counts"], secs)
    log.info("done: %d dataset(s) in %.1f s", len(keys), time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
