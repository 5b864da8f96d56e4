"""One generator's evaluation for Table 6: its VBench scores and the final judge's win rate over G_0.

    python -m vqinsight.stage3.evaluate --vbench results/demo/stage3/eval/vbench/united_r2.json \\
        --predictions results/demo/stage3/eval/winrate/united_r2.jsonl --generator united_r2 \\
        --out results/demo/stage3/eval/united_r2.json

``--predictions`` (the judge's verdicts on "this generator's video vs G_0's video" for the same held-out prompt and
seed index, both orders) is left out for G_0 itself. The output is what `vqinsight.report.tables.build_table6`
reads: {"generator", "n_videos", "vbench": {"computed_by", "dimensions", "final"}, "winrate": {...} | null}.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..provenance import atomic_write_json, write_meta
from ..records import load_predictions
from .selection import winrate

log = logging.getLogger("vqinsight.stage3.evaluate")


def evaluate(vbench_path: Path, predictions: Path | None, generator: str, seed: int = 0) -> dict:
    try:
        vb = json.loads(Path(vbench_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{vbench_path}: unreadable VBench result ({e})") from e
    if not isinstance(vb.get("dimensions"), dict):
        raise ValueError(f"{vbench_path}: no 'dimensions' mapping")
    wr = None
    if predictions is not None:
        try:
            wr = winrate(load_predictions(predictions), seed=seed)
        except ValueError as e:
            raise ValueError(f"{predictions}: {e}") from e
    return {
        "generator": generator,
        "n_videos": vb.get("n_videos"),
        "vbench": {k: vb.get(k) for k in ("computed_by", "dimensions", "final")},
        "winrate": wr,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vbench", required=True, type=Path, help="output of vqinsight.stage3.vbench (demo or full)")
    ap.add_argument("--predictions", type=Path, default=None, help="judge verdicts G vs G_0 (none for G_0)")
    ap.add_argument("--generator", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        out = evaluate(a.vbench, a.predictions, a.generator, a.seed)
    except ValueError as e:
        log.error("%s", e)
        return 2
    atomic_write_json(a.out, out)
    write_meta(a.out.with_suffix(".meta.json"), {k: str(v) for k, v in vars(a).items()})
    wr = out["winrate"]
    log.info("%s: vbench %s, win rate vs G0 %s", a.generator, out["vbench"]["dimensions"], wr and wr.get("winrate"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
