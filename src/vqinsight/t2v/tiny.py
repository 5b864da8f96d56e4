"""A tiny T2V-Turbo-architecture generator built offline (random weights), the demo's stand-in for T2V-Turbo (MS).

    python -m vqinsight.t2v.tiny --out results/demo/models/tiny_t2v --seed 0

Same classes as the real model (diffusers UNet3DConditionModel with the guidance-embedding input
``time_cond_proj_dim``, AutoencoderKL, transformers CLIPTextModel and CLIPTokenizer), sized so that sampling a clip
takes well under a second on one CPU core. The tokenizer is the byte-level CLIP tokenizer of
`vqinsight.models.tiny_clip`. The VAE downsamples by 8, like the real one.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ..provenance import write_meta
from .model import Generator, GeneratorConfig, save_generator

log = logging.getLogger(__name__)


def build_tiny_generator(
    *,
    seed: int = 0,
    channels: tuple[int, ...] = (32, 32, 64, 64),
    text_hidden: int = 32,
    num_frames: int = 8,
    height: int = 64,
    width: int = 64,
    fps: float = 8.0,
    steps: int = 4,
) -> Generator:
    """The tiny generator in memory, deterministic per seed."""
    import torch
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..models.tiny_clip import build_tokenizer

    if height % 8 or width % 8:
        raise ValueError(f"height and width must be multiples of 8 (the VAE's factor), got {height}x{width}")
    cfg = GeneratorConfig(kind="tiny", num_frames=num_frames, height=height, width=width, fps=fps, steps=steps)
    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet3DConditionModel(
            sample_size=height // 8,
            block_out_channels=channels,
            layers_per_block=1,
            attention_head_dim=8,
            cross_attention_dim=text_hidden,
            norm_num_groups=8,
            time_cond_proj_dim=cfg.w_embedding_dim,
        )
        vae = AutoencoderKL(
            block_out_channels=(32, 32, 32, 32),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=8,
            sample_size=height,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=text_hidden,
                intermediate_size=2 * text_hidden,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=tokenizer.model_max_length,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    for m in (vae, text_encoder):
        m.requires_grad_(False).eval()
    return Generator(unet.eval(), vae, text_encoder, tokenizer, cfg)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, nargs=2, default=(64, 64), metavar=("H", "W"))
    ap.add_argument("--steps", type=int, default=4)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    gen = build_tiny_generator(seed=a.seed, num_frames=a.frames, height=a.size[0], width=a.size[1], steps=a.steps)
    save_generator(gen, a.out)
    write_meta(a.out / "build.meta.json", {k: str(v) for k, v in vars(a).items()})
    n = sum(p.numel() for p in gen.unet.parameters())
    log.info("wrote the tiny generator to %s (UNet %.2f M parameters)", a.out, n / 1e6)
    return 0


if __name__ == "__main__":
    sys.exit(main())
