"""Pieces shared by the judge's training commands: media/CLI arguments, seeding, atomic model saving."""

from __future__ import annotations

import argparse
import os
import random
import shutil
from pathlib import Path

import numpy as np

from .data import MediaSpec


def add_media_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("media (from config data.*)")
    g.add_argument("--cache-dir", required=True, help="frame cache directory")
    g.add_argument("--nframes", required=True, type=int)
    g.add_argument("--max-pixels", required=True, type=int)
    g.add_argument("--min-pixels", type=int, default=0)
    g.add_argument("--image-max-pixels", type=int, default=None)
    g.add_argument("--reader", choices=("decord", "pyav"), default="decord")
    g.add_argument("--scale", nargs=2, type=float, default=(1.0, 5.0), metavar=("LO", "HI"))


def media_spec(a: argparse.Namespace) -> MediaSpec:
    return MediaSpec(a.cache_dir, a.nframes, a.max_pixels, a.min_pixels, a.reader, a.image_max_pixels)


def processor_pixels(a: argparse.Namespace) -> dict[str, tuple[int, int]]:
    """Processor pixel budgets matching the decoded media, so visual token counts are what the config says."""
    return {
        "image_pixels": (a.min_pixels, a.image_max_pixels or a.max_pixels),
        "video_pixels": (a.min_pixels, a.max_pixels),
    }


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_atomically(model, processor, out_dir: str | os.PathLike) -> Path:
    """save_pretrained (safetensors) into `<out>.tmp`, then rename: a killed job never leaves a half model."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def cpu_float32(trainer_kwargs: dict, cuda: bool, log) -> dict:
    """Without CUDA, turn off bf16 (TRL's configs autocast to bf16 by default): on a CPU that emulates bf16 matmuls
    and attention, and the demo's GRPO steps ran 28 % slower than in float32 (docs/PERFORMANCE.md, issue 7)."""
    if not cuda and trainer_kwargs.get("bf16", True):
        log.info("no CUDA device: training in float32 (bf16 autocast off)")
        trainer_kwargs["bf16"] = False
    return trainer_kwargs
