"""Bench: the Qwen2.5-VL vision tower, transformers' per-window sdpa loop against batched window attention.

``python -m vqinsight.bench vision --out results/bench/vision.json`` builds the vision tower of the 7B (or 3B)
architecture with random weights in bf16 and times, for ``--videos`` 16-frame videos at the paper's 100,352 px per
frame, the forward (frozen tower: the judge, LoRA training) and forward + backward (a trained tower: full
finetuning), each with transformers' loop (the baseline, same run) and with ``vqinsight.models.vision_attention``.
It also reports the largest difference between the two outputs and input gradients.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import logging
from pathlib import Path
from typing import Any

from vqinsight.bench.common import GIB, peak_gib, reset_peak, timed, write_result
from vqinsight.provenance import device_info, package_versions

log = logging.getLogger("vqinsight.bench.vision")
PATCH = 14


def _tower(size: str, device: Any, dtype: Any, seed: int) -> Any:
    import torch
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    from vqinsight.bench.archs import build_7b_config

    cfg = build_7b_config(None, "3b" if size == "tiny" else size).vision_config
    if size == "tiny":  # CPU smoke: 2 blocks, small width
        cfg.depth, cfg.hidden_size, cfg.intermediate_size, cfg.num_heads = 2, 64, 128, 2
        cfg.out_hidden_size, cfg.fullatt_block_indexes = 64, [1]
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device(device):
        return Qwen2_5_VisionTransformerPretrainedModel._from_config(cfg).to(dtype)


def _run(tower: Any, pixels: Any, grid: Any, backward: bool) -> tuple[Any, Any]:
    """(merged features, input gradient or None) of one pass."""
    x = pixels.detach().requires_grad_(backward)
    out = tower(x, grid_thw=grid)
    feats = out if hasattr(out, "float") else out.pooler_output
    if not backward:
        return feats.detach(), None
    feats.float().square().mean().backward()
    return feats.detach(), x.grad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vqinsight.bench vision", description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("results/bench/vision.json"))
    ap.add_argument("--size", choices=("7b", "3b", "tiny"), default="7b")
    ap.add_argument("--videos", type=int, default=2)
    ap.add_argument("--nframes", type=int, default=16)
    ap.add_argument("--frame-hw", type=int, nargs=2, default=[224, 448], help="frame height width (multiples of 28)")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per setting (the median is reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu", action="store_true")
    args = ap.parse_args(argv)

    import statistics

    import torch

    from vqinsight.models.vision_attention import batch_vision_attention

    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    h, w = args.frame_hw
    if h % 28 or w % 28 or args.nframes % 2:
        ap.error("frame height/width must be multiples of 28 and nframes even")
    grid = torch.tensor([[args.nframes // 2, h // PATCH, w // PATCH]] * args.videos, device=device)
    n = int(grid.prod(-1).sum())
    res: dict[str, Any] = {
        "name": "vision",
        "argv": list(argv or []),
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "machine": device_info(),
        "versions": {"torch": torch.__version__, **package_versions()},
        "settings": {
            "size": args.size,
            "videos": args.videos,
            "nframes": args.nframes,
            "frame_hw": [h, w],
            "patches": n,
            "dtype": str(dtype),
            "repeats": args.repeats,
        },
    }

    def body() -> None:
        loop = _tower(args.size, device, dtype, args.seed)
        batched = copy.deepcopy(loop)
        res["blocks_batched"] = batch_vision_attention(batched)
        res["params_vision"] = sum(p.numel() for p in loop.parameters())
        gen = torch.Generator(device="cpu").manual_seed(args.seed)
        pixels = torch.randn(n, 3 * 2 * PATCH * PATCH, generator=gen).to(device, dtype)
        results: dict[str, Any] = {}
        outs: dict[str, Any] = {}
        for mode in ("forward", "forward_backward"):
            backward = mode == "forward_backward"
            for name, tower in (("loop", loop), ("batched", batched)):
                tower.zero_grad(set_to_none=True)
                _run(tower, pixels, grid, backward)  # warm-up
                reset_peak(device)
                times = []
                for _ in range(args.repeats):
                    tower.zero_grad(set_to_none=True)
                    (feats, grad), s = timed(lambda t=tower, b=backward: _run(t, pixels, grid, b), device)
                    times.append(s)
                results[f"{mode}/{name}"] = {"median_s": statistics.median(times), "all_s": times}
                results[f"{mode}/{name}"]["peak_gib"] = peak_gib(device)
                outs[(mode, name)] = (feats.float(), None if grad is None else grad.float())
            base, ours = results[f"{mode}/loop"]["median_s"], results[f"{mode}/batched"]["median_s"]
            results[f"{mode}/speedup"] = base / ours
            (f0, g0), (f1, g1) = outs[(mode, "loop")], outs[(mode, "batched")]
            results[f"{mode}/max_abs_diff_features"] = (f0 - f1).abs().max().item()
            results[f"{mode}/features_abs_max"] = f0.abs().max().item()
            if g0 is not None:
                results[f"{mode}/max_abs_diff_input_grad"] = (g0 - g1).abs().max().item()
                results[f"{mode}/input_grad_abs_max"] = g0.abs().max().item()
            log.info(
                "%s: loop %.4f s, batched %.4f s (%.1fx), max |diff| %.3g",
                mode,
                base,
                ours,
                base / ours,
                results[f"{mode}/max_abs_diff_features"],
            )
        res["results"] = results
        if cuda:
            res["memory_allocated_gib"] = torch.cuda.memory_allocated() / GIB

    return write_result(args.out, res, body)
