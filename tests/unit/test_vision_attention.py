"""Batched window attention in the vision tower equals transformers' per-window sdpa loop (outputs and gradients)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

from vqinsight.models.load import load_model_and_processor
from vqinsight.models.tiny import build_tiny
from vqinsight.models.vision_attention import batch_vision_attention, segment_attention


def _tower(attn: str = "sdpa", dtype: torch.dtype = torch.float32) -> Qwen2_5_VisionTransformerPretrainedModel:
    cfg = Qwen2_5_VLVisionConfig(
        depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32, fullatt_block_indexes=[1]
    )
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return Qwen2_5_VisionTransformerPretrainedModel._from_config(cfg).to(dtype)


def _pass(tower, x: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    tower.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    out = tower(x, grid_thw=grid).pooler_output
    out.square().sum().backward()
    return out.detach(), x.grad, [p.grad for p in tower.parameters()]


# (16, 32): every window has 4x4 merged patches (one sdpa call per block); (14, 22): windows of several sizes
@pytest.mark.parametrize("hw", [(16, 32), (14, 22)])
def test_batched_window_attention_equals_the_loop_exactly(hw: tuple[int, int]) -> None:
    loop = _tower()
    batched = copy.deepcopy(loop)
    assert batch_vision_attention(batched) == 2
    grid = torch.tensor([[4, *hw], [2, *hw]])  # two videos of different lengths
    x = torch.randn(int(grid.prod(-1).sum()), 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(1))
    out0, gx0, gp0 = _pass(loop, x, grid)
    out1, gx1, gp1 = _pass(batched, x, grid)
    assert torch.equal(out0, out1)
    assert torch.equal(gx0, gx1)
    assert all(torch.equal(a, b) for a, b in zip(gp0, gp1, strict=True))


def test_segment_attention_never_crosses_a_segment() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 10, 4, generator=gen) for _ in range(3))
    cu = torch.tensor([0, 3, 7, 7, 10])  # lengths 3, 4, 0, 3: two groups and an empty segment
    out = segment_attention(q, k, v, cu, scale=0.5)
    for s, e in ((0, 3), (3, 7), (7, 10)):
        ref = torch.nn.functional.scaled_dot_product_attention(q[:, s:e], k[:, s:e], v[:, s:e], scale=0.5)
        torch.testing.assert_close(out[s:e], ref.transpose(0, 1))
    v2 = v.clone()
    v2[:, 3:7] += 100.0  # changing the middle segment leaves the others alone
    out2 = segment_attention(q, k, v2, cu, scale=0.5)
    assert torch.equal(out2[:3], out[:3]) and torch.equal(out2[7:], out[7:])
    assert not torch.allclose(out2[3:7], out[3:7])


def test_bad_cu_seqlens_is_a_clear_error() -> None:
    q = torch.zeros(2, 10, 4)
    with pytest.raises(ValueError, match="cu_seqlens must rise from 0 to the sequence length 10"):
        segment_attention(q, q, q, torch.tensor([0, 6, 4, 10]), scale=1.0)
    with pytest.raises(ValueError, match="sequence length 10"):
        segment_attention(q, q, q, torch.tensor([0, 4, 8]), scale=1.0)


def test_eager_towers_are_left_alone_and_install_is_idempotent() -> None:
    assert batch_vision_attention(_tower("eager")) == 0
    tower = _tower()
    assert batch_vision_attention(tower) == 2
    assert batch_vision_attention(tower) == 2  # same forward again, nothing stacked
    x = torch.randn(4 * 16 * 32, 3 * 2 * 14 * 14)
    assert tower(x, grid_thw=torch.tensor([[4, 16, 32]])).pooler_output.shape == (4 * 16 * 32 // 4, 32)


def test_the_loader_installs_it_unless_asked_not_to(tmp_path) -> None:
    path = build_tiny(tmp_path / "tiny")
    model, _ = load_model_and_processor(str(path), dtype="float32")
    blocks = [m for m in model.modules() if type(m).__name__ == "Qwen2_5_VLVisionAttention"]
    assert blocks and all("forward" in vars(m) for m in blocks)
    plain, _ = load_model_and_processor(str(path), dtype="float32", batched_vision_attention=False)
    assert all("forward" not in vars(m) for m in plain.modules() if type(m).__name__ == "Qwen2_5_VLVisionAttention")


def test_bench_vision_cpu_smoke(tmp_path) -> None:
    import json

    from vqinsight.bench.vision import main

    out = tmp_path / "vision.json"
    assert (
        main(["--size", "tiny", "--nframes", "4", "--frame-hw", "112", "224", "--repeats", "1", "--out", str(out)])
        == 0
    )
    res = json.loads(out.read_text())["results"]
    assert res["forward/max_abs_diff_features"] == 0.0 and res["forward_backward/max_abs_diff_input_grad"] == 0.0
    assert res["forward/loop"]["median_s"] > 0 and res["forward_backward/speedup"] > 0


def test_unbatch_restores_transformers_forward() -> None:
    from vqinsight.models.tiny import build_model, build_tokenizer
    from vqinsight.models.vision_attention import batch_vision_attention, unbatch_vision_attention

    model = build_model(build_tokenizer(), seed=0)
    n = batch_vision_attention(model)
    assert n > 0
    patched = [m for m in model.modules() if "forward" in vars(m)]
    assert len(patched) == n
    assert unbatch_vision_attention(model) == n
    assert not [m for m in model.modules() if "forward" in vars(m)]
    assert unbatch_vision_attention(model) == 0
