"""Pieces shared by the judge's training commands: seeding, atomic model saving, CPU float32."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np


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
