"""Tests for vqinsight.report: tables (md/tex/csv content), figures (real PNG/PDF files), index and the CLI."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from vqinsight.report.__main__ import main, write_index
from vqinsight.report.figures import parse_curves_spec, write_figures
from vqinsight.report.tables import (
    DASH,
    build_tables,
    format_value,
    latex_escape,
    load_metrics,
    load_reported,
    render_csv,
    render_latex,
    render_markdown,
    write_tables,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

REPORTED_YAML = """\
source: "test fixture"
units: "Table 1 in percent, others as 0.xxx"
tables:
  table1:
    columns: [genaibench_tau, genaibench_diff, monetbench_tau, monetbench_diff]
    rows:
      - method: "VideoScore"
        values: {genaibench_tau: 46.2, genaibench_diff: 70.5, monetbench_tau: 49.1, monetbench_diff: 54.9}
      - method: "VQ-Insight (Ours)"
        values: {genaibench_tau: 51.26, genaibench_diff: 76.57, monetbench_tau: 62.1, monetbench_diff: 75.61}
      - "not a row"
  table2:
    rows:
      - {method: "UGVQ", values: {spatial_srcc: 0.764, spatial_krcc: 0.571, spatial_plcc: 0.793, temporal_srcc: null}}
  table3:
    rows:
      - {method: "Q-Align", values: {lsvq_test_plcc: 0.882, lsvq_test_srcc: 0.883, konvid_plcc: 0.876, bogus_col: 1}}
  table4:
    rows:
      - {method: "VQ-Insight", case: "(a)", variant: "w/o warm-up", values: {plcc: 0.716, krcc: 0.518, srcc: 0.690}}
      - {method: "VQ-Insight", case: "(d)", variant: "full model", values: {plcc: 0.869, krcc: 0.679, srcc: 0.853}}
"""


# ---------------------------------------------------------------- fixtures


def _write_metrics(d: Path, stem: str, points: list[dict] | None = None, **fields) -> Path:
    rec = {
        "system": "vqinsight",
        "label": "VQ-Insight (ours)",
        "kind": "ours",
        "variant": None,
        "n": 40,
        "format_rate": 1.0,
        "unparsed": 0,
        "demo": False,
    }
    rec.update(fields)
    path = d / f"{stem}.json"
    path.write_text(json.dumps(rec))
    if points is not None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(points[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(points)
        (d / f"{stem}.points.csv").write_text(buf.getvalue())
    return path


def _score_points(rng: np.random.Generator, n: int = 40, integer: bool = True) -> list[dict]:
    gt = rng.uniform(1, 5, n)
    pred = np.clip(np.round(gt + rng.normal(0, 0.7, n)) if integer else gt + rng.normal(0, 0.5, n), 1, 5)
    return [
        {"sample_id": f"s{i}", "pred": float(p), "gt": float(g)} for i, (p, g) in enumerate(zip(pred, gt, strict=True))
    ]


def _multidim_points(rng: np.random.Generator, n: int = 30) -> list[dict]:
    out = []
    for dim in ("spatial", "temporal", "alignment"):
        for p in _score_points(rng, n):
            out.append({"sample_id": p["sample_id"], "dimension": dim, "pred": p["pred"], "gt": p["gt"]})
    return out


def _comparison_points(rng: np.random.Generator, n: int = 40) -> list[dict]:
    human = rng.choice([1, -1, 0], n)
    margin = np.clip(human * 0.3 + rng.normal(0, 0.4, n), -1, 1)
    flip = rng.integers(0, 2, n)
    return [
        {"sample_id": f"p{i}", "margin": float(m), "human": int(h), "flip": int(f)}
        for i, (m, h, f) in enumerate(zip(margin, human, flip, strict=True))
    ]


def _comparison(tau, diff, swap=0.12, curve=True) -> dict:
    return {
        "tau": tau,
        "tau_epsilon": 0.05,
        "diff": diff,
        "n_pairs": 40,
        "n_human_ties": 12,
        "swap_flip_rate": swap,
        "eps_curve": {"epsilon": [0.0, 0.05, 0.2, 0.6], "accuracy": [0.5, tau, 0.55, 0.3]} if curve else None,
    }


def _multidim(s, k, p) -> dict:
    return {
        dim: {"srcc": s + i / 100, "krcc": k + i / 100, "plcc": p + i / 100}
        for i, dim in enumerate(("spatial", "temporal", "alignment"))
    }


def make_fixture(d: Path) -> dict[str, list[Path] | Path]:
    """Synthetic metrics/points files for two systems and three ablations, a reported.yaml and a curves.csv."""
    rng = np.random.default_rng(0)
    d.mkdir(parents=True, exist_ok=True)
    baseline = {"system": "qwen_base", "label": "Qwen_VL zero-shot", "kind": "baseline"}
    m = [
        _write_metrics(
            d,
            "ours_monet",
            _comparison_points(rng),
            benchmark="monetbench",
            task="comparison",
            n=40,
            unparsed=3,
            format_rate=0.925,
            metrics=_comparison(0.6123, 0.70),
        ),
        _write_metrics(
            d,
            "ours_genai",
            _comparison_points(rng),
            benchmark="genaibench",
            task="comparison",
            metrics=_comparison(0.55, 0.66, swap=0.2),
        ),
        _write_metrics(
            d,
            "ours_lgvq",
            _multidim_points(rng),
            benchmark="lgvq",
            task="multidim_score",
            metrics=_multidim(0.7, 0.5, 0.72),
        ),
        _write_metrics(
            d,
            "ours_lsvq",
            _score_points(rng),
            benchmark="lsvq_test",
            task="video_score",
            metrics={"srcc": 0.81, "krcc": 0.62, "plcc": 0.79, "plcc_logistic": 0.83},
        ),
        _write_metrics(
            d,
            "ours_konvid",
            _score_points(rng, integer=False),
            benchmark="konvid",
            task="video_score",
            metrics={"srcc": 0.4, "krcc": 0.3, "plcc": 0.41, "plcc_logistic": None},
        ),
        _write_metrics(
            d,
            "base_monet",
            _comparison_points(rng),
            benchmark="monetbench",
            task="comparison",
            metrics=_comparison(0.50, 0.7123, swap=None, curve=False),
            **baseline,
        ),
        _write_metrics(
            d,
            "base_lsvq",
            [{"sample_id": "a", "pred": 3.0, "gt": 2.0}, {"sample_id": "b", "pred": 3.0, "gt": 4.0}],
            benchmark="lsvq_test",
            task="video_score",
            n=2,
            metrics={"srcc": None, "krcc": None, "plcc": None, "plcc_logistic": None},
            **baseline,
        ),
    ]
    abl = {"kind": "ablation", "label": "VQ-Insight w/o", "n": 30}
    m += [
        _write_metrics(
            d,
            "abl_warmup_lgvq",
            None,
            benchmark="lgvq",
            task="multidim_score",
            variant="no_warmup",
            metrics=_multidim(0.5, 0.4, 0.55),
            **{**abl, "label": "w/o warm-up"},
        ),
        _write_metrics(
            d,
            "abl_length_lgvq",
            None,
            benchmark="lgvq",
            task="multidim_score",
            variant="no_length",
            metrics=_multidim(0.6, 0.45, 0.6),
            **{**abl, "label": "w/o length reward"},
        ),
        _write_metrics(
            d,
            "abl_length_monet",
            None,
            benchmark="monetbench",
            task="comparison",
            variant="no_length",
            metrics=_comparison(0.58, 0.69),
            **{**abl, "label": "w/o length reward"},
        ),
        _write_metrics(
            d,
            "abl_united_monet",
            None,
            benchmark="monetbench",
            task="comparison",
            variant="no_united",
            metrics=_comparison(0.6, 0.68),
            **{**abl, "label": "w/o united"},
        ),
        _write_metrics(
            d,
            "abl_stray",
            None,
            benchmark="monetbench",
            task="comparison",
            variant="no_foo",
            metrics=_comparison(0.1, 0.1),
            **abl,
        ),
    ]
    reported = d / "reported.yaml"
    reported.write_text(REPORTED_YAML)
    steps = np.arange(10, 110, 10)
    curves = d / "run1" / "model" / "curves.csv"
    curves.parent.mkdir(parents=True)
    lines = [
        "step,reward,rewards/format/mean,rewards/score/mean,completions/mean_length,entropy,kl,empty_col,"
        "temporal/acc_ordered,temporal/acc_shuffled"
    ]
    for i, s in enumerate(steps):
        lines.append(
            f"{s},{0.5 + i / 40},{0.9},{0.1 + i / 50},{8 + i % 3},{0.3 - i / 50},{i / 100},,{0.5 + i / 30},{0.5}"
        )
    lines.append(f"{steps[-1]},,,,,,,,,")  # trainer's final summary row: all plotted columns empty
    curves.write_text("\n".join(lines) + "\n")
    return {"metrics": m, "reported": reported, "curves": curves}


@pytest.fixture
def fx(tmp_path):
    return make_fixture(tmp_path / "in")


def _tables(fx, demo=False):
    return build_tables(load_metrics(fx["metrics"]), load_reported(fx["reported"]), demo=demo)


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _md_row(md: str, label_start: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| {label_start}"))
    return [c.strip() for c in line.strip("|").split("|")]


# ---------------------------------------------------------------- tables


def test_format_value():
    assert format_value(0.6123, "pct") == "61.23"
    assert format_value(0.5, "dec3") == "0.500"
    assert format_value(-0.0001, "dec3") == "0.000"  # no "-0.000"
    for missing in (None, float("nan"), math.inf, "x"):
        assert format_value(missing, "pct") == DASH


def test_table1_blocks_percent_bold_and_dash(fx):
    md = render_markdown(_tables(fx)["table1"])
    assert md.index("*measured (this run)*") < md.index("*reported in the paper (not rerun)*")
    ours = _md_row(md, "VQ-Insight (ours)")
    base = _md_row(md, "Qwen\\_VL zero-shot")  # underscore escaped for Markdown
    # columns: genai tau, genai diff, monet tau, monet diff, genai swap, monet swap
    assert ours[1:] == ["55.00", "66.00", "**61.23**", "70.00", "20.00", "12.00"]
    assert base[1:] == [DASH, DASH, "50.00", "**71.23**", DASH, DASH]
    reported = _md_row(md, "VQ-Insight (Ours)")  # the paper's own row: in the reported block, never bold
    assert reported[1:] == ["51.26", "76.57", "62.10", "75.61", DASH, DASH]
    assert _md_row(md, "VideoScore")[1] == "46.20"
    assert "**51.26**" not in md and "**75.61**" not in md  # better than ours, but reported rows are never bold
    assert (
        "tau = tie-calibrated pairwise accuracy" in md and "diff = accuracy on the pairs the humans did not tie" in md
    )
    assert "n per benchmark (measured): MonetBench 40 pairs, GenAI-Bench 40 pairs" in md
    assert "3 of 40 outputs unparsed, format rate 92.5%" in md


def test_latex_booktabs_and_escaping(fx):
    assert latex_escape("a_b & 5% #1 {x}") == r"a\_b \& 5\% \#1 \{x\}"
    tex = render_latex(_tables(fx)["table1"])
    for cmd in (r"\toprule", r"\midrule", r"\bottomrule", r"\cmidrule(lr){2-3}", r"\begin{tabular}{lrrrrrr}"):
        assert cmd in tex
    assert r"Qwen\_VL zero-shot & -- & -- & 50.00 & \textbf{71.23} & -- & -- \\" in tex
    assert r"\textbf{61.23}" in tex
    assert r"\textit{reported in the paper (not rerun)}" in tex
    assert "_" not in tex.replace(r"\_", "").replace("tab:table1", "")  # every underscore in text is escaped
    assert "–" not in tex  # en dash written as LaTeX "--"


def test_csv_is_tidy_and_round_trips(fx):
    tables = _tables(fx)
    rows = _csv_rows(render_csv(tables["table1"]))
    assert list(rows[0]) == ["table", "block", "system", "label", "column", "value"]
    got = {(r["block"], r["system"], r["column"]): r["value"] for r in rows}
    assert float(got[("measured", "vqinsight", "monetbench_tau")]) == 0.6123  # exact: fractions at full precision
    assert float(got[("measured", "qwen_base", "monetbench_diff")]) == 0.7123
    assert got[("measured", "qwen_base", "genaibench_tau")] == ""  # missing benchmark
    assert got[("measured", "vqinsight", "monetbench_swap_flip")] == "0.12"
    assert float(got[("reported", "VideoScore", "genaibench_tau")]) == pytest.approx(0.462)  # percent -> fraction
    assert got[("reported", "VideoScore", "monetbench_swap_flip")] == ""
    assert {r["block"] for r in rows} == {"measured", "reported"}
    t2 = {(r["system"], r["column"]): r["value"] for r in _csv_rows(render_csv(tables["table2"]))}
    assert float(t2[("vqinsight", "temporal_krcc")]) == 0.51
    assert float(t2[("UGVQ", "spatial_plcc")]) == 0.793  # already a fraction: not rescaled
    assert t2[("UGVQ", "temporal_srcc")] == ""


def test_demo_suffix(fx, tmp_path):
    md = render_markdown(_tables(fx, demo=True)["table1"])
    assert "| VQ-Insight (ours) (demo) |" in md and "| Qwen\\_VL zero-shot (demo) |" in md
    assert "VideoScore (demo)" not in md  # reported rows are never demo
    # the metrics' own demo field, and a label that already says "demo" is not suffixed twice
    p = _write_metrics(
        tmp_path, "demo_rec", None, benchmark="monetbench", task="comparison", demo=True, metrics=_comparison(0.5, 0.5)
    )
    q = _write_metrics(
        tmp_path,
        "demo_rec2",
        None,
        benchmark="monetbench",
        task="comparison",
        demo=True,
        system="x",
        label="X (ours, demo)",
        metrics=_comparison(0.5, 0.5),
    )
    md = render_markdown(build_tables(load_metrics([p, q]), {})["table1"])
    assert "| VQ-Insight (ours) (demo) |" in md and "| X (ours, demo) |" in md


def test_table3_plcc_columns(fx):
    t3 = _tables(fx)["table3"]
    md = render_markdown(t3)
    assert "LSVQ (test) PLCC (4-par. logistic)" in md and "LSVQ (test) PLCC (raw)" in md
    ours = _md_row(md, "VQ-Insight (ours)")
    # LSVQ test: PLCC logistic, SRCC (the paper's order), PLCC raw; 1080p and LIVE-VQC missing; KoNViD logistic
    # fit undefined
    assert ours[1:4] == ["0.830", "0.810", "0.790"]  # the baseline's are undefined: nothing to beat, no bold
    assert ours[4:10] == [DASH] * 6
    assert ours[10:] == [DASH, "0.400", "0.410"]
    rep = {r["column"]: r["value"] for r in _csv_rows(render_csv(t3)) if r["block"] == "reported"}
    assert float(rep["lsvq_test_plcc_logistic"]) == 0.882 and rep["lsvq_test_plcc_raw"] == ""
    assert "bogus_col" not in rep
    raw = load_reported(fx["reported"])
    raw["table3"]["plcc_fit"] = "raw"
    t3raw = build_tables(load_metrics(fx["metrics"]), raw)["table3"]
    rep = {r["column"]: r["value"] for r in _csv_rows(render_csv(t3raw)) if r["block"] == "reported"}
    assert float(rep["lsvq_test_plcc_raw"]) == 0.882 and rep["lsvq_test_plcc_logistic"] == ""


def test_ablation_tables(fx, caplog):
    with caplog.at_level(logging.WARNING):
        tables = _tables(fx)
    assert "no_foo" in caplog.text  # an ablation fitting no table is named
    t4 = tables["table4"]
    assert [r.system for r in t4.measured] == ["full", "no_warmup", "no_length"]
    assert [c.key for c in t4.columns] == ["lgvq_mean_plcc", "lgvq_mean_krcc", "lgvq_mean_srcc"]
    assert t4.measured[0].values["lgvq_mean_srcc"] == pytest.approx(0.71)  # mean of 0.70, 0.71, 0.72
    assert t4.reported[0].label == "(a) w/o warm-up"
    assert t4.reported[1].values == pytest.approx(
        {"lgvq_mean_plcc": 0.869, "lgvq_mean_krcc": 0.679, "lgvq_mean_srcc": 0.853}
    )
    t5 = tables["table5"]
    assert [r.system for r in t5.measured] == ["full", "no_length", "no_united"]
    assert [c.key for c in t5.columns] == ["monetbench_tau", "monetbench_diff"]  # only the ablations' benchmarks
    md = render_markdown(t5)
    assert _md_row(md, "VQ-Insight (ours)")[1:] == ["**61.23**", "**70.00**"]
    assert "No paper-reported numbers" in md  # the fixture's reported.yaml has no table5


def test_missing_reported_file_and_no_measured_rows(fx, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        reported = load_reported(tmp_path / "nope.yaml")
    assert reported == {} and "does not exist" in caplog.text
    md = render_markdown(build_tables(load_metrics(fx["metrics"]), reported)["table1"])
    assert "measured (this run)" in md and "reported in the paper" not in md.split("Notes:")[0]
    # no measured rows at all: the reported rows still render, with a note
    md = render_markdown(build_tables([], load_reported(fx["reported"]))["table1"])
    assert "*measured (this run)*: none" in md and "| VideoScore | 46.20 |" in md
    assert "No measured results for this table" in md
    # neither: still a file, with no table body
    md = render_markdown(build_tables([], {})["table5"])
    assert "no columns" in md


def test_bad_metrics_file_raises(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"system": "x", "task": "comparison", "metrics": {}}))
    with pytest.raises(ValueError, match="benchmark"):
        load_metrics([p])


def test_write_tables_files(fx, tmp_path):
    written = write_tables(fx["metrics"], fx["reported"], tmp_path / "out")
    names = sorted(p.name for p in written)
    assert names == sorted(f"table{k}.{e}" for k in range(1, 6) for e in ("md", "tex", "csv"))
    assert all(p.stat().st_size > 0 for p in written)


# ---------------------------------------------------------------- figures


def _assert_figure_files(paths: list[Path]) -> None:
    for p in paths:
        head = p.read_bytes()[:8]
        assert head == PNG_MAGIC if p.suffix == ".png" else head.startswith(b"%PDF"), p
        assert p.stat().st_size > 1000, p


@pytest.mark.slow
def test_write_figures(fx, tmp_path):
    out = tmp_path / "fig"
    written = write_figures(fx["metrics"], [], out)  # training curves: see the CLI test (keeps this one < 5 s)
    stems = {p.stem for p in written}
    # ablation files without points are skipped for the scatter; no_foo still shows in tau_epsilon and swap_flip
    assert stems == {"scatter_lgvq", "scatter_lsvq_test", "scatter_konvid", "tau_epsilon", "swap_flip"}
    assert {p.suffix for p in written} == {".png", ".pdf"} and len(written) == 2 * len(stems)
    _assert_figure_files(written)


@pytest.mark.slow
def test_figures_survive_nan_and_single_points(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    nan_pts = [{"sample_id": "a", "pred": "", "gt": 3.0}, {"sample_id": "b", "pred": "nan", "gt": 4.0}]
    one_pair = [{"sample_id": "p", "margin": 0.2, "human": 1}]
    m = [
        _write_metrics(
            d,
            "nan_score",
            nan_pts,
            benchmark="konvid",
            task="video_score",
            metrics={"srcc": None, "krcc": None, "plcc": None, "plcc_logistic": None},
        ),
        _write_metrics(
            d,
            "one_pair",
            one_pair,
            benchmark="monetbench",
            task="comparison",
            metrics={
                "tau": None,
                "tau_epsilon": None,
                "diff": None,
                "swap_flip_rate": None,
                "eps_curve": {"epsilon": [0.0], "accuracy": [float("nan")]},
            },
        ),
        _write_metrics(d, "no_points", None, benchmark="lsvq_test", task="video_score", metrics={}),
    ]
    curves = d / "curves.csv"
    curves.write_text("step,reward,kl,entropy\n5,0.5,,\n")
    empty = d / "empty.csv"
    empty.write_text("step,reward\n1,\n")
    written = write_figures(m, [f"one={curves}", f"empty={empty}"], tmp_path / "fig")
    # the eps curve falls back to the points file; no swap-flip rate -> no bar chart; empty curves -> no figure
    assert {p.stem for p in written} == {"scatter_konvid", "curves_one", "tau_epsilon"}
    _assert_figure_files(written)


def test_parse_curves_spec():
    taken: set[str] = set()
    assert parse_curves_spec("results/demo/grpo/stage1/model/curves.csv", taken) == (
        "stage1",
        Path("results/demo/grpo/stage1/model/curves.csv"),
    )
    assert parse_curves_spec("a/stage1/model/curves.csv", taken)[0] == "stage1_2"
    assert parse_curves_spec("comp 2=x/curves.csv", taken) == ("comp_2", Path("x/curves.csv"))


# ---------------------------------------------------------------- CLI and index


@pytest.mark.slow
def test_cli_tables_figures_index(fx, tmp_path):
    tdir, fdir, index = tmp_path / "tables", tmp_path / "figs", tmp_path / "report" / "index.md"
    metrics = [str(p) for p in fx["metrics"]]
    assert (
        main(["tables", "--metrics", *metrics, "--reported", str(fx["reported"]), "--out-dir", str(tdir), "--demo"])
        == 0
    )
    assert "VQ-Insight (ours) (demo)" in (tdir / "table1.md").read_text()
    assert main(["figures", "--metrics", metrics[0], "--curves", f"s1={fx['curves']}", "--out-dir", str(fdir)]) == 0
    assert (fdir / "curves_s1.png").exists() and (fdir / "tau_epsilon.pdf").exists()
    assert main(["index", "--tables", str(tdir), "--figures", str(fdir), "--out", str(index)]) == 0
    text = index.read_text()
    assert "[md](../tables/table1.md)" in text and "[csv](../tables/table5.csv)" in text
    assert "[curves_s1](../figs/curves_s1.png) ([pdf](../figs/curves_s1.pdf))" in text
    assert "Table 1: pairwise preference" in text
    assert main(["tables", "--metrics", str(tmp_path / "missing.json"), "--out-dir", str(tdir)]) == 1


def test_write_index_empty_dirs(tmp_path):
    out = write_index(tmp_path / "t", tmp_path / "f", tmp_path / "index.md")
    assert "(no tables in" in out.read_text() and "(no figures in" in out.read_text()


def test_provenance_table_has_one_row_per_result(tmp_path):
    import csv as _csv

    from vqinsight.provenance import write_meta
    from vqinsight.report.__main__ import main as report_main

    for name in ("a", "b"):
        write_meta(tmp_path / name / "meta.json", {"k": name})
    out = tmp_path / "prov.csv"
    assert report_main(["provenance", "--meta", *(str(tmp_path / n / "meta.json") for n in "ab"), "--root",
                        str(tmp_path), "--out", str(out)]) == 0  # fmt: skip
    rows = list(_csv.DictReader(out.open()))
    assert [r["result"] for r in rows] == ["a/meta.json", "b/meta.json"]
    assert all(r["created"] and r["device"] and "command" in r for r in rows)
    (tmp_path / "bad.json").write_text("{")
    assert report_main(["provenance", "--meta", str(tmp_path / "bad.json"), "--out", str(out)]) == 1
