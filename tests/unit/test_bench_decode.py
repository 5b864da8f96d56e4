"""CPU smoke run of ``python -m vqinsight.bench decode`` on the tiny model: every timed engine lands in the JSON."""

from __future__ import annotations

import json

import pytest

from vqinsight.bench.decode import main


@pytest.mark.slow
def test_bench_decode_cpu_smoke(tmp_path) -> None:
    out = tmp_path / "decode.json"
    argv = ["--size", "tiny", "--batches", "2", "--new-tokens", "6", "--check-tokens", "4", "--frames", "2"]
    argv += ["--frame-size", "56", "--variant-batches", "2", "--variants", "static_decoder", "fused"]
    argv += ["--group-prompts", "1", "--group-size", "2", "--out", str(out)]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert "error" not in res, res.get("error")
    (row,) = res["batches"]
    assert row["prefill_s"] > 0 and row["prefill_batched_vision_s"] > 0
    for name in ("static_decoder", "fused", "hf_generate"):
        assert row[name]["tok_per_s"] > 0, name
    assert row["fused"]["settings"] == {"fuse_weights": True, "compile": False}
    assert row["static_decoder"]["settings"] == {"compile": False}
    assert row["speedup_tok_per_s"] == row["static_decoder"]["speedup_tok_per_s"]
    assert row["hf_generate"]["repeat_same_lengths"]["tok_per_s"] > 0
    assert res["correctness"]["cuda_graph_equals_eager"] is True
    (tp,) = res["top_p_ms"]
    assert tp["sort_ms"] > 0 and tp["bisect_ms"] > 0 and tp["same_set_rows"]["bisect"] == 2
    (group,) = res["groups"]
    assert group["static_decoder_prefix_shared"]["tok_per_s"] > 0 and group["speedup_tok_per_s"] > 0
