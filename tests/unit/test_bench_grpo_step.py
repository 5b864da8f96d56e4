"""Tests of the GRPO-step benchmark (``python -m vqinsight.bench grpo_step``): a tiny CPU run and the 7B config."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from vqinsight.bench import __main__ as bench_cli
from vqinsight.bench import archs, grpo_step

TINY = [
    "--size",
    "tiny",
    "--nframes",
    "4",
    "--frame-pixels",
    "4704",
    "--generations",
    "2",
    "--shuffled",
    "1",
    "--max-new-tokens",
    "4",
    "--steps",
    "1",
    "--threads",
    "1",
    "--cpu",
]
PHASES = ("rollout", "shuffled_rollout", "logprob", "update", "total")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_bench(tmp_path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "grpo_step.json"
    status = bench_cli.main(["grpo_step", *TINY, "--out", str(out), *extra])
    return status, json.loads(out.read_text())


def test_tiny_step_on_cpu(tmp_path: Path) -> None:
    status, doc = run_bench(tmp_path)
    assert status == 0
    assert doc["status"] == "ok" and doc["oom"] is None and doc["error"] is None
    for key in ("settings", "model", "prompt", "timings_s", "rollout", "memory", "steps", "versions", "machine"):
        assert key in doc, key
    assert doc["versions"]["trl"] and doc["versions"]["torch"] and doc["timestamp"]
    assert doc["gpu"] is None and doc["memory"]["max_allocated_gib"] is None  # CPU: no CUDA calls
    t = doc["timings_s"]
    for phase in ("rollout", "shuffled_rollout", "update", "total", "update_forward", "generate_and_score"):
        assert isinstance(t[phase], float) and t[phase] > 0, phase
    # TRL 1.16 skips the old-log-prob forward when generation is aligned with the optimizer step (GA 1,
    # num_iterations 1, no vLLM), and beta == 0 means no reference forward: no no-grad log-prob pass at all.
    assert doc["settings"]["beta"] == 0.0 and t["logprob"] == 0.0
    assert t["total"] >= t["generate_and_score"] >= t["rollout"] + t["shuffled_rollout"]
    assert t["update"] == pytest.approx(t["total"] - t["generate_and_score"])
    ordered, shuffled = doc["rollout"]["ordered"], doc["rollout"]["shuffled"]
    assert ordered["sequences"] == 2 and shuffled["sequences"] == 1
    assert 0 < ordered["mean_completion_length"] <= 4 and ordered["tokens_per_s"] > 0
    assert doc["prompt"]["video_tokens"] == 2 * (4 // 2) * (56 // 14) * (84 // 14) // 4  # two 4-frame 56x84 videos
    assert doc["settings"]["frame_hw"] == [56, 84]
    assert doc["observed"]["activation_checkpointing_in_loss"] is True
    assert len(doc["steps"]) == 1 and doc["steps"][0]["complete"]


def test_tiny_step_with_reference_model(tmp_path: Path) -> None:
    """beta > 0: TRL builds a reference model (through the bench's factory) and runs a no-grad log-prob pass."""
    status, doc = run_bench(tmp_path, "--beta", "0.001")
    assert status == 0 and doc["status"] == "ok"
    assert doc["settings"]["reference_model"] is True
    assert doc["timings_s"]["logprob"] > 0


def test_oom_is_recorded_and_exits_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vqinsight.grpo.trainer import VideoGRPOTrainer

    def oom(*args: Any, **kwargs: Any) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB (simulated)")

    monkeypatch.setattr(VideoGRPOTrainer, "compute_loss", oom)
    status, doc = run_bench(tmp_path)
    assert status == 0
    assert doc["status"] == "oom" and "simulated" in doc["oom"]
    assert "update_forward" in doc["failed_phase"]
    assert doc["timings_s"]["rollout"] > 0 and doc["timings_s"]["total"] is None  # partial timings of the step


def test_7b_config_parameter_count() -> None:
    config = archs.build_7b_config()
    tc, vc = config.text_config, config.vision_config
    assert (tc.hidden_size, tc.num_hidden_layers, tc.num_attention_heads, tc.num_key_value_heads) == (3584, 28, 28, 4)
    assert (tc.intermediate_size, tc.vocab_size, tc.max_position_embeddings) == (18944, 152064, 128000)
    assert tc.rope_parameters["rope_theta"] == 1e6 and tc.rope_parameters["mrope_section"] == [16, 24, 24]
    assert tc.rms_norm_eps == 1e-6 and config.tie_word_embeddings is False
    assert (vc.depth, vc.hidden_size, vc.intermediate_size, vc.num_heads, vc.out_hidden_size) == (
        32,
        1280,
        3420,
        16,
        3584,
    )
    assert list(vc.fullatt_block_indexes) == [7, 15, 23, 31] and vc.window_size == 112
    counts = archs.count_params(config)
    assert 8.2e9 < counts["total"] < 8.4e9
    assert counts["total"] == counts["vision"] + counts["language"]
    # the bench's own 7B build path, on the meta device (no memory)
    from vqinsight.models.tiny import build_tokenizer

    tok = build_tokenizer()
    model = archs.build_model("7b", tok, torch.device("meta"), torch.bfloat16, seed=0)
    assert sum(p.numel() for p in model.parameters()) == counts["total"]
    assert model.config.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert model.config._attn_implementation == "sdpa"


def test_default_frame_geometry_and_prompt_tokens() -> None:
    assert grpo_step.frame_size(100352) == (224, 448)  # 128 * 28 * 28 pixels
    assert grpo_step.frame_size(4704) == (56, 84)
    for pixels in (784, 5000, 50000, 100352, 200704):
        h, w = grpo_step.frame_size(pixels)
        assert h % 28 == 0 and w % 28 == 0 and h * w <= pixels
    from vqinsight.models.tiny import build_processor, build_tokenizer

    tok = build_tokenizer()
    processor = build_processor(tok, video_min_pixels=100352, video_max_pixels=100352)
    stats = grpo_step.prompt_stats(
        processor, grpo_step.make_prompt("comparison", 16, 224, 448), archs.special_ids(tok)
    )
    assert stats["video_grid_thw"] == [[8, 16, 32], [8, 16, 32]]
    assert stats["video_tokens"] == 2 * 8 * 16 * 32 // 4 == 2048


def test_tiny_step_lora_static_engine_micro_batches(tmp_path: Path) -> None:
    """The issue-7 settings: LoRA, the static rollout engine, micro-batches of 1 without checkpointing; the JSON
    carries the update phase's model FLOPs and MFU."""
    status, doc = run_bench(
        tmp_path, "--lora", "4", "--rollout-engine", "static", "--micro-batch", "1", "--no-grad-ckpt",
        "--beta", "0.001",
    )  # fmt: skip
    assert status == 0 and doc["status"] == "ok", doc.get("traceback")
    s = doc["settings"]
    assert s["lora"]["r"] == 4 and s["rollout_engine"] == "static" and s["micro_batch"] == 1
    assert s["gradient_checkpointing"] is False and s["reference_model"] is False  # LoRA: adapters off = reference
    est = doc["update_estimate"]
    assert est["model_flops"] > 0 and est["mfu"]["measured"] > 0
    assert "recomputation not counted" in est["mfu_definition"]
    assert doc["rollout"]["ordered"]["sequences"] == 2
    # the static engine decodes the shuffled rollout in the ordered call: no time of its own, its tokens counted
    assert s["merge_shuffled_rollouts"] is True
    r, t = doc["rollout"], doc["timings_s"]
    assert t["shuffled_rollout"] == 0.0 and t["shuffled_tokenize"] > 0 and t["rollout"] > 0
    assert r["shuffled"]["sequences"] == 1 and r["shuffled"]["calls"] == 1 and r["shuffled"]["tokens"] > 0
    assert r["all"]["sequences"] == 3 and r["all"]["seconds"] == pytest.approx(t["rollout"])


def test_static_engine_without_merging_times_the_shuffled_call(tmp_path: Path) -> None:
    status, doc = run_bench(tmp_path, "--rollout-engine", "static", "--no-merge-shuffled", "--ckpt-layers", "1")
    assert status == 0 and doc["status"] == "ok", doc.get("traceback")
    r, t = doc["rollout"], doc["timings_s"]
    assert doc["settings"]["merge_shuffled_rollouts"] is False
    assert doc["settings"]["checkpoint_layers"] == 1 and doc["settings"]["gradient_checkpointing"] is True
    assert t["shuffled_rollout"] > 0 and r["shuffled"]["sequences"] == 1
    assert r["all"]["seconds"] == pytest.approx(t["rollout"] + t["shuffled_rollout"])


def test_3b_config_parameter_count() -> None:
    counts = archs.count_params(archs.build_7b_config(size="3b"))
    assert 3.7e9 < counts["total"] < 3.8e9  # Qwen2.5-VL-3B-Instruct: 3.75 B with tied embeddings
