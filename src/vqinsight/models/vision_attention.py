"""Batched window attention for Qwen2.5-VL's vision tower (transformers 5.24, sdpa).

The vision tower attends within windows (28 of the 32 blocks) and within frames (the other 4). With flash
attention transformers hands these segments to one varlen kernel; with sdpa it splits q/k/v at ``cu_seqlens``
(one host sync per block) and calls sdpa once per segment. A 16-frame 448x448 video has 8 temporal patches x
16 windows = 128 windows per block, so the vision tower of one video is about 3,600 small sdpa calls forward
and as many again backward, which leaves the GPU idle when the tower trains (measured in
``python -m vqinsight.bench grpo_step --size 3b``).

``segment_attention`` groups the segments by length and runs one sdpa call per distinct length over a batch of
segments (one reshape when all segments have the same length, as for the paper's frame sizes). Each segment
still attends only to itself, so the result is the per-segment result; the CPU tests check it equals the loop's
output and gradients. ``batch_vision_attention(model)`` installs it on every vision attention module of a
Qwen2.5-VL model whose vision config uses sdpa; eager and flash attention are left as transformers has them.
"""

from __future__ import annotations

import logging
import types
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

#: the transformers classes whose forward this module replaces (pinned: tests check the math against them)
PATCHED_CLASSES = ("Qwen2_5_VLVisionAttention",)


def _groups(lengths: list[int]) -> dict[int, list[int]]:
    """Segment indices grouped by segment length (empty segments dropped), in first-seen order."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        if n > 0:
            groups.setdefault(n, []).append(i)
    return groups


def segment_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, scale: float
) -> torch.Tensor:
    """Bidirectional attention within each segment ``[cu[i], cu[i+1])`` of the sequence.

    Args:
        q, k, v: ``[heads, seq, head_dim]``.
        cu_seqlens: ``[segments + 1]`` cumulative boundaries, from 0 to ``seq`` (Qwen2.5-VL's ``cu_seqlens``).
        scale: the softmax scale.

    Returns:
        ``[seq, heads, head_dim]``, each position attending to the positions of its own segment only.
    """
    heads, seq, dim = q.shape
    bounds = cu_seqlens.tolist()  # one host sync per block (the sdpa loop of transformers has the same)
    lengths = [end - start for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
    if bounds[0] != 0 or bounds[-1] != seq or min(lengths, default=0) < 0:
        raise ValueError(f"cu_seqlens must rise from 0 to the sequence length {seq}, got {bounds[:4]}...{bounds[-2:]}")
    groups = _groups(lengths)
    if len(groups) == 1:
        (n,) = groups
        m = seq // n
        # [heads, m*n, dim] -> [m, heads, n, dim]: segments are contiguous and all of length n
        out = F.scaled_dot_product_attention(
            *(t.view(heads, m, n, dim).transpose(0, 1) for t in (q, k, v)), scale=scale
        )
        return out.permute(0, 2, 1, 3).reshape(seq, heads, dim)
    outs, order = [], []
    for n, members in groups.items():
        starts = torch.tensor([bounds[i] for i in members], device=q.device)
        idx = (starts[:, None] + torch.arange(n, device=q.device)).reshape(-1)
        m = len(members)
        o = F.scaled_dot_product_attention(
            *(t.index_select(1, idx).view(heads, m, n, dim).transpose(0, 1) for t in (q, k, v)), scale=scale
        )
        outs.append(o.permute(0, 2, 1, 3).reshape(m * n, heads, dim))
        order.append(idx)
    inverse = torch.argsort(torch.cat(order))
    return torch.cat(outs).index_select(0, inverse)


def _forward(
    self: Any,
    hidden_states: torch.Tensor,
    cu_seqlens: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_seqlen: int | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Qwen2_5_VLVisionAttention.forward (transformers 5.24) with the per-segment sdpa loop batched."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    seq = hidden_states.shape[0]
    q, k, v = self.qkv(hidden_states).reshape(seq, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    out = segment_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), cu_seqlens, self.scaling)
    return self.proj(out.reshape(seq, -1))


def batch_vision_attention(model: Any) -> int:
    """Install ``segment_attention`` on the sdpa vision attention modules of ``model``; returns how many.

    A model whose vision tower uses eager or flash attention is left unchanged (flash attention is already one
    varlen call; eager is kept as transformers computes it). Idempotent.
    """
    n = 0
    for module in model.modules():
        if type(module).__name__ not in PATCHED_CLASSES:
            continue
        impl = getattr(module.config, "_attn_implementation", None)
        if impl != "sdpa" or module.attention_dropout:
            continue
        module.forward = types.MethodType(_forward, module)
        n += 1
    if n:
        log.info("vision tower: batched window attention on %d sdpa blocks", n)
    return n


def unbatch_vision_attention(model: Any) -> int:
    """Undo ``batch_vision_attention``: transformers' own forward again (benchmarks time both); returns how many."""
    n = 0
    for module in model.modules():
        if type(module).__name__ in PATCHED_CLASSES and "forward" in vars(module):
            del module.forward
            n += 1
    return n
