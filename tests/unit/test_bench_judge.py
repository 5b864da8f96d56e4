"""`python -m vqinsight.bench judge` on the tiny model (CPU smoke run of the issue-7 target-2 benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vqinsight.bench import judge as bench_judge


@pytest.mark.parametrize("from_cache", [True, False])
def test_tiny_judge_bench_times_both_margin_paths(tmp_path: Path, from_cache: bool) -> None:
    out = tmp_path / "judge.json"
    flag = "--margin-from-cache" if from_cache else "--no-margin-from-cache"
    args = ["--size", "tiny", "--videos", "3", "--frames", "4", "--frame-size", "56", "--new-tokens", "6"]
    assert bench_judge.main([*args, "--batch", "6", "--naive", "1", flag, "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    st = doc["static"]
    assert doc["shape"]["judgments"] == 6 and st["margin_from_cache"] is from_cache
    assert sum(st["margin_rows"].values()) == (6 if from_cache else 0)
    if from_cache:  # the same run also times the second-prefill path over the same completions
        assert st["margin_prefill_s"] > 0 and st["margin_prefill_max_abs_p_a_difference"] < 1e-4
    else:
        assert "margin_prefill_s" not in st
    assert doc["speedup"] > 0 and doc["speedup_with_margin"] > 0
