"""Benchmark metrics from a predictions file: one metrics JSON and one points CSV per (system, benchmark).

    python -m vqinsight.evaluate --predictions results/demo/eval/predictions/vqinsight/monetbench.jsonl \\
        --benchmark monetbench --task comparison --system vqinsight --label "VQ-Insight" --kind ours \\
        --out results/demo/eval/metrics/vqinsight/monetbench.json --scale 1 5

Metrics (src/vqinsight/metrics.py has the definitions):
- comparison: ``tau`` (tie-calibrated accuracy acc23 with its threshold ``tau_epsilon``), ``diff`` (accuracy on
  human-non-tied pairs), the accuracy-vs-epsilon curve, and the swap-flip rate (pairs whose verdict changes when
  the two videos are exchanged, among pairs parsed in both orders). The per-pair margin is described in
  src/vqinsight/judge/engine.py: the mean over both orders of P(first better) − P(second better) (``--margin
  prob``), the vote share (``--margin votes``), or the baseline's own score difference (CLIP baselines write
  ``margin``).
- image/video score: SRCC, KRCC, PLCC (raw) and PLCC after the 4-parameter logistic fit (``plcc_logistic``).
- multi-dimension score: SRCC/KRCC/PLCC per dimension (spatial, temporal, alignment).
- yes/no questions: accuracy.

Unparsable answers are counted (``unparsed``) and take the scale midpoint (scores) or no preference (margin 0),
so a judge that fails to answer is penalised rather than silently evaluated on its easy cases. A score off the
``--scale`` (e.g. ``3333333`` or ``6.0`` on 1-5; any dimension of a multi-dimension score) is unparsed too, so one
absurd answer cannot dominate PLCC; ``--pred-scale raw`` (a baseline's own metric scale) skips that check. A metric
that is undefined (constant predictions) is written as null.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics
from .parsing import is_well_formed, on_scale
from .provenance import atomic_write_json, atomic_write_text, write_meta
from .records import load_predictions

log = logging.getLogger("vqinsight.evaluate")

DIMS = ("spatial", "temporal", "alignment")
HUMAN = {"A": 1, "B": -1, "tie": 0}


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _first_prob(rec: dict[str, Any]) -> float | None:
    """P(the ORIGINAL first video is better) from one order's answer probabilities."""
    p = rec.get("p")
    if not p:
        return None
    a, b = p.get("A"), p.get("B")
    if a is None or b is None:
        return None
    return a if rec.get("order") != "BA" else b


def _first_vote(rec: dict[str, Any]) -> float | None:
    v = rec.get("votes")
    if not v or not v.get("k"):
        return None
    share = v["first"] / v["k"]
    return share if rec.get("order") != "BA" else 1.0 - share - (v["k"] - v["valid"]) / v["k"]


def _original_choice(rec: dict[str, Any]) -> str | None:
    c = rec.get("pred")
    if c not in ("A", "B"):
        return None
    return c if rec.get("order") != "BA" else {"A": "B", "B": "A"}[c]


def comparison_pairs(records: list[dict[str, Any]], margin: str = "prob") -> list[dict[str, Any]]:
    """One entry per pair: human label (+1 first better, −1 second, 0 tie), margin in [−1, 1], swap flip.

    Margin sources in order of preference: the record's own ``margin`` (score-difference baselines), answer
    probabilities (``margin="prob"``) or vote shares (``"votes"``), and else the parsed verdict (±1, 0 if none).
    """
    by_id: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in records:
        by_id[r["sample_id"]][r.get("order") or "AB"] = r
    out = []
    for sid, orders in sorted(by_id.items()):
        ab = orders.get("AB")
        gt = ab["gt"] if ab is not None else {"A": "B", "B": "A"}.get(orders["BA"]["gt"], orders["BA"]["gt"])
        if gt not in HUMAN:
            raise ValueError(f"pair {sid}: human label {gt!r} is not one of A, B, tie")
        recs = list(orders.values())
        if any("margin" in r for r in recs):
            m = float(np.mean([r["margin"] for r in recs if "margin" in r]))
        else:
            src = _first_prob if margin == "prob" else _first_vote
            firsts = [x for x in (src(r) for r in recs) if x is not None]
            if firsts:
                m = float(np.mean([2 * x - 1 for x in firsts]))
            else:
                choices = [_original_choice(r) for r in recs]
                m = float(np.mean([{"A": 1.0, "B": -1.0}.get(c or "", 0.0) for c in choices]))
        choices = [_original_choice(orders[o]) for o in ("AB", "BA") if o in orders]
        flip = None
        if len(choices) == 2 and None not in choices:
            flip = choices[0] != choices[1]
        out.append({"sample_id": sid, "human": HUMAN[gt], "margin": m, "flip": flip})
    return out


def _corr(pred: list[float], gt: list[float]) -> dict[str, float | None]:
    if len(pred) < 3:
        return {"srcc": None, "krcc": None, "plcc": None, "plcc_logistic": None}
    return {
        "srcc": _num(metrics.srcc(pred, gt)),
        "krcc": _num(metrics.krcc(pred, gt)),
        "plcc": _num(metrics.plcc(pred, gt)),
        "plcc_logistic": _num(metrics.plcc(pred, gt, fit="logistic4")),
    }


def on_scale_pred(pred: Any, task: str, scale: tuple[float, float] | None) -> Any:
    """A record's prediction, or None (unparsed) when a score (any dimension of a multi-dimension score) lies off
    ``scale``; ``scale=None`` keeps every prediction (a baseline's own metric scale)."""
    if pred is None or scale is None or task not in ("image_score", "video_score", "multidim_score"):
        return pred
    values = pred.values() if isinstance(pred, dict) else [pred]
    return pred if all(on_scale(float(v), scale) is not None for v in values) else None


def compute(
    records: list[dict[str, Any]],
    task: str,
    scale: tuple[float, float],
    margin: str = "prob",
    pred_scale: str = "mos",
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """(task metrics, per-item points for the figures, counts {n, unparsed, format_rate}).

    With ``pred_scale="mos"`` a score prediction off ``scale`` counts as unparsed, as the judge parses it.
    """
    if not records:
        raise ValueError("no predictions")
    mid = (scale[0] + scale[1]) / 2
    check = scale if pred_scale == "mos" else None
    records = [{**r, "pred": on_scale_pred(r.get("pred"), task, check)} for r in records]
    comps = [r.get("completion") for r in records]
    fmt = float(np.mean([is_well_formed(c) for c in comps])) if all(c is not None for c in comps) else None
    unparsed = sum(r.get("pred") is None for r in records)
    if task in ("image_score", "video_score"):
        pred = [mid if r["pred"] is None else float(r["pred"]) for r in records]
        gt = [float(r["gt"]) for r in records]
        points = [{"sample_id": r["sample_id"], "pred": p, "gt": g} for r, p, g in zip(records, pred, gt, strict=True)]
        res: dict[str, Any] = _corr(pred, gt)
        n = len(records)
    elif task == "multidim_score":
        res, points = {}, []
        dims = [d for d in DIMS if any(isinstance(r["pred"], dict) and d in r["pred"] for r in records)] or list(DIMS)
        for d in dims:
            pred = [float((r["pred"] or {}).get(d, mid)) for r in records]
            gt = [float(r["gt"][d]) for r in records]
            c = _corr(pred, gt)
            res[d] = {k: c[k] for k in ("srcc", "krcc", "plcc")}
            points += [
                {"sample_id": r["sample_id"], "dimension": d, "pred": p, "gt": g}
                for r, p, g in zip(records, pred, gt, strict=True)
            ]
        n = len(records)
    elif task == "comparison":
        pairs = comparison_pairs(records, margin)
        h = [p["human"] for p in pairs]
        m = [p["margin"] for p in pairs]
        table = metrics.pairwise_accuracy_table(h, m)
        eps, acc = metrics.tie_accuracy_curve(h, m)
        flips = [p["flip"] for p in pairs if p["flip"] is not None]
        res = {
            "tau": _num(table["tau"]),
            "tau_epsilon": table["epsilon"],
            "diff": _num(table["diff"]),
            "n_pairs": table["n_pairs"],
            "n_human_ties": table["n_human_ties"],
            "swap_flip_rate": float(np.mean(flips)) if flips else None,
            "n_both_orders": len(flips),
            "eps_curve": {"epsilon": [float(x) for x in eps], "accuracy": [float(x) for x in acc]},
        }
        points = [
            {
                "sample_id": p["sample_id"],
                "margin": p["margin"],
                "human": p["human"],
                "flip": "" if p["flip"] is None else int(p["flip"]),
            }
            for p in pairs
        ]
        n = len(pairs)
    elif task == "vqa":
        res = {"accuracy": float(np.mean([r["pred"] == r["gt"] for r in records]))}
        points = [{"sample_id": r["sample_id"], "pred": r["pred"], "gt": r["gt"]} for r in records]
        n = len(records)
    else:
        raise ValueError(f"no metrics for task {task!r}")
    return res, points, {"n": n, "n_judgments": len(records), "unparsed": unparsed, "format_rate": fmt}


def points_csv(points: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if points:
        w = csv.DictWriter(buf, fieldnames=list(points[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(points)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--predictions", required=True, type=Path)
    ap.add_argument("--benchmark", required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--system", required=True)
    ap.add_argument("--label", default=None)
    ap.add_argument("--kind", choices=("ours", "baseline", "ablation"), default="ours")
    ap.add_argument("--variant", default=None)
    ap.add_argument("--margin", choices=("prob", "votes"), default="prob")
    ap.add_argument("--scale", nargs=2, type=float, default=(1.0, 5.0))
    ap.add_argument("--demo", action="store_true", help="label the results as the embedded demo's")
    ap.add_argument(
        "--pred-scale", choices=("mos", "raw"), default="mos", help="raw: predictions on a metric's own scale (CLIP)"
    )
    ap.add_argument("--out", required=True, type=Path, help="metrics JSON; the points CSV goes beside it")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not a.predictions.is_file():
        log.error("%s: predictions not found (run the judge_predict rule first)", a.predictions)
        return 2
    try:
        records = load_predictions(a.predictions)
        res, points, counts = compute(records, a.task, (a.scale[0], a.scale[1]), a.margin, a.pred_scale)
    except (ValueError, KeyError, TypeError) as e:
        log.error("%s: %s", a.predictions, e)
        return 2
    out = {
        "system": a.system,
        "label": a.label or a.system,
        "kind": a.kind,
        "variant": a.variant,
        "benchmark": a.benchmark,
        "task": a.task,
        **counts,
        "demo": a.demo,
        "margin": a.margin if a.task == "comparison" else None,
        "pred_scale": a.pred_scale,
        "metrics": res,
    }
    atomic_write_json(a.out, out)
    atomic_write_text(a.out.with_suffix(".points.csv"), points_csv(points))
    write_meta(a.out.with_suffix(".meta.json"), {k: str(v) for k, v in vars(a).items()})
    log.info("%s / %s: %s", a.system, a.benchmark, {k: v for k, v in res.items() if k != "eps_curve"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
