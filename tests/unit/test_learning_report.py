"""The learning summary (report learning): held-out metrics before/after each training, from eval.json."""

import csv
import json

import pytest

from vqinsight.report.__main__ import main
from vqinsight.report.learning import learning_rows


def _model(tmp_path, name, before, after):
    d = tmp_path / name
    d.mkdir()
    (d / "eval.json").write_text(json.dumps({"before": before, "after": after}))
    return d


def test_rows_carry_each_tasks_metrics_before_and_after(tmp_path):
    s1 = _model(
        tmp_path,
        "s1",
        {"image_score": {"n": 128, "format_rate": 1.0, "srcc": 0.0, "plcc": 0.0}, "examples": []},
        {"image_score": {"n": 128, "format_rate": 0.98, "srcc": 0.61, "plcc": 0.6}},
    )
    md = {d: {"srcc": 0.1 * i} for i, d in enumerate(("spatial", "temporal", "alignment"), 1)}
    lg = _model(tmp_path, "lg", {}, {"multidim_score": {"n": 54, "format_rate": 1.0, **md, "srcc": 0.2}})
    comp = _model(tmp_path, "c", {"comparison": {"n": 93, "accuracy": 0.559, "rate_A": 0.0}}, {})
    rows = learning_rows({"stage1": s1 / "eval.json", "lgvq": lg / "eval.json", "comp": comp / "eval.json"})
    by = {(r["model"], r["metric"]): r for r in rows}
    assert by["stage1", "SRCC"]["before"] == 0.0 and by["stage1", "SRCC"]["after"] == 0.61
    assert by["stage1", "SRCC"]["format_rate_after"] == 0.98 and by["stage1", "SRCC"]["n"] == 128
    assert by["lgvq", "spatial SRCC"]["after"] == pytest.approx(0.1) and by["lgvq", "spatial SRCC"]["before"] is None
    assert by["lgvq", "mean SRCC"]["after"] == 0.2
    assert by["comp", "rate of 'A'"]["before"] == 0.0 and by["comp", "rate of 'A'"]["after"] is None
    assert {r["model"] for r in rows} == {"stage1", "lgvq", "comp"}  # "examples" is not a task


def test_cli_writes_md_csv_json_and_rejects_a_missing_eval(tmp_path):
    s1 = _model(tmp_path, "s1", {"image_score": {"srcc": 0.0}}, {"image_score": {"srcc": 0.5}})
    out = tmp_path / "tables"
    assert main(["learning", "--models", f"stage 1={s1}", "--out-dir", str(out)]) == 0
    assert "| stage 1 | image_score |" in (out / "learning.md").read_text()
    rows = list(csv.DictReader(open(out / "learning.csv")))
    assert rows[0]["after"] == "0.5" and json.loads((out / "learning.json").read_text())[0]["before"] == 0.0
    assert main(["learning", "--models", f"x={tmp_path / 'absent'}", "--out-dir", str(out)]) == 1
    assert main(["learning", "--models", "no-label", "--out-dir", str(out)]) == 1
