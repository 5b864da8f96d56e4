"""Preflight: check every configured dataset folder and model before any GPU job (login node / CPU partition).

    python -m vqinsight.preflight --datasets '<json>' --models '<json>' [--decode] [--report check.tsv]

`--datasets` maps each dataset key to its config entry plus `raw` (its raw directory); `--models` maps a name to a
checkpoint path or hub id. Prints what was read and one table of every problem with its fix, and exits 1 when there
is any (2 for unusable arguments). The Snakemake target `check` runs it with the values of the config.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from pathlib import Path

from vqinsight.data.preflight import check_all, problem_table, summary_table
from vqinsight.provenance import atomic_write_text

log = logging.getLogger("vqinsight.preflight")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="{}", help="JSON: key -> {raw, source, parse, expect_rows, ...}")
    ap.add_argument("--models", default="{}", help="JSON: name -> local path or hub id")
    ap.add_argument("--scale", nargs=2, type=float, default=(1.0, 5.0), metavar=("LO", "HI"))
    ap.add_argument("--decode", action="store_true", help="also decode first and last frame of every media file")
    ap.add_argument("--reader", choices=("decord", "pyav"), default="decord")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--report", type=Path, help="also write the problems as TSV (item, problem, fix)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        datasets, models = json.loads(a.datasets), json.loads(a.models)
        if not isinstance(datasets, dict) or not isinstance(models, dict):
            raise ValueError("--datasets and --models must be JSON objects")
        if any(not isinstance(v, dict) or "raw" not in v for v in datasets.values()):
            raise ValueError("every --datasets entry needs a 'raw' directory")
    except ValueError as e:
        log.error("preflight: %s", e)
        return 2
    reports, problems = check_all(datasets, models, (a.scale[0], a.scale[1]), a.decode, a.reader, a.workers)
    if reports:
        log.info("\n%s\n", summary_table(reports))
    if a.report:
        buf = io.StringIO()
        w = csv.writer(buf, delimiter="\t", lineterminator="\n")
        w.writerow(("item", "problem", "fix"))
        w.writerows((p.item, p.what, p.fix) for p in problems)
        atomic_write_text(a.report, buf.getvalue())
    checked = f"{len(reports)} dataset(s), {len(models)} model(s)" + (", media decoded" if a.decode else "")
    if problems:
        log.error("\n%s\n\npreflight: %d problem(s) in %s", problem_table(problems), len(problems), checked)
        return 1
    log.info("preflight: no problems in %s", checked)
    return 0


if __name__ == "__main__":
    sys.exit(main())
