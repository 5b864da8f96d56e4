"""`python -m vqinsight.bench judge` on the tiny model (CPU smoke run of the stage-3 judging benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

from vqinsight.bench import judge as bench_judge


def test_tiny_judge_bench_runs_every_engine_and_agrees(tmp_path: Path) -> None:
    out = tmp_path / "judge.json"
    args = ["--size", "tiny", "--prompts", "2", "--videos", "3", "--frames", "4", "--frame-size", "56"]
    args += ["--new-tokens", "8", "--min-tokens", "2", "--max-batch", "4", "--batch", "3", "--static-judgments", "6"]
    assert bench_judge.main([*args, "--naive", "1", "--variants", "8,4:copy", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert "error" not in doc and "phase_errors" not in doc, doc.get("phase_errors")
    assert doc["shape"]["judgments"] == 12
    st = doc["batch"]["stats"]
    assert st["prefix_prefills"] == 6 and st["prefix_hits"] == 6, "one prefill per (prompt, first video)"
    assert doc["batch_with_margin"]["margin_rows"]["from_cache"] == 12
    assert doc["batch_with_margin"]["same_tokens"] is True
    for var in ("8", "4:copy"):  # more slots than judgments' groups; the prefix copied: same tokens
        v = doc["batch_variants"][var]
        assert v["agreement_with_batch"]["identical"] == 12 and v["stats"]["share_kv"] is (var == "8")
    mixed = doc["mixed"]
    assert mixed["same_tokens"] and mixed["lengths_as_forced"]
    assert 2 <= mixed["limits"]["min"] <= mixed["limits"]["max"] <= 8
    for engine, rows in (("static", 6), ("generate", 3), ("naive", 1)):
        ag = doc["agreement"][engine]
        assert ag["rows"] == rows and ag["identical"] == rows, (engine, ag)  # float32 on the CPU: same tokens
        assert doc["ratios"][f"batch_over_{engine}"] > 0
