"""Stage 3 on one GPU: T2V-Turbo (MS) sampling and one Diffusion-DPO step, real architecture, random weights.

    python -m vqinsight.bench t2v --out $OUT/t2v.json                     # paper size: 256x256, 16 frames, 4 steps
    python -m vqinsight.bench t2v --size tiny --batches 1 2 --frames 4 --res 32 --out /tmp/t2v.json   # CPU smoke

Sampling runs the project's own loop (`vqinsight.t2v.pipeline.sample_videos`: text encoder, 4 UNet steps with the
guidance embedding, VAE decode of every frame, uint8 out) at each batch size and reports seconds per batch, seconds
per clip, clips/s and peak memory; the best batch size is the one with the most clips/s. The DPO step is the
objective of `vqinsight.dpo.loss` on (winner, loser) latents that share noise and timestep: policy forward +
backward on 2·P samples, reference forward without gradients, AdamW step. It is timed with a LoRA policy (peft,
rank --lora-rank on to_q/to_k/to_v/to_out.0, reference = adapters disabled: the demo and paper recipe) and with
full fine-tuning (reference = a frozen copy). Every phase is CUDA-synchronised; the first call of each setting is
warm-up. An out-of-memory error is recorded in the JSON for that setting and the run goes on.

UNet = the ModelScope text-to-video-ms-1.7b config + time_cond_proj_dim=256; VAE = the SD AutoencoderKL; text
encoder = the OpenCLIP ViT-H/14 text tower (1024 wide, 23 layers). The tokenizer is the project's byte-level CLIP
tokenizer (ids < 520, valid in the 49,408 vocabulary): prompts are only conditioning noise here.
"""

from __future__ import annotations

import argparse
import copy
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

from vqinsight.bench.archs import TEXT_VIT_H, UNET_MS, VAE_SD
from vqinsight.bench.common import is_oom, peak_gib, reset_peak, sync, write_result
from vqinsight.provenance import atomic_write_json, device_info, package_versions

log = logging.getLogger(__name__)


def build(size: str, frames: int, res: int, device: str, dtype):
    """The generator in memory (random weights) on the device."""
    import torch
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from vqinsight.models.tiny_clip import build_tokenizer
    from vqinsight.t2v.model import Generator, GeneratorConfig
    from vqinsight.t2v.tiny import build_tiny_generator

    if size == "tiny":
        gen = build_tiny_generator(num_frames=frames, height=res, width=res)
        gen.unet.to(device, dtype)
        gen.vae.to(device, dtype)
        gen.text_encoder.to(device, dtype)
        return gen
    tok = build_tokenizer()
    with torch.device(device):
        unet = UNet3DConditionModel(**UNET_MS).to(dtype)
        vae = AutoencoderKL(**VAE_SD).to(dtype)
        text = CLIPTextModel(
            CLIPTextConfig(
                **TEXT_VIT_H,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        ).to(dtype)
    for m in (vae, text):
        m.requires_grad_(False).eval()
    cfg = GeneratorConfig(kind="bench", num_frames=frames, height=res, width=res)
    return Generator(unet.eval(), vae, text, tok, cfg)


def bench_sampling(gen, batches: list[int], device: str) -> dict[str, Any]:
    from vqinsight.t2v.pipeline import sample_videos

    out: dict[str, Any] = {}
    for b in batches:
        prompts, seeds = [f"prompt {i}" for i in range(b)], list(range(b))
        try:
            sample_videos(gen, prompts, seeds)  # warm-up
            sync(device)
            reset_peak(device)
            t = time.perf_counter()
            v = sample_videos(gen, prompts, seeds)
            sync(device)
            el = time.perf_counter() - t
            out[f"b{b}"] = {
                "batch": b,
                "s_per_batch": el,
                "s_per_clip": el / b,
                "clips_per_s": b / el,
                "peak_GiB": peak_gib(device),
                "video_shape": list(v.shape),
            }
        except RuntimeError as e:
            if not is_oom(e):
                raise
            out[f"b{b}"] = {"batch": b, "oom": str(e)[:300]}
            reset_peak(device)
            break
        log.info("sampling batch %d: %s", b, out[f"b{b}"])
    ok = [v for v in out.values() if "clips_per_s" in v]
    if ok:
        best = max(ok, key=lambda v: v["clips_per_s"])
        out["best"] = {"batch": best["batch"], "clips_per_s": best["clips_per_s"], "s_per_clip": best["s_per_clip"]}
    return out


def bench_dpo(gen, mode: str, pairs: int, lora_rank: int, device: str, dtype, steps: int = 3) -> dict[str, Any]:
    """Time one DPO optimizer step (the last of `steps`; the first ones are warm-up)."""
    import torch

    from vqinsight.dpo.loss import diffusion_dpo_loss, implicit_accuracy, per_sample_mse
    from vqinsight.t2v.scheduler import T2VTurboScheduler, ddim_timesteps, w_embedding

    cfg = gen.config
    unet = gen.unet
    ref = None
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        unet.requires_grad_(False)
        policy = get_peft_model(
            unet,
            LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"]),
        )
    else:
        policy = unet.requires_grad_(True)
        ref = copy.deepcopy(unet).requires_grad_(False).eval()
    policy.train()
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6)
    sched = T2VTurboScheduler()
    grid = torch.tensor(ddim_timesteps(50))
    shape = (pairs, 4, cfg.num_frames, cfg.height // 8, cfg.width // 8)
    text = torch.randn(2 * pairs, 77, gen.text_encoder.config.hidden_size, device=device, dtype=dtype)
    w_emb = w_embedding(torch.full((2 * pairs,), cfg.guidance), cfg.w_embedding_dim).to(device, dtype)
    timings = {}
    for i in range(steps):
        sync(device)
        if i == steps - 1:
            reset_peak(device)
        t0 = time.perf_counter()
        x0 = torch.randn((2 * pairs, *shape[1:]), device=device, dtype=dtype)
        noise = torch.randn(shape, device=device, dtype=dtype).repeat(2, 1, 1, 1, 1)
        t = grid[torch.randint(0, len(grid), (pairs,))].repeat(2).to(device)
        xt = sched.add_noise(x0, noise, t)
        pred = policy(xt, t, encoder_hidden_states=text, timestep_cond=w_emb).sample
        sync(device)
        t1 = time.perf_counter()
        with torch.no_grad():
            if ref is None:
                with policy.disable_adapter():
                    rpred = policy(xt, t, encoder_hidden_states=text, timestep_cond=w_emb).sample
            else:
                rpred = ref(xt, t, encoder_hidden_states=text, timestep_cond=w_emb).sample
        sync(device)
        t2 = time.perf_counter()
        me, re_ = per_sample_mse(pred, noise), per_sample_mse(rpred, noise)
        loss = diffusion_dpo_loss(*me.chunk(2), *re_.chunk(2), beta=5000.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        t3 = time.perf_counter()
        timings = {
            "s_step": t3 - t0,
            "s_policy_forward": t1 - t0,
            "s_reference_forward": t2 - t1,
            "s_backward_and_update": t3 - t2,
            "loss": float(loss),
            "implicit_acc": float(implicit_accuracy(*me.detach().chunk(2), *re_.chunk(2))),
        }
    return {
        "mode": mode,
        "pairs_per_step": pairs,
        "lora_rank": lora_rank if mode == "lora" else None,
        "trainable_params_M": sum(p.numel() for p in params) / 1e6,
        **timings,
        "peak_GiB": peak_gib(device),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vqinsight.bench t2v", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("results/bench/t2v.json"))
    ap.add_argument("--size", choices=("paper", "tiny"), default="paper")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--dpo-pairs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--lora-rank", type=int, default=64, help="VideoDPO's T2V-Turbo recipe trains r=64 LoRA")
    ap.add_argument("--skip-full", action="store_true", help="skip the full fine-tuning DPO step")
    a = ap.parse_args(argv)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    res: dict[str, Any] = {
        "bench": "t2v",
        "argv": sys.argv,
        "size": a.size,
        "shape": {
            "frames": a.frames,
            "height": a.res,
            "width": a.res,
            "steps": 4,
            "latent": [4, a.frames, a.res // 8],
        },
        "dtype": str(dtype),
        "device": device_info(),
        "packages": package_versions(("torch", "diffusers", "transformers", "peft")),
        "python": platform.python_version(),
    }

    def body() -> None:
        gen = build(a.size, a.frames, a.res, device, dtype)
        res["params_M"] = {
            "unet": sum(p.numel() for p in gen.unet.parameters()) / 1e6,
            "vae": sum(p.numel() for p in gen.vae.parameters()) / 1e6,
            "text_encoder": sum(p.numel() for p in gen.text_encoder.parameters()) / 1e6,
        }
        res["sampling"] = bench_sampling(gen, a.batches, device)
        atomic_write_json(a.out, res)
        res["dpo"] = []
        for p in a.dpo_pairs:
            for mode in ("lora",) + (() if a.skip_full else ("full",)):
                del gen  # free the previous setting's model (and its optimizer state) first
                gen = build(a.size, a.frames, a.res, device, dtype)  # a fresh UNet per setting
                try:
                    r = bench_dpo(gen, mode, p, a.lora_rank, device, dtype)
                except RuntimeError as e:
                    if not is_oom(e):
                        raise
                    r = {"mode": mode, "pairs_per_step": p, "oom": str(e)[:300]}
                res["dpo"].append(r)
                log.info("dpo %s", r)
                atomic_write_json(a.out, res)
                if device == "cuda":
                    torch.cuda.empty_cache()

    return write_result(a.out, res, body)


if __name__ == "__main__":
    sys.exit(main())
