"""The paper's Tables 1–5 from our metrics files, with the paper's own numbers beside them but never mixed in.

Why two blocks: a demo run (tiny model, synthetic data) and a paper-scale run produce numbers of very different
meaning, and the paper's numbers were not rerun here. Every table therefore has a first block "measured (this
run)" built only from metrics files, and a second block "reported in the paper (not rerun)" copied from
``config/reported.yaml``. A row never takes a value from the other block, and "best" (bold) is decided among
measured rows only.

Units: metrics files hold fractions (accuracies in [0, 1], correlations in [-1, 1]). Markdown and LaTeX print them
as the paper does: pairwise accuracies and swap-flip rates in percent with two decimals (PCT_DECIMALS; the paper
prints 50.80), correlations with three decimals, Table 6's VBench scores with four. The CSV is tidy
(``table,block,system,label,column,value``) and keeps fractions at full precision, so it round-trips the metrics
files exactly. Paper numbers printed in percent are recognised per column (a value with magnitude above 1 cannot be
a fraction of these metrics) and divided by 100, so both blocks share one unit.

``reported.yaml`` is read defensively: a missing file, a missing table or a malformed row is logged and skipped,
and the table is rendered with our rows only. Bad metrics files, in contrast, raise: they are this pipeline's own
outputs, and a silently missing row would be mistaken for a result.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from vqinsight.provenance import atomic_write_text

log = logging.getLogger(__name__)

__all__ = [
    "ABLATION_TABLES",
    "ABLATION_TASKS",
    "as_float",
    "benchmark_name",
    "Column",
    "MetricsRecord",
    "Row",
    "Table",
    "build_tables",
    "format_value",
    "latex_escape",
    "load_metrics",
    "load_reported",
    "render_csv",
    "render_latex",
    "render_markdown",
    "write_tables",
]

MEASURED_BLOCK = "measured (this run)"
REPORTED_BLOCK = "reported in the paper (not rerun)"
DASH = "–"  # missing benchmark, undefined metric (e.g. constant prediction) or not reported
CSV_FIELDS = ("table", "block", "system", "label", "column", "value")
TABLE_NAMES = ("table1", "table2", "table3", "table4", "table5")

# Follows the paper's Tables 4 and 5 (as transcribed in config/reported.yaml); may be edited.
# Table 4 ablates the AIGC scoring model (cases a-c: warm-up, temporal reward TMR, length reward LCR, on LGVQ),
# Table 5 the comparison model (cases e-f: length reward, unified finetuning UF = "united", on GenAI-Bench and
# MonetBench). A variant may sit in both tables (no_length): each table takes only the metrics files of its own
# tasks (ABLATION_TASKS). An ablation file matching no table is left out (with a warning).
ABLATION_TABLES: dict[str, list[str]] = {
    "table4": ["no_warmup", "no_temporal", "no_length"],
    "table5": ["no_length", "no_united"],
}
ABLATION_TASKS: dict[str, tuple[str, ...]] = {
    "table4": ("multidim_score", "video_score", "image_score"),
    "table5": ("comparison", "vqa"),
}
# The paper's Table 4 columns (plcc, krcc, srcc) name no benchmark: they are LGVQ, averaged over its three
# dimensions (case (d) equals the mean of Table 2's dimensions), i.e. our "lgvq_mean_<metric>" columns.
_BARE_REPORTED_PREFIX = {"table4": "lgvq_mean"}
WIDE_TABLE_COLUMNS = 8  # LaTeX tables with more columns are scaled to the line width
PCT_DECIMALS = 2  # the paper prints pairwise accuracies with two decimals (e.g. 50.80)

BENCHMARK_NAMES = {
    "genaibench": "GenAI-Bench",
    "monetbench": "MonetBench",
    "lgvq": "LGVQ",
    "lsvq_test": "LSVQ (test)",
    "lsvq_1080p": "LSVQ (1080p)",
    "livevqc": "LIVE-VQC",
    "konvid": "KoNViD-1k",
    "koniq": "KonIQ-10k",
    "visionreward": "VisionReward",
}
TABLE1_BENCHMARKS = ("genaibench", "monetbench")
TABLE2_BENCHMARK = "lgvq"
TABLE3_BENCHMARKS = ("lsvq_test", "lsvq_1080p", "livevqc", "konvid")
DIMENSIONS = ("spatial", "temporal", "alignment")
SCORE_TASKS = ("video_score", "image_score")
KIND_ORDER = {"ours": 0, "baseline": 1, "ablation": 2}
# Metric suffixes of reported.yaml column keys ("<benchmark>_<metric>"); longest first so "plcc_raw" beats "plcc".
_METRIC_SUFFIXES = ("plcc_logistic", "plcc_raw", "mean_srcc", "mean_krcc", "mean_plcc", "accuracy", "swap_flip")
_METRIC_SUFFIXES += ("srcc", "krcc", "plcc", "tau", "diff", "acc")
_PCT_METRICS = {"tau", "diff", "accuracy", "acc", "swap_flip"}

Fmt = Literal["pct", "dec3", "dec4"]


def benchmark_name(key: str) -> str:
    """Display name of a benchmark key (the key itself when unknown)."""
    return BENCHMARK_NAMES.get(key, key)


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class MetricsRecord:
    """One metrics file: a system evaluated on a benchmark."""

    path: Path
    system: str
    label: str
    kind: str
    variant: str | None
    benchmark: str
    task: str
    n: int | None
    format_rate: float | None
    unparsed: int | None
    demo: bool
    metrics: dict[str, Any]
    n_judgments: int | None = None  # comparisons: two judgments (orders) per pair
    pred_scale: str = "mos"  # "raw": a baseline's own metric scale (CLIP), not the MOS scale

    def display_label(self, demo: bool = False) -> str:
        """The label, with " (demo)" appended when this is a demo result (unless the label already says so)."""
        if (demo or self.demo) and not re.search(r"\bdemo\b", self.label, flags=re.IGNORECASE):
            return f"{self.label} (demo)"
        return self.label


def as_float(x: Any) -> float | None:
    """A finite float, or None for null, NaN, infinity and anything that is not a number."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _int_or_none(x: Any) -> int | None:
    v = as_float(x)
    return None if v is None else int(v)


def load_metrics(paths: Iterable[str | Path]) -> list[MetricsRecord]:
    """Read metrics JSON files.

    Raises:
        ValueError: If a file is not a JSON object with string ``system``, ``benchmark``, ``task`` and an object
            ``metrics``.
        OSError: If a file cannot be read.
    """
    records = []
    for p in paths:
        path = Path(p)
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from e
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(obj).__name__}")
        for key in ("system", "benchmark", "task"):
            if not isinstance(obj.get(key), str) or not obj[key]:
                raise ValueError(f"{path}: missing or non-string {key!r}")
        if not isinstance(obj.get("metrics"), dict):
            raise ValueError(f"{path}: missing 'metrics' object")
        variant = obj.get("variant")
        records.append(
            MetricsRecord(
                path=path,
                system=obj["system"],
                label=str(obj.get("label") or obj["system"]),
                kind=str(obj.get("kind") or "ours"),
                variant=str(variant) if variant not in (None, "") else None,
                benchmark=obj["benchmark"],
                task=obj["task"],
                n=_int_or_none(obj.get("n")),
                format_rate=as_float(obj.get("format_rate")),
                unparsed=_int_or_none(obj.get("unparsed")),
                demo=bool(obj.get("demo", False)),
                metrics=obj["metrics"],
                n_judgments=_int_or_none(obj.get("n_judgments")),
                pred_scale=str(obj.get("pred_scale") or "mos"),
            )
        )
    log.info("read %d metrics file(s)", len(records))
    return records


def load_reported(path: str | Path | None) -> dict[str, Any]:
    """The ``tables`` mapping of reported.yaml; ``{}`` (with a warning) if the file or the mapping is missing/bad."""
    if path is None:
        log.warning("no reported.yaml given: tables show measured rows only")
        return {}
    path = Path(path)
    try:
        obj = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        log.warning("%s does not exist: tables show measured rows only", path)
        return {}
    except (OSError, yaml.YAMLError) as e:
        log.warning("cannot read %s (%s): tables show measured rows only", path, e)
        return {}
    tables = obj.get("tables") if isinstance(obj, dict) else None
    if not isinstance(tables, dict):
        log.warning("%s has no 'tables' mapping: tables show measured rows only", path)
        return {}
    return tables


# ---------------------------------------------------------------- table model


@dataclass(frozen=True)
class Column:
    """A table column: ``key`` is the CSV/reported.yaml name, ``group`` the header group (benchmark/dimension)."""

    key: str
    group: str
    name: str
    tex_name: str
    fmt: Fmt
    higher_is_better: bool = True
    header: str = ""  # Markdown header; default "<group> <name>"

    @property
    def md_header(self) -> str:
        return self.header or f"{self.group} {self.name}"


@dataclass
class Row:
    system: str
    label: str
    values: dict[str, float | None]


@dataclass
class Table:
    name: str
    title: str
    legend: str  # what each metric is
    columns: list[Column]
    measured: list[Row] = field(default_factory=list)
    reported: list[Row] = field(default_factory=list)
    n_line: str = ""
    notes: list[str] = field(default_factory=list)


def format_value(v: float | None, fmt: Fmt) -> str:
    """Paper formatting: ``pct`` = percent with PCT_DECIMALS decimals (0.6123 -> "61.23"), ``dec3`` = 3 decimals,
    ``dec4`` = 4 decimals (the paper's VBench scores, 0.8095)."""
    v = as_float(v)
    if v is None:
        return DASH
    s = f"{100.0 * v:.{PCT_DECIMALS}f}" if fmt == "pct" else f"{v:.{4 if fmt == 'dec4' else 3}f}"
    return s[1:] if re.fullmatch(r"-0\.0+", s) else s  # no "-0.0"


def _pct_col(key: str, group: str, name: str, tex_name: str, higher: bool = True) -> Column:
    return Column(key, group, name, tex_name, "pct", higher)


def _dec_col(key: str, group: str, name: str, tex_name: str | None = None) -> Column:
    return Column(key, group, name, tex_name or name, "dec3")


def _column_from_key(key: str) -> Column | None:
    """Column for a reported.yaml key ``<benchmark>_<metric>``; None if the metric suffix is unknown."""
    for suffix in _METRIC_SUFFIXES:
        if key.endswith("_" + suffix) and len(key) > len(suffix) + 1:
            bench = key[: -len(suffix) - 1]
            break
    else:
        return None
    names = {
        "tau": ("tau", r"$\tau$"),
        "diff": ("diff", "diff"),
        "srcc": ("SRCC", "SRCC"),
        "mean_srcc": ("mean SRCC", "mean SRCC"),
        "mean_krcc": ("mean KRCC", "mean KRCC"),
        "mean_plcc": ("mean PLCC", "mean PLCC"),
        "krcc": ("KRCC", "KRCC"),
        "plcc": ("PLCC", "PLCC"),
        "plcc_logistic": ("PLCC (4-par. logistic)", "PLCC (logistic)"),
        "plcc_raw": ("PLCC (raw)", "PLCC (raw)"),
        "accuracy": ("acc.", "acc."),
        "acc": ("acc.", "acc."),
        "swap_flip": ("swap flip ↓", r"swap flip $\downarrow$"),
    }
    name, tex = names[suffix]
    fmt: Fmt = "pct" if suffix in _PCT_METRICS else "dec3"
    return Column(key, benchmark_name(bench), name, tex, fmt, suffix != "swap_flip")


# ---------------------------------------------------------------- measured rows


def _comparison_values(bench: str, m: dict[str, Any], swap: bool = True) -> dict[str, float | None]:
    out = {f"{bench}_tau": as_float(m.get("tau")), f"{bench}_diff": as_float(m.get("diff"))}
    if swap:
        out[f"{bench}_swap_flip"] = as_float(m.get("swap_flip_rate"))
    return out


def _dim_metric(m: dict[str, Any], dim: str, metric: str) -> float | None:
    d = m.get(dim)
    return as_float(d.get(metric)) if isinstance(d, dict) else None


def _dim_mean(m: dict[str, Any], metric: str) -> float | None:
    """Mean of a metric over the three dimensions; None if a dimension was not predicted at all (a partial mean is
    not comparable). A predicted dimension whose correlation is undefined because the prediction is constant counts
    as 0: it carries no ranking information."""
    vals = []
    for d in DIMENSIONS:
        v = _dim_metric(m, d, metric)
        if v is None and not isinstance(m.get(d), dict):
            return None
        vals.append(0.0 if v is None else v)
    return sum(vals) / len(vals)


def _measured_rows(
    records: Sequence[MetricsRecord],
    values_of: Callable[[MetricsRecord], dict[str, float | None]],
    demo: bool,
    key_of: Callable[[MetricsRecord], str] = lambda r: r.system,
) -> list[Row]:
    """One row per key (default: system), ours first, then baselines, in input order; later duplicates win."""
    rows: dict[str, Row] = {}
    seen: set[tuple[str, str]] = set()
    for r in sorted(records, key=lambda r: KIND_ORDER.get(r.kind, 9)):  # sorted() is stable: input order kept
        key = key_of(r)
        if (key, r.benchmark) in seen:
            log.warning("%s: second metrics file for %s on %s; it replaces the first", r.path, key, r.benchmark)
        seen.add((key, r.benchmark))
        row = rows.setdefault(key, Row(key, r.display_label(demo), {}))
        row.values.update(values_of(r))
    return list(rows.values())


def _n_line(records: Sequence[MetricsRecord], unit: Callable[[MetricsRecord], str]) -> str:
    """``n per benchmark (measured): GenAI-Bench 160 pairs, ...`` (a range when systems differ)."""
    by_bench: dict[str, list[MetricsRecord]] = {}
    for r in records:
        by_bench.setdefault(r.benchmark, []).append(r)
    parts = []
    for bench, recs in by_bench.items():
        ns = sorted({r.n for r in recs if r.n is not None})
        n = DASH if not ns else str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
        parts.append(f"{benchmark_name(bench)} {n} {unit(recs[0])}")
    return "n per benchmark (measured): " + ", ".join(parts) if parts else ""


def _unit(r: MetricsRecord) -> str:
    return {"comparison": "pairs", "image_score": "images", "vqa": "questions"}.get(r.task, "videos")


def _parse_notes(records: Sequence[MetricsRecord], demo: bool) -> list[str]:
    """One note per measured result with unparsable model outputs (how many, and the format rate)."""
    notes = []
    for r in records:
        if r.unparsed:
            rate = f", format rate {100 * r.format_rate:.1f}%" if r.format_rate is not None else ""
            total = r.n_judgments if r.n_judgments is not None else r.n
            of = f" of {total}" if total is not None else ""
            notes.append(
                f"{r.display_label(demo)} on {benchmark_name(r.benchmark)}: {r.unparsed}{of} outputs unparsed{rate}."
            )
    return notes


def _select(records: Sequence[MetricsRecord], benchmarks: Iterable[str], tasks: Iterable[str]) -> list[MetricsRecord]:
    """Non-ablation records on the given benchmarks and tasks (a benchmark scored with another task is skipped)."""
    benchmarks, tasks = set(benchmarks), set(tasks)
    out = []
    for r in records:
        if r.kind == "ablation" or r.benchmark not in benchmarks:
            continue
        if r.task not in tasks:
            log.warning("%s: task %r on %s does not fit this table; skipped", r.path, r.task, r.benchmark)
            continue
        out.append(r)
    return out


# ---------------------------------------------------------------- reported rows


def _reported_rows(
    reported: dict[str, Any],
    name: str,
    columns: list[Column],
    key_map: Callable[[str], str] = lambda k: k,
    allow_new_columns: bool = False,
) -> list[Row]:
    """Rows of ``reported[name]`` keyed to ``columns`` (extended in place with ``allow_new_columns``).

    Unknown columns are dropped with a warning; a column whose values exceed 1 in magnitude was printed in percent
    and is divided by 100.
    """
    spec = reported.get(name)
    if spec is None:
        if reported:
            log.warning("reported.yaml has no %s: %s shows measured rows only", name, name)
        return []
    rows_spec = spec.get("rows") if isinstance(spec, dict) else None
    if not isinstance(rows_spec, list):
        log.warning("reported.yaml %s has no 'rows' list; ignored", name)
        return []
    known = {c.key for c in columns}
    rows: list[Row] = []
    for i, item in enumerate(rows_spec):
        if not isinstance(item, dict) or not isinstance(item.get("values"), dict):
            log.warning("reported.yaml %s row %d is not {method, values}; skipped", name, i)
            continue
        method = str(item.get("method") or f"row {i}")
        variant = str(item.get("variant") or "")
        # an ablation row is named by its case and variant ("(b) w/o temporal modeling reward (TMR)")
        label = " ".join(str(x) for x in (item.get("case"), variant or method) if x)
        values: dict[str, float | None] = {}
        for raw_key, raw in item["values"].items():
            key = key_map(str(raw_key))
            if key not in known:
                col = _column_from_key(key) if allow_new_columns else None
                if col is None:
                    log.warning("reported.yaml %s: column %r is not part of this table; dropped", name, raw_key)
                    continue
                columns.append(col)
                known.add(key)
            if raw is not None and as_float(raw) is None and str(raw).strip() not in ("", "-", DASH):
                log.warning("reported.yaml %s %s: %s=%r is not a number; shown as %s", name, method, key, raw, DASH)
            values[key] = as_float(raw)
        rows.append(Row(method, label, values))
    for col in columns:
        vals = [r.values[col.key] for r in rows if r.values.get(col.key) is not None]
        if any(abs(v) > 1.0 for v in vals):
            log.info("reported.yaml %s: column %s is in percent; converted to fractions", name, col.key)
            for r in rows:
                if r.values.get(col.key) is not None:
                    r.values[col.key] /= 100.0
    return rows


# ---------------------------------------------------------------- the five tables

_PAIR_LEGEND = (
    "tau = tie-calibrated pairwise accuracy (acc23 of Deutsch et al. 2023: the model's verdict is a tie when "
    "|margin| ≤ ε, ε optimised per system and benchmark; accuracy over all pairs, human ties included); "
    "diff = accuracy on the pairs the humans did not tie"
)
_CORR_LEGEND = "SRCC = Spearman rank correlation, KRCC = Kendall tau-b, PLCC = Pearson linear correlation with the MOS"


def _table1(records: Sequence[MetricsRecord], reported: dict[str, Any], demo: bool) -> Table:
    columns = []
    for b in TABLE1_BENCHMARKS:
        columns += [
            _pct_col(f"{b}_tau", benchmark_name(b), "tau", r"$\tau$"),
            _pct_col(f"{b}_diff", benchmark_name(b), "diff", "diff"),
        ]
    columns += [
        Column(f"{b}_swap_flip", "swap-flip rate ↓", g, g, "pct", False, f"{g} swap flip ↓")
        for b in TABLE1_BENCHMARKS
        for g in [benchmark_name(b)]
    ]
    recs = _select(records, TABLE1_BENCHMARKS, ["comparison"])
    legend = (
        f"{_PAIR_LEGEND}; swap-flip rate = share of pairs whose verdict changes when the two videos are swapped "
        "(lower is better; measured here only, not in the paper). All values in %."
    )
    return Table(
        "table1",
        "Table 1: pairwise preference on AI-generated video",
        legend,
        columns,
        _measured_rows(recs, lambda r: _comparison_values(r.benchmark, r.metrics), demo),
        _reported_rows(reported, "table1", columns),
        _n_line(recs, _unit),
        _parse_notes(recs, demo),
    )


def _table2(records: Sequence[MetricsRecord], reported: dict[str, Any], demo: bool) -> Table:
    metrics = (("srcc", "SRCC"), ("krcc", "KRCC"), ("plcc", "PLCC"))
    columns = [_dec_col(f"{d}_{m}", d, name) for d in DIMENSIONS for m, name in metrics]
    recs = _select(records, [TABLE2_BENCHMARK], ["multidim_score"])

    def values(r: MetricsRecord) -> dict[str, float | None]:
        return {f"{d}_{m}": _dim_metric(r.metrics, d, m) for d in DIMENSIONS for m, _ in metrics}

    return Table(
        "table2",
        "Table 2: multi-dimensional quality scoring on LGVQ",
        f"{_CORR_LEGEND} (measured PLCC: raw, no fitting; the paper does not say whether it fitted), per dimension "
        "(spatial quality, temporal quality, text-video alignment).",
        columns,
        _measured_rows(recs, values, demo),
        _reported_rows(reported, "table2", columns),
        _n_line(recs, _unit),
        _parse_notes(recs, demo),
    )


def _table3(records: Sequence[MetricsRecord], reported: dict[str, Any], demo: bool) -> Table:
    columns = []
    for b in TABLE3_BENCHMARKS:
        g = benchmark_name(b)
        columns += [  # the paper's order (PLCC, SRCC), then the raw PLCC it does not print
            _dec_col(f"{b}_plcc_logistic", g, "PLCC (4-par. logistic)", "PLCC (logistic)"),
            _dec_col(f"{b}_srcc", g, "SRCC"),
            _dec_col(f"{b}_plcc_raw", g, "PLCC (raw)"),
        ]
    recs = _select(records, TABLE3_BENCHMARKS, SCORE_TASKS)

    def values(r: MetricsRecord) -> dict[str, float | None]:
        b, m = r.benchmark, r.metrics
        return {
            f"{b}_srcc": as_float(m.get("srcc")),
            f"{b}_plcc_logistic": as_float(m.get("plcc_logistic")),
            f"{b}_plcc_raw": as_float(m.get("plcc")),
        }

    spec = reported.get("table3")
    fit = str(spec.get("plcc_fit", "logistic4")).lower() if isinstance(spec, dict) else "logistic4"
    raw_fit = fit in ("none", "raw", "linear")
    target = "plcc_raw" if raw_fit else "plcc_logistic"

    def key_map(k: str) -> str:
        return f"{k[: -len('_plcc')]}_{target}" if k.endswith("_plcc") else k

    rows = _reported_rows(reported, "table3", columns, key_map)
    notes = _parse_notes(recs, demo)
    if rows:
        where = "PLCC (raw)" if raw_fit else "PLCC (4-par. logistic)"
        notes.append(
            f"The paper's PLCC is shown under {where} (reported.yaml table3 plcc_fit={fit!r}; "
            "assumed logistic-fitted when not given)."
        )
    return Table(
        "table3",
        "Table 3: quality scoring on natural (in-the-wild) video",
        f"{_CORR_LEGEND}; PLCC (4-par. logistic) after the VQEG 4-parameter logistic fit of the predictions to the "
        "MOS, PLCC (raw) without fitting.",
        columns,
        _measured_rows(recs, values, demo),
        rows,
        _n_line(recs, _unit),
        notes,
    )


def _ablation_columns(bench: str, task: str) -> list[Column]:
    g = benchmark_name(bench)
    if task == "comparison":
        return [_pct_col(f"{bench}_tau", g, "tau", r"$\tau$"), _pct_col(f"{bench}_diff", g, "diff", "diff")]
    if task == "multidim_score":  # the paper's Table 4 order
        return [_dec_col(f"{bench}_mean_{m}", g, f"mean {m.upper()}") for m in ("plcc", "krcc", "srcc")]
    if task == "vqa":
        return [_pct_col(f"{bench}_accuracy", g, "acc.", "acc.")]
    return [_dec_col(f"{bench}_srcc", g, "SRCC"), _dec_col(f"{bench}_plcc", g, "PLCC")]


def _ablation_values(r: MetricsRecord) -> dict[str, float | None]:
    b, m = r.benchmark, r.metrics
    if r.task == "comparison":
        return _comparison_values(b, m, swap=False)
    if r.task == "multidim_score":
        return {f"{b}_mean_{k}": _dim_mean(m, k) for k in ("plcc", "krcc", "srcc")}
    if r.task == "vqa":
        return {f"{b}_accuracy": as_float(m.get("accuracy"))}
    return {f"{b}_srcc": as_float(m.get("srcc")), f"{b}_plcc": as_float(m.get("plcc_logistic"))}


_ABLATION_LEGENDS = {
    "table4": (
        "mean PLCC / KRCC / SRCC = Pearson (raw) / Kendall tau-b / Spearman correlation with the MOS, averaged "
        "over LGVQ's spatial, temporal and alignment dimensions (the paper's full-model row equals the mean of its "
        "Table 2; here a dimension with a constant prediction, whose correlation is undefined, counts as 0); "
        "on a single-score benchmark SRCC and PLCC (after the 4-parameter logistic fit)"
    ),
    "table5": f"{_PAIR_LEGEND}; in %",
}


def _in_ablation_table(r: MetricsRecord, name: str) -> bool:
    return r.kind == "ablation" and r.variant in ABLATION_TABLES.get(name, []) and r.task in ABLATION_TASKS[name]


def _ablation_table(name: str, title: str, records: Sequence[MetricsRecord], reported: dict, demo: bool) -> Table:
    """Rows: the full model ("ours", no variant) and each variant of ``ABLATION_TABLES[name]``, in that order;
    columns: the benchmarks the variants' metrics files cover, with each task's main metrics."""
    variants = ABLATION_TABLES.get(name, [])
    abl = [r for r in records if _in_ablation_table(r, name)]
    tasks: dict[str, str] = {}
    for r in abl:
        if tasks.setdefault(r.benchmark, r.task) != r.task:
            log.warning("%s: task %r on %s differs from %r; skipped", r.path, r.task, r.benchmark, tasks[r.benchmark])
    abl = [r for r in abl if tasks[r.benchmark] == r.task]
    full = [r for r in records if r.kind == "ours" and r.variant is None and tasks.get(r.benchmark) == r.task]
    columns = [c for b, t in tasks.items() for c in _ablation_columns(b, t)]
    rank = {v: i for i, v in enumerate(variants)}
    used = full + sorted(abl, key=lambda r: rank[r.variant or ""])
    measured = _measured_rows(used, _ablation_values, demo, key_of=lambda r: r.variant or "full")
    notes = _parse_notes(used, demo)
    if abl and not full:
        notes.append("No full-model metrics file on these benchmarks: the full-model row is missing.")
    prefix = _BARE_REPORTED_PREFIX.get(name)

    def key_map(k: str) -> str:
        return f"{prefix}_{k}" if prefix and k in ("srcc", "krcc", "plcc") else k

    return Table(
        name,
        title,
        f"{_ABLATION_LEGENDS[name]}. Variants: {', '.join(variants)} (the CSV's system column; 'full' = the full "
        "model).",
        columns,
        measured,
        _reported_rows(reported, name, columns, key_map, allow_new_columns=True),
        _n_line(used, _unit),
        notes,
    )


def build_tables(records: Sequence[MetricsRecord], reported: dict[str, Any], demo: bool = False) -> dict[str, Table]:
    """All five tables (``table1`` .. ``table5``) from metrics records and the reported.yaml ``tables`` mapping."""
    for r in records:
        if r.kind == "ablation" and not any(_in_ablation_table(r, name) for name in ABLATION_TABLES):
            log.warning(
                "%s: ablation %r on %s (%s) fits no table of ABLATION_TABLES/ABLATION_TASKS; left out",
                r.path,
                r.variant,
                r.benchmark,
                r.task,
            )
    tables = {
        "table1": _table1(records, reported, demo),
        "table2": _table2(records, reported, demo),
        "table3": _table3(records, reported, demo),
        "table4": _ablation_table(
            "table4", "Table 4: ablation study on AIGC multi-dimension scoring", records, reported, demo
        ),
        "table5": _ablation_table(
            "table5", "Table 5: ablation study on AIGC preference comparison", records, reported, demo
        ),
    }
    for t in tables.values():
        if not t.measured:
            t.notes.insert(0, "No measured results for this table in this run; only the paper's numbers are shown.")
        if not t.reported:
            t.notes.append("No paper-reported numbers available for this table (see config/reported.yaml).")
    return tables


# ---------------------------------------------------------------- rendering


def _best(table: Table) -> dict[str, str]:
    """Per column, the displayed string of the best measured value (only where at least two rows have one)."""
    best = {}
    for c in table.columns:
        vals = [v for r in table.measured if (v := as_float(r.values.get(c.key))) is not None]
        if len(vals) >= 2:
            best[c.key] = format_value(max(vals) if c.higher_is_better else min(vals), c.fmt)
    return best


def _cells(table: Table, row: Row, bold: Callable[[str], str], best: dict[str, str]) -> list[str]:
    out = []
    for c in table.columns:
        s = format_value(row.values.get(c.key), c.fmt)
        out.append(bold(s) if s != DASH and best.get(c.key) == s else s)
    return out


def _md_escape(s: str) -> str:
    return re.sub(r"([\\|*_`])", r"\\\1", s)


def render_markdown(table: Table) -> str:
    """The table as GitHub Markdown: title, metric legend, n line, one table with both blocks, notes."""
    lines = [f"# {table.title}", "", f"Metrics: {table.legend}", ""]
    if table.n_line:
        lines += [table.n_line + ".", ""]
    lines += [
        f'**Bold**: best measured value per column. "{DASH}": not measured, not reported or undefined '
        "(e.g. a constant prediction).",
        "",
    ]
    if table.columns:
        ncol = len(table.columns)
        lines.append("| Method | " + " | ".join(_md_escape(c.md_header) for c in table.columns) + " |")
        lines.append("|---|" + "---:|" * ncol)
        best = _best(table)
        blank = " |" * ncol
        lines.append(f"| *{MEASURED_BLOCK}*{'' if table.measured else ': none'} |{blank}")
        for r in table.measured:
            lines.append(
                f"| {_md_escape(r.label)} | " + " | ".join(_cells(table, r, lambda s: f"**{s}**", best)) + " |"
            )
        if table.reported:
            lines.append(f"| *{REPORTED_BLOCK}* |{blank}")
            for r in table.reported:
                lines.append(f"| {_md_escape(r.label)} | " + " | ".join(_cells(table, r, str, {})) + " |")
        lines.append("")
    else:
        lines += ["(no columns: neither measured nor reported results for this table)", ""]
    if table.notes:
        lines += ["Notes:", "", *[f"- {n}" for n in table.notes], ""]
    return "\n".join(lines)


_TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "–": "--",
    "—": "---",
    "↓": r"$\downarrow$",
    "↑": r"$\uparrow$",
    "ε": r"$\varepsilon$",
    "τ": r"$\tau$",
    "≤": r"$\le$",
}


def latex_escape(s: str) -> str:
    """Escape LaTeX special characters (and map the few non-ASCII symbols used here to LaTeX)."""
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in s)


def render_latex(table: Table) -> str:
    """The table as a booktabs ``table`` float: grouped header, the two blocks separated by a rule."""
    head = [
        f"% {table.title}. Generated by vqinsight.report; do not edit.",
        r"% Needs \usepackage{booktabs} (and graphicx for \resizebox on wide tables).",
        "",
    ]
    if not table.columns:
        return "\n".join([*head, "% no columns: neither measured nor reported results for this table", ""])
    cols = table.columns
    n = len(cols) + 1
    wide = len(cols) > WIDE_TABLE_COLUMNS
    groups: list[tuple[str, int]] = []
    for c in cols:
        if groups and groups[-1][0] == c.group:
            groups[-1] = (c.group, groups[-1][1] + 1)
        else:
            groups.append((c.group, 1))
    text = table.title.split(": ", 1)[-1]  # LaTeX numbers the table itself
    caption = (
        f"{latex_escape(text[:1].upper() + text[1:])}. Measured rows come from this run; reported rows are copied "
        "from the paper and were not rerun. Bold: best measured value per column."
    )
    lines = [
        *head,
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{caption}}}",
        rf"\label{{tab:{table.name}}}",
        *([r"\resizebox{\linewidth}{!}{%"] if wide else []),
        r"\begin{tabular}{l" + "r" * len(cols) + "}",
        r"\toprule",
    ]
    group_cells, rules, start = [""], [], 2
    for g, span in groups:
        group_cells.append(rf"\multicolumn{{{span}}}{{c}}{{{latex_escape(g)}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
        start += span
    lines += [" & ".join(group_cells) + r" \\", " ".join(rules)]
    # tex_name may hold math ($\tau$): escape only the plain text around it
    names = [c.tex_name if "$" in c.tex_name else latex_escape(c.tex_name) for c in cols]
    lines += ["Method & " + " & ".join(names) + r" \\", r"\midrule"]
    best = _best(table)
    tex_dash = latex_escape(DASH)

    def cells(r: Row, b: dict[str, str]) -> str:
        vals = _cells(table, r, lambda s: rf"\textbf{{{s}}}", b)
        return " & ".join(tex_dash if v == DASH else v for v in vals)

    lines.append(rf"\multicolumn{{{n}}}{{l}}{{\textit{{{MEASURED_BLOCK}{'' if table.measured else ': none'}}}}} \\")
    lines += [f"{latex_escape(r.label)} & {cells(r, best)} " + r"\\" for r in table.measured]
    if table.reported:
        lines += [r"\midrule", rf"\multicolumn{{{n}}}{{l}}{{\textit{{{REPORTED_BLOCK}}}}} \\"]
        lines += [f"{latex_escape(r.label)} & {cells(r, {})} " + r"\\" for r in table.reported]
    lines += [r"\bottomrule", r"\end{tabular}" + ("}" if wide else ""), r"\end{table}", ""]
    return "\n".join(lines)


def render_csv(table: Table) -> str:
    """Tidy long CSV ``table,block,system,label,column,value``; values are fractions, empty when missing."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for block, rows in (("measured", table.measured), ("reported", table.reported)):
        for r in rows:
            for c in table.columns:
                v = as_float(r.values.get(c.key))
                w.writerow([table.name, block, r.system, r.label, c.key, "" if v is None else repr(v)])
    return buf.getvalue()


def write_tables(
    metrics_paths: Iterable[str | Path],
    reported_path: str | Path | None,
    out_dir: str | Path,
    demo: bool = False,
) -> list[Path]:
    """Write ``table{1..5}.{md,tex,csv}`` into ``out_dir``; returns the written paths."""
    out_dir = Path(out_dir)
    tables = build_tables(load_metrics(metrics_paths), load_reported(reported_path), demo=demo)
    written = []
    for name in TABLE_NAMES:
        t = tables[name]
        for ext, render in (("md", render_markdown), ("tex", render_latex), ("csv", render_csv)):
            path = out_dir / f"{name}.{ext}"
            atomic_write_text(path, render(t))
            written.append(path)
        log.info("%s: %d measured row(s), %d reported row(s)", name, len(t.measured), len(t.reported))
    log.info("wrote %d table files to %s", len(written), out_dir)
    return written


# ---------------------------------------------------------------- Table 6 (the generator, stage 3)

# Generator evaluation files (rules/stage3.smk, `vqinsight.stage3.evaluate`): one JSON per generator with
# {"generator", "vbench": {"dimensions": {dim: score}, "final": {total_score, quality_score, semantic_score},
# "computed_by"}, "winrate": {"winrate", "ci95", "n", ...} | null, "n_videos"}.
TABLE6_ROWS = {  # row key -> label (plus ours_r<r>: an intermediate round); the CLI passes key=path pairs in order
    "t2v_turbo": "T2V-Turbo (G0)",
    "videodpo": "VideoDPO",
    "ours_no_uf": "Ours w/o UF",
    "ours": "Ours",
}
_T6_PAPER = (  # the paper's columns (config/reported.yaml table6), VBench scores in [0, 1] with four decimals
    ("overall_score", "VBench", "Overall Score", "Overall"),
    ("quality_score", "VBench", "Quality Score", "Quality"),
    ("semantic_score", "VBench", "Semantic Score", "Semantic"),
)
_T6_EXTRA = (  # measured here only: VBench dimensions and the judge's win rate
    ("dynamic_degree", "VBench", "D.D.", "D.D."),
    ("scene", "VBench", "Scene", "Scene"),
    ("spatial_relationship", "VBench", "S.R.", "S.R."),
    ("multiple_objects", "VBench", "M.O.", "M.O."),
    ("temporal_flickering", "VBench", "temp. flicker", "temp. flicker"),
    ("winrate_vs_g0", "judge", "win rate vs G0", r"win rate vs $G_0$"),
)


def _table6_values(obj: dict[str, Any]) -> dict[str, float | None]:
    vb = obj.get("vbench") or {}
    dims = vb.get("dimensions") or {}
    final = vb.get("final") or {}
    vals: dict[str, float | None] = {k: as_float(dims.get(k)) for k, *_ in _T6_PAPER + _T6_EXTRA}
    vals["overall_score"] = as_float(final.get("total_score"))
    vals["quality_score"] = as_float(final.get("quality_score"))
    vals["semantic_score"] = as_float(final.get("semantic_score"))
    wr = obj.get("winrate") or {}
    vals["winrate_vs_g0"] = as_float(wr.get("winrate"))
    return vals


def build_table6(evals: Sequence[tuple[str, str | Path]], reported: dict[str, Any], demo: bool = False) -> Table:
    """Table 6 from (row key, evaluation JSON) pairs; columns without any measured or reported value are dropped."""
    rows, computed_by, n_lines = [], set(), []
    for key, path in evals:
        try:
            obj = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: unreadable generator evaluation ({e})") from e
        label = TABLE6_ROWS.get(key) or (f"Ours after round {key[6:]}" if re.fullmatch(r"ours_r\d+", key) else key)
        label += " (demo)" if demo else ""
        vals = _table6_values(obj)
        rows.append(Row(key, label, vals))
        if (obj.get("vbench") or {}).get("computed_by"):
            computed_by.add(obj["vbench"]["computed_by"])
        wr = obj.get("winrate") or {}
        ci = wr.get("ci95")
        n_lines.append(
            f"{label}: generator {obj.get('generator')}, {obj.get('n_videos', '?')} held-out videos"
            + (f", win rate over {wr.get('n')} pairs (95% CI {ci[0]:.2f}-{ci[1]:.2f})" if ci else "")
        )
    columns = [Column(k, g, n, t, "dec3" if k == "winrate_vs_g0" else "dec4") for k, g, n, t in _T6_PAPER + _T6_EXTRA]
    reported_rows = _reported_rows(reported, "table6", columns)
    keep = [c for c in columns if any(r.values.get(c.key) is not None for r in rows + reported_rows)] or columns[:1]
    notes = [
        "VBench dimensions computed by " + "; ".join(sorted(computed_by)) + "." if computed_by else "",
        "win rate vs G0 = the final refined judge's preference for this generator's video over G0's video of the "
        "same held-out prompt and seed index, judged in both orders (0.5 = no preference; G0 itself has none).",
    ]
    if demo:
        notes.append(
            "Demo: tiny random generator and tiny judge on CPU; only the VBench dimensions that need no downloaded "
            "weights are computed, so the paper's columns are blank in the measured block."
        )
    return Table(
        "table6",
        "Table 6: the generator before and after united finetuning (VBench)",
        "VBench total (Overall), quality and semantic scores in [0, 1] (higher is better), as the paper prints them; "
        "measured only: D.D. = dynamic degree, S.R. = spatial relationship, M.O. = multiple objects and the judge's "
        "win rate in [0, 1]",
        keep,
        rows,
        reported_rows,
        "; ".join(n_lines),
        [n for n in notes if n],
    )


def write_table6(
    evals: Sequence[tuple[str, str | Path]], reported_path: str | Path | None, out_dir: str | Path, demo: bool = False
) -> list[Path]:
    """Write ``table6.{md,tex,csv}``."""
    t = build_table6(evals, load_reported(reported_path), demo=demo)
    if not t.reported:
        t.notes.append("No paper-reported numbers available for this table (see config/reported.yaml).")
    out_dir = Path(out_dir)
    written = []
    for ext, render in (("md", render_markdown), ("tex", render_latex), ("csv", render_csv)):
        path = out_dir / f"table6.{ext}"
        atomic_write_text(path, render(t))
        written.append(path)
    log.info("table6: %d measured row(s), %d reported row(s)", len(t.measured), len(t.reported))
    return written
