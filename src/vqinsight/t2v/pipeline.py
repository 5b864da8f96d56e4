"""T2V-Turbo's few-step sampling loop on a generator directory (`vqinsight.t2v.model`), seeded per sample.

    from vqinsight.t2v.model import load_generator
    from vqinsight.t2v.pipeline import sample_videos

    gen = load_generator("results/demo/stage3/generators/g0")
    videos = sample_videos(gen, ["a dog on a boat", "a red car"], seeds=[1, 2])  # uint8 (2, F, H, W, 3)

The loop follows T2V-Turbo's `T2VTurboMSPipeline` (Ji4chenLi/t2v-turbo): CLIP text states of the prompt, no
classifier-free guidance, the guidance scale w enters as ``timestep_cond = w_embedding(w)`` (w * 1000, dim 256),
``unet(latents, t, timestep_cond=..., encoder_hidden_states=...)`` at the 4 (by default) T2V-Turbo timesteps,
each step returns the consistency-denoised latents and re-noises them to the next timestep, and the last step's
denoised latents are decoded frame by frame by the VAE.

Unlike T2V-Turbo (global RNG), every sample has its own ``torch.Generator("cpu").manual_seed(seed)`` which draws its
initial latents (4, F, H/8, W/8) and then each step's noise, in that order, so a video depends only on
(generator, prompt, seed, settings) and not on what else is in the batch (up to the last bits of batched float
kernels). Latents are kept in float32 between steps; the UNet runs in its own dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .model import Generator, decode_latents, encode_prompts
from .scheduler import T2VTurboScheduler, w_embedding

LATENT_CHANNELS = 4
VAE_FACTOR = 8


def sample_videos(
    gen: Generator,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int | None = None,
    guidance: float | None = None,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
) -> np.ndarray:
    """Sample one video per (prompt, seed): uint8 (B, F, H, W, 3). Unset settings come from ``gen.config``."""
    import torch

    cfg = gen.config
    prompts, seeds = list(prompts), [int(s) for s in seeds]
    if len(prompts) != len(seeds):
        raise ValueError(f"need one seed per prompt, got {len(prompts)} prompts and {len(seeds)} seeds")
    if not prompts:
        raise ValueError("no prompts to sample")
    steps = int(cfg.steps if steps is None else steps)
    guidance = float(cfg.guidance if guidance is None else guidance)
    f = int(cfg.num_frames if num_frames is None else num_frames)
    h = int(cfg.height if height is None else height)
    w = int(cfg.width if width is None else width)
    if h % VAE_FACTOR or w % VAE_FACTOR or f < 1:
        raise ValueError(f"need >= 1 frame and height/width multiples of {VAE_FACTOR}, got {f} x {h} x {w}")

    param = next(gen.unet.parameters())
    device, dtype = param.device, param.dtype
    channels = int(getattr(gen.unet.config, "in_channels", LATENT_CHANNELS))
    shape = (channels, f, h // VAE_FACTOR, w // VAE_FACTOR)
    sched = T2VTurboScheduler(lcm_origin_steps=cfg.lcm_origin_steps)
    timesteps = sched.set_timesteps(steps)
    rngs = [torch.Generator("cpu").manual_seed(s) for s in seeds]

    def draw() -> torch.Tensor:
        return torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in rngs]).to(device)

    b = len(prompts)
    was_training = gen.unet.training
    gen.unet.eval()  # the temporal convolutions have dropout
    try:
        with torch.inference_mode():
            latents = draw()
            text = encode_prompts(gen, prompts).to(device, dtype)
            w_emb = w_embedding(torch.full((b,), guidance), cfg.w_embedding_dim).to(device, dtype)
            denoised = latents
            for i, t in enumerate(timesteps):
                ts = torch.full((b,), t, dtype=torch.long, device=device)
                eps = gen.unet(latents.to(dtype), ts, timestep_cond=w_emb, encoder_hidden_states=text).sample
                last = i == len(timesteps) - 1
                next_t = None if last else timesteps[i + 1]
                latents, denoised = sched.step(eps.float(), t, latents, next_t, None if last else draw())
            return decode_latents(gen, denoised)
    finally:
        gen.unet.train(was_training)
