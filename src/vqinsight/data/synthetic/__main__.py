"""Command line: ``python -m vqinsight.data.synthetic --dataset KEY|all --out DIR [--seed 0] [--nframes 16] ...``.

With ``--dataset all`` every dataset is written into ``DIR/<key>``; otherwise ``DIR`` is the dataset's raw dir.
``--mix JSON`` changes the degradation mix (keys: exposure_p, under_p, other_max_severity, max_active, exposure_min;
omitted keys keep their defaults), e.g. ``--mix '{"exposure_p": 1, "under_p": 1, "other_max_severity": 0.25}'``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from vqinsight.data.synthetic.degrade import Mix
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
    ap.add_argument(
        "--mix", default=None, metavar="JSON", help="degradation mix as a JSON object (default mix if absent)"
    )
    args = ap.parse_args(argv)
    try:
        mix = Mix.coerce(json.loads(args.mix)) if args.mix is not None else None
    except ValueError as e:  # json.JSONDecodeError is a ValueError
        ap.error(f"--mix: {e}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keys = DATASET_KEYS if args.dataset == "all" else (args.dataset,)
    t0 = time.perf_counter()
    for key in keys:
        out = args.out / key if args.dataset == "all" else args.out
        t = time.perf_counter()
        summary = generate_dataset(
            key,
            out,
            seed=args.seed,
            nframes=args.nframes,
            height=args.height,
            width=args.width,
            fps=args.fps,
            mix=mix,
        )
        secs = time.perf_counter() - t
        log.info("%s: %d files, counts %s, %.1f s", key, len(summary["files"]), summary["counts"], secs)
    log.info("done: %d dataset(s) in %.1f s", len(keys), time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
