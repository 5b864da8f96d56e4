"""Report figures: prediction scatter per benchmark, training curves, tau-vs-epsilon and swap-flip bars.

Why these: a correlation alone hides how a judge fails (a tiny model often predicts a few integers, which a
scatter shows at once); the training curves show whether GRPO actually moved the rewards; the tau-vs-epsilon
curve shows how much of the tie-calibrated accuracy depends on the chosen tie threshold; the swap-flip rate shows
position bias of the pairwise judge.

Figures are built as ``matplotlib.figure.Figure`` objects on the Agg canvas, never through pyplot: no global
state, no GUI backend in a headless Snakemake job, no figure left open. Every figure is written as PNG (dpi 150)
and PDF through the atomic writers, and the PDF carries no creation date, so reruns give identical files.

Inputs are other jobs' outputs and can be partial: null metrics, NaN predictions (unparsed outputs), empty
training-log columns and single-point series are drawn as far as they go instead of failing the report.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, MultipleLocator, PercentFormatter

from vqinsight.provenance import atomic_write_bytes
from vqinsight.report.tables import (
    DIMENSIONS,
    SCORE_TASKS,
    MetricsRecord,
    as_float,
    benchmark_name,
    format_value,
    load_metrics,
)

log = logging.getLogger(__name__)

__all__ = [
    "curves_figure",
    "load_points",
    "parse_curves_spec",
    "read_curves",
    "scatter_figure",
    "swap_flip_figure",
    "tau_epsilon_figure",
    "write_figures",
]

DPI = 150
_DPI = [DPI]  # the resolution of the current write_figures call (config report.dpi)
PANEL_W, PANEL_H = 3.4, 2.9  # inches per subplot
SCATTER_PANEL = (3.3, 3.7)  # square axes plus a two-line title and the x label
MIN_FIG_W = 4.6  # inches: room for a suptitle above a single panel
MOS_RANGE = (1.0, 5.0)  # the pipeline maps every MOS to data.score_scale = [1, 5]
GT_LABEL = "ground-truth MOS (1–5)"
PRED_LABEL = "predicted score"
STEP_LABEL = "training step"


# ---------------------------------------------------------------- inputs


def points_path(metrics_path: Path) -> Path:
    """``x.json`` -> ``x.points.csv`` (``x.metrics.json`` -> ``x.metrics.points.csv``, else ``x.points.csv``)."""
    stem = metrics_path.name.removesuffix(".json")
    cand = metrics_path.with_name(stem + ".points.csv")
    if not cand.exists() and stem.endswith(".metrics"):
        alt = metrics_path.with_name(stem.removesuffix(".metrics") + ".points.csv")
        if alt.exists():
            return alt
    return cand


def _float(x: object) -> float:
    """A float; NaN for an empty cell, None or anything not a number."""
    v = as_float(x)
    return math.nan if v is None else v


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def load_points(metrics_path: str | Path) -> dict[str, np.ndarray] | None:
    """The points file beside a metrics file as columns (numbers as float arrays, NaN where empty); None if absent.

    ``sample_id`` and ``dimension`` stay string arrays.
    """
    path = points_path(Path(metrics_path))
    if not path.exists():
        log.warning("%s: no points file (%s); figure skipped for it", metrics_path, path.name)
        return None
    fields, rows = _read_csv(path)
    out: dict[str, np.ndarray] = {}
    for name in fields:
        if name in ("sample_id", "dimension"):
            out[name] = np.array([r.get(name) or "" for r in rows], dtype=str)
        else:
            out[name] = np.array([_float(r.get(name)) for r in rows], dtype=np.float64)
    return out


def read_curves(path: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``curves.csv`` as ``(step, {column: values})``; empty cells are NaN (the trainer logs columns sparsely)."""
    fields, rows = _read_csv(Path(path))
    if "step" not in fields:
        raise ValueError(f"{path}: no 'step' column")
    cols = {name: np.array([_float(r.get(name)) for r in rows], dtype=np.float64) for name in fields}
    return cols.pop("step"), cols


def parse_curves_spec(spec: str, taken: set[str] | None = None) -> tuple[str, Path]:
    """``label=path`` or ``path``; a bare path is labelled by its directory (``stage1/model/curves.csv`` -> stage1)."""
    label, sep, rest = spec.partition("=")
    if sep and label and "/" not in label and rest:
        path = Path(rest)
    else:
        path, label = Path(spec), ""
        parts = [p for p in path.parent.parts if p not in ("model", "models", ".", "")]
        label = parts[-1] if parts else path.stem
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "curves"
    if taken is not None:
        base, i = label, 2
        while label in taken:
            label, i = f"{base}_{i}", i + 1
        taken.add(label)
    return label, path


# ---------------------------------------------------------------- helpers


def _new_figure(
    nrows: int, ncols: int, sharex: bool = False, panel: tuple[float, float] = (PANEL_W, PANEL_H)
) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(max(panel[0] * ncols, MIN_FIG_W), panel[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, sharex=sharex, squeeze=False)
    return fig, list(axes.flat)


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    ncols = max(1, min(n, max_cols))
    return math.ceil(max(n, 1) / ncols), ncols


def _save(fig: Figure, out_dir: Path, stem: str, dpi: int | None = None) -> list[Path]:
    dpi = dpi or _DPI[0]
    paths = []
    for ext, meta in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "Producer": None})):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=dpi, metadata=meta)
        path = out_dir / f"{stem}.{ext}"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def _no_data(ax: Axes, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _f3(v: object) -> str:
    return format_value(as_float(v), "dec3")


def _record_label(r: MetricsRecord) -> str:
    return r.display_label() + (f" [{r.variant}]" if r.variant and r.variant not in r.label else "")


# ---------------------------------------------------------------- scatter


def _scatter_panel(
    ax: Axes, gt: np.ndarray, pred: np.ndarray, label: str, stats: str, raw_scale: bool = False
) -> None:
    ok = np.isfinite(gt) & np.isfinite(pred)
    n_bad = int((~ok).sum())
    ax.set_xlabel(GT_LABEL)
    ax.set_ylabel(PRED_LABEL)
    if raw_scale and ok.any():
        # a baseline's own metric (e.g. CLIP-IQA in [0, 1], CLIPScore in [0, 100]): its own y axis, no identity line
        ax.set_title(f"{label} (n = {int(ok.sum())})\n{stats}", fontsize=9)
        ax.scatter(gt[ok], pred[ok], s=14, alpha=0.35, edgecolors="none", zorder=2)
        ax.set_ylabel("predicted (metric's own scale)")
        ax.set_xlim(MOS_RANGE[0] - 0.2, MOS_RANGE[1] + 0.2)
        ax.xaxis.set_major_locator(MultipleLocator(1))
        return
    ax.set_title(f"{label} (n = {int(ok.sum())})\n{stats}", fontsize=9)
    if not ok.any():
        ax.set_xlim(*MOS_RANGE)
        ax.set_ylim(*MOS_RANGE)
        _no_data(ax, "no finite predictions")
        return
    x, y = gt[ok], pred[ok]
    # always show the whole 1-5 scale (panels comparable, a constant prediction still visible as a line)
    lo, hi = min(float(x.min()), float(y.min()), MOS_RANGE[0]), max(float(x.max()), float(y.max()), MOS_RANGE[1])
    pad = 0.04 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    ax.plot([lo, hi], [lo, hi], color="0.5", lw=1, ls="--", label="identity", zorder=1)
    # predictions of a small model are often a few integers: alpha shows overplotting, nothing is jittered
    ax.scatter(x, y, s=14, alpha=0.35, edgecolors="none", zorder=2)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    if hi - lo <= 12:  # the usual 1-5 scale: a tick per integer score
        ax.xaxis.set_major_locator(MultipleLocator(1))
        ax.yaxis.set_major_locator(MultipleLocator(1))
    if n_bad:
        ax.text(0.02, 0.98, f"{n_bad} unparsed not shown", transform=ax.transAxes, va="top", fontsize=7, color="0.3")


def scatter_figure(benchmark: str, entries: Sequence[tuple[MetricsRecord, dict[str, np.ndarray]]]) -> Figure:
    """Predicted vs ground-truth MOS: one panel per system (score tasks) or per system x dimension (multidim)."""
    multidim = any(r.task == "multidim_score" for r, _ in entries)
    if multidim:
        nrows, ncols = len(entries), len(DIMENSIONS)
    else:
        nrows, ncols = _grid(len(entries))
    fig, axes = _new_figure(nrows, ncols, panel=SCATTER_PANEL)
    for i, (r, pts) in enumerate(entries):
        label = _record_label(r)
        if multidim:
            dims = pts["dimension"] if "dimension" in pts else np.full(pts["gt"].shape, "")
            for j, dim in enumerate(DIMENSIONS):
                sel = dims == dim
                ax = axes[i * ncols + j]
                if not sel.any():  # a one-dimension baseline (CLIPScore: alignment, CLIP-IQA: spatial)
                    ax.set_axis_off()
                    ax.text(0.5, 0.5, f"{label}:\n{dim} not predicted", ha="center", va="center", fontsize=8)
                    continue
                m = r.metrics.get(dim) if isinstance(r.metrics.get(dim), dict) else {}
                stats = f"{dim}: SRCC {_f3(m.get('srcc'))}, PLCC (raw) {_f3(m.get('plcc'))}"
                _scatter_panel(ax, pts["gt"][sel], pts["pred"][sel], label, stats, r.pred_scale == "raw")
        else:
            m = r.metrics
            stats = f"SRCC {_f3(m.get('srcc'))}, PLCC (raw) {_f3(m.get('plcc'))}"
            _scatter_panel(axes[i], pts["gt"], pts["pred"], label, stats, r.pred_scale == "raw")
    used = len(entries) * (ncols if multidim else 1)
    for ax in axes[used:]:
        ax.remove()
    fig.suptitle(f"{benchmark_name(benchmark)}: predicted vs ground-truth MOS", fontsize=11)
    return fig


# ---------------------------------------------------------------- training curves


def _curve_panels(cols: dict[str, np.ndarray]) -> list[tuple[str, str, list[tuple[str, str | None]]]]:
    """(title, y label, [(column, legend)]) for every panel whose columns hold at least one finite value."""
    panels: list[tuple[str, str, list[tuple[str, str | None]]]] = [("total reward", "reward", [("reward", None)])]
    for name in cols:
        if m := re.fullmatch(r"rewards/(.+)/mean", name):
            panels.append((f"reward: {m.group(1)}", "mean reward", [(name, None)]))
    panels += [
        ("completion length", "mean length (tokens)", [("completions/mean_length", None)]),
        ("entropy", "entropy (nats)", [("entropy", None)]),
        ("KL to reference", "KL", [("kl", None)]),
        (
            "temporal check",
            "accuracy",
            [("temporal/acc_ordered", "ordered frames"), ("temporal/acc_shuffled", "shuffled frames")],
        ),
    ]
    out = []
    for title, ylabel, series in panels:
        kept = [(c, leg) for c, leg in series if c in cols and np.isfinite(cols[c]).any()]
        if kept:
            out.append((title, ylabel, kept))
    return out


def curves_figure(label: str, path: str | Path) -> Figure | None:
    """Training curves of one ``curves.csv`` as small panels sharing the step axis; None if nothing to plot."""
    step, cols = read_curves(path)
    panels = _curve_panels(cols)
    if not panels:
        log.warning("%s: no plottable training-curve columns; figure skipped", path)
        return None
    nrows, ncols = _grid(len(panels))
    fig, axes = _new_figure(nrows, ncols, sharex=True)
    for k, (ax, (title, ylabel, series)) in enumerate(zip(axes, panels, strict=False)):
        for col, legend in series:
            ok = np.isfinite(step) & np.isfinite(cols[col])
            x, y = step[ok], cols[col][ok]
            ax.plot(x, y, lw=1.2, marker="o" if x.size <= 2 else None, ms=4, label=legend)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(ylabel)
        if any(leg for _, leg in series):
            ax.legend(fontsize=7)
        bottom = k + ncols >= len(panels)  # nothing below it in its column
        if bottom:
            ax.set_xlabel(STEP_LABEL)
        ax.tick_params(labelbottom=bottom)
    for ax in axes[len(panels) :]:
        ax.remove()
    fig.suptitle(f"training curves: {label}")
    return fig


# ---------------------------------------------------------------- tau vs epsilon


def _eps_curve_from_points(pts: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """acc23 at every candidate epsilon (0 and each distinct |margin|), as in vqinsight.metrics."""
    if "margin" not in pts or "human" not in pts:
        return None
    ok = np.isfinite(pts["margin"]) & np.isin(pts["human"], (-1.0, 0.0, 1.0))
    m, h = pts["margin"][ok], pts["human"][ok]
    if m.size == 0:
        return None
    a = np.abs(m)
    order = np.argsort(a, kind="stable")
    a_sorted = a[order]
    cum_tie = np.concatenate(([0], np.cumsum((h == 0)[order])))
    cum_sign = np.concatenate(([0], np.cumsum(((h != 0) & (np.sign(m) == h))[order])))
    eps = np.unique(np.concatenate(([0.0], a_sorted)))
    k = np.searchsorted(a_sorted, eps, side="right")
    return eps, (cum_tie[k] + cum_sign[-1] - cum_sign[k]) / m.size


def _eps_curve(r: MetricsRecord) -> tuple[np.ndarray, np.ndarray] | None:
    curve = r.metrics.get("eps_curve")
    if isinstance(curve, dict):
        eps = np.array([_float(v) for v in curve.get("epsilon") or []], dtype=np.float64)
        acc = np.array([_float(v) for v in curve.get("accuracy") or []], dtype=np.float64)
        if eps.size and eps.size == acc.size:
            ok = np.isfinite(eps) & np.isfinite(acc)
            if ok.any():
                order = np.argsort(eps[ok], kind="stable")
                return eps[ok][order], acc[ok][order]
        log.warning("%s: eps_curve is empty or malformed; trying the points file", r.path)
    pts = load_points(r.path)
    return _eps_curve_from_points(pts) if pts is not None else None


def tau_epsilon_figure(records: Sequence[MetricsRecord]) -> Figure | None:
    """Accuracy vs tie threshold epsilon, one panel per comparison benchmark, the chosen epsilon marked."""
    by_bench: dict[str, list[tuple[MetricsRecord, tuple[np.ndarray, np.ndarray]]]] = {}
    for r in records:
        if r.task == "comparison" and (curve := _eps_curve(r)) is not None:
            by_bench.setdefault(r.benchmark, []).append((r, curve))
    if not by_bench:
        return None
    nrows, ncols = _grid(len(by_bench))
    # each panel gets a legend strip below it (inside the panel it would hide the curves it explains)
    leg_h = 0.15 + 0.15 * max(len(items) for items in by_bench.values())
    fig = Figure(figsize=(max(PANEL_W * 1.2 * ncols, MIN_FIG_W), nrows * (PANEL_H + leg_h)), layout="constrained")
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(2 * nrows, ncols, height_ratios=[PANEL_H, leg_h] * nrows)
    for i, (bench, items) in enumerate(by_bench.items()):
        row, col = divmod(i, ncols)
        ax, lax = fig.add_subplot(gs[2 * row, col]), fig.add_subplot(gs[2 * row + 1, col])
        for r, (eps, acc) in items:
            chosen, tau = as_float(r.metrics.get("tau_epsilon")), as_float(r.metrics.get("tau"))
            legend = _record_label(r)
            if chosen is not None:
                legend += f" (ε* = {chosen:.3g}, τ = {format_value(tau, 'pct')}%)"
            (line,) = ax.plot(eps, acc, drawstyle="steps-post", lw=1.3, label=legend)
            if eps.size == 1:
                line.set_marker("o")
            if chosen is not None:
                ax.axvline(chosen, color=line.get_color(), ls=":", lw=1)
                if tau is not None:
                    ax.plot([chosen], [tau], marker="o", ms=6, mfc="none", color=line.get_color())
        ax.set_title(benchmark_name(bench), fontsize=10)
        ax.set_xlabel("tie threshold ε (|margin| ≤ ε → tie)")
        ax.set_ylabel("tie-calibrated accuracy τ")
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        lax.axis("off")
        lax.legend(*ax.get_legend_handles_labels(), fontsize=7, loc="upper center", frameon=False)
    fig.suptitle("tie-calibrated accuracy vs tie threshold\n(○ and dotted line: chosen ε*)", fontsize=10)
    return fig


# ---------------------------------------------------------------- swap flip


def swap_flip_figure(records: Sequence[MetricsRecord]) -> Figure | None:
    """Swap-flip rate per system (bars) and comparison benchmark (groups); None if no record has one."""
    data: dict[str, dict[str, float]] = {}  # system label -> benchmark -> rate
    benches: list[str] = []
    for r in records:
        rate = as_float(r.metrics.get("swap_flip_rate")) if r.task == "comparison" else None
        if rate is None:
            continue
        data.setdefault(_record_label(r), {})[r.benchmark] = rate
        if r.benchmark not in benches:
            benches.append(r.benchmark)
    if not data:
        return None
    fig = Figure(figsize=(max(4.0, 1.6 + 1.4 * len(benches) * max(1, len(data)) ** 0.5), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / len(data)
    x = np.arange(len(benches))
    top = 0.0
    for i, (label, rates) in enumerate(data.items()):
        vals = np.array([rates.get(b, math.nan) for b in benches])
        bars = ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(vals), width, label=label)
        ax.bar_label(
            bars, labels=[f"{format_value(v, 'pct')}%" if np.isfinite(v) else "n/a" for v in vals], fontsize=7
        )
        top = max(top, float(np.nanmax(vals)) if np.isfinite(vals).any() else 0.0)
    ax.set_xticks(x, [benchmark_name(b) for b in benches])
    ymax = max(0.05, top * 1.15 + 0.02)  # headroom for the bar labels, also when a rate is 100 %
    ax.set_ylim(0, ymax)
    ax.set_yticks([t for t in np.linspace(0, 1, 6) if t <= ymax])
    ax.set_ylabel("swap-flip rate (lower is better)")
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    ax.set_title("verdict flips when the two videos are swapped", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


# ---------------------------------------------------------------- driver


def write_figures(
    metrics_paths: Iterable[str | Path],
    curves: Iterable[str],
    out_dir: str | Path,
    dpi: int = DPI,
) -> list[Path]:
    """Write every figure the inputs allow into ``out_dir``; returns the written paths.

    Args:
        metrics_paths: Metrics JSON files (points files are found beside them).
        curves: ``curves.csv`` files, each optionally as ``label=path``.
        out_dir: Output directory.
        dpi: PNG resolution.
    """
    _DPI[0] = dpi
    out_dir = Path(out_dir)
    records = load_metrics(metrics_paths)
    written: list[Path] = []

    by_bench: dict[str, list[tuple[MetricsRecord, dict[str, np.ndarray]]]] = {}
    for r in records:
        if r.task in (*SCORE_TASKS, "multidim_score") and (pts := load_points(r.path)) is not None:
            if not {"pred", "gt"} <= pts.keys():
                log.warning("%s: points file lacks pred/gt columns; skipped", r.path)
                continue
            by_bench.setdefault(r.benchmark, []).append((r, pts))
    for bench, entries in by_bench.items():
        written += _save(scatter_figure(bench, entries), out_dir, f"scatter_{bench}")

    taken: set[str] = set()
    for spec in curves:
        label, path = parse_curves_spec(spec, taken)
        fig = curves_figure(label, path)
        if fig is not None:
            written += _save(fig, out_dir, f"curves_{label}")

    if (fig := tau_epsilon_figure(records)) is not None:
        written += _save(fig, out_dir, "tau_epsilon")
    if (fig := swap_flip_figure(records)) is not None:
        written += _save(fig, out_dir, "swap_flip")
    else:
        log.info("no swap-flip rates in the metrics files; swap_flip figure skipped")
    for p in written:
        log.info("wrote %s", p)
    return written
