"""The generator directory: one layout for T2V-Turbo (MS) and the demo's tiny generator.

    <dir>/unet/            diffusers UNet3DConditionModel with time_cond_proj_dim (the guidance embedding input)
    <dir>/vae/             diffusers AutoencoderKL (frames are encoded and decoded one by one)
    <dir>/text_encoder/    transformers CLIPTextModel
    <dir>/tokenizer/       transformers CLIPTokenizer
    <dir>/generator.json   sampling defaults: frames, height, width, fps, steps, guidance, lcm_origin_steps,
                           w_embedding_dim, and "kind" (t2v_turbo_ms | tiny)

`load_generator` checks the layout and names the missing piece; `save_generator` writes it atomically enough for
Snakemake (a directory output is only declared complete when the job ends).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer")
CONFIG_NAME = "generator.json"


@dataclass
class GeneratorConfig:
    """Sampling defaults of a generator directory (T2V-Turbo MS values)."""

    kind: str = "t2v_turbo_ms"
    num_frames: int = 16
    height: int = 256
    width: int = 256
    fps: float = 8.0
    steps: int = 4
    guidance: float = 7.5
    lcm_origin_steps: int = 50
    w_embedding_dim: int = 256
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, path: str | Path) -> GeneratorConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read the generator config ({e})") from e
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{path}: unknown generator config key(s) {unknown}; valid: {sorted(known)}")
        return cls(**raw)

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")


@dataclass
class Generator:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    config: GeneratorConfig
    path: Path | None = None


def check_layout(path: str | Path) -> Path:
    """The generator directory, or a FileNotFoundError naming what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: generator directory not found")
    missing = [c for c in COMPONENTS if not (path / c).is_dir()]
    if not (path / CONFIG_NAME).is_file():
        missing.append(CONFIG_NAME)
    if missing:
        raise FileNotFoundError(
            f"{path}: not a generator directory, missing {missing} "
            f"(expected {', '.join(COMPONENTS)} and {CONFIG_NAME}; see vqinsight.t2v.model)"
        )
    return path


def load_generator(path: str | Path, device: str | None = None, dtype: Any = None) -> Generator:
    """Load all four components and the sampling config; the VAE and text encoder are frozen and in eval mode."""
    import torch
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = check_layout(path)
    dtype = dtype or torch.float32
    unet = UNet3DConditionModel.from_pretrained(path / "unet", torch_dtype=dtype)
    vae = AutoencoderKL.from_pretrained(path / "vae", torch_dtype=dtype)
    text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", dtype=dtype)
    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
    config = GeneratorConfig.read(path / CONFIG_NAME)
    if unet.config.time_cond_proj_dim != config.w_embedding_dim:
        raise ValueError(
            f"{path}: unet time_cond_proj_dim={unet.config.time_cond_proj_dim} but {CONFIG_NAME} says "
            f"w_embedding_dim={config.w_embedding_dim}; a T2V-Turbo UNet needs the guidance-embedding input"
        )
    for m in (vae, text_encoder):
        m.requires_grad_(False).eval()
    if device is not None:
        unet, vae, text_encoder = unet.to(device), vae.to(device), text_encoder.to(device)
    return Generator(unet, vae, text_encoder, tokenizer, config, path)


def save_generator(gen: Generator, out: str | Path, *, unet: Any = None, copy_from: str | Path | None = None) -> Path:
    """Write a generator directory. `unet` overrides gen.unet (e.g. a merged LoRA model); with `copy_from`, the
    frozen components (vae, text encoder, tokenizer) are copied from that directory instead of re-serialised."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (unet if unet is not None else gen.unet).save_pretrained(out / "unet", safe_serialization=True)
    if copy_from is not None:
        src = check_layout(copy_from)
        for c in ("vae", "text_encoder", "tokenizer"):
            if (out / c).exists():
                shutil.rmtree(out / c)
            shutil.copytree(src / c, out / c)
    else:
        gen.vae.save_pretrained(out / "vae", safe_serialization=True)
        gen.text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
        gen.tokenizer.save_pretrained(out / "tokenizer")
    gen.config.write(out / CONFIG_NAME)
    return out


# ----------------------------------------------------------------------------------------------- shared encoders


def encode_prompts(gen: Generator, prompts: list[str]):
    """CLIP text hidden states (B, 77, D) for the UNet's cross-attention (padded to the tokenizer's max length)."""
    import torch

    tok = gen.tokenizer(
        prompts, padding="max_length", max_length=gen.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    device = next(gen.text_encoder.parameters()).device
    with torch.no_grad():
        return gen.text_encoder(tok.input_ids.to(device))[0]


def vae_scale(gen: Generator) -> float:
    return float(getattr(gen.vae.config, "scaling_factor", 0.18215))


def encode_frames(gen: Generator, frames, batch: int = 16):
    """uint8 frames (F, H, W, 3) at the generator's size -> latents (4, F, h, w), scaled like the UNet expects."""
    import numpy as np
    import torch

    frames = np.asarray(frames)
    h, w = gen.config.height, gen.config.width
    if frames.ndim != 4 or frames.shape[1:] != (h, w, 3):
        raise ValueError(f"frames must be (F, {h}, {w}, 3) for this generator, got {frames.shape}")
    vae = gen.vae
    p = next(vae.parameters())
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).to(p.device, p.dtype) / 127.5 - 1.0
    with torch.no_grad():
        lat = torch.cat([vae.encode(x[i : i + batch]).latent_dist.mean for i in range(0, len(x), batch)])
    return (lat * vae_scale(gen)).permute(1, 0, 2, 3).contiguous()


def decode_latents(gen: Generator, latents, batch: int = 16):
    """Latents (B, 4, F, h, w) -> uint8 numpy frames (B, F, H, W, 3)."""
    import torch

    b, c, f, h, w = latents.shape
    p = next(gen.vae.parameters())
    z = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w).to(p.device, p.dtype) / vae_scale(gen)
    with torch.no_grad():
        x = torch.cat([gen.vae.decode(z[i : i + batch]).sample for i in range(0, len(z), batch)])
    x = ((x.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.reshape(b, f, *x.shape[1:]).permute(0, 1, 3, 4, 2).cpu().numpy()
