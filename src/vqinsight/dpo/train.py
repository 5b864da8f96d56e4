"""Diffusion-DPO fine-tuning of the T2V-Turbo generator on win/lose video pairs (stage 3 of VQ-Insight).

    python -m vqinsight.dpo.train --recipe config/recipes/demo_dpo.yaml --model results/demo/models/tiny_t2v \\
        --pairs results/demo/stage3/pairs.jsonl --out results/demo/stage3/dpo/model \\
        --checkpoint-dir results/demo/stage3/dpo/checkpoints --log-dir results/demo/stage3/dpo/logs \\
        --seed 0 --threads 1

    accelerate launch --num_processes 8 -m vqinsight.dpo.train --recipe config/recipes/paper_dpo.yaml \\
        --model results/paper/models/t2v_turbo_ms --pairs results/paper/stage3/pairs.jsonl \\
        [--videodpo VIDEODPO_META_DIR] --out ... --checkpoint-dir ... --log-dir ... --seed 0

One optimizer step takes ``grad_accum`` micro-batches of ``batch_size`` pairs per process. For each pair the winner
and the loser get the SAME noise and the SAME timestep (Salesforce, diffusers and VideoDPO all do this), drawn from
VideoDPO's T2V-Turbo grid (DDIM-50 timesteps 19, 39, ..., 999) or uniformly from 0..999. The UNet predicts epsilon
with the guidance w-embedding as ``timestep_cond``; the per-sample errors of the policy and of the reference (under
no_grad: the same UNet with the LoRA adapters disabled, or a frozen copy of the initial UNet) enter
``vqinsight.dpo.loss.diffusion_dpo_loss``. AdamW, constant learning rate after a linear warmup, gradient clipping.

Outputs:
    {log_dir}/train_log.csv   one row per optimizer step: step, loss, implicit_acc, model_diff, ref_diff, lr,
                              grad_norm, seconds (averaged over micro-batches and processes)
    {log_dir}/tb/             the same scalars for TensorBoard
    {checkpoint_dir}/step-NNNNNN/   trainable weights, optimizer, lr scheduler, RNG states; ``COMPLETE`` written last.
                              A rerun resumes from the newest complete one (same recipe up to max_steps, save_every
                              and keep_checkpoints; same model, pairs and seed), else starts clean. The newest
                              ``keep_checkpoints`` are kept. Latents are cached in {checkpoint_dir}/latents unless
                              --cache-dir says otherwise.
    {out}/                    the generator directory with the LoRA merged into the UNet (vqinsight.t2v.model),
                              plus dpo_summary.json; written to ``<out>.tmp`` and renamed.

SIGURG (SLURM's time-limit warning, see vqinsight.training) or SIGUSR1: the current step is finished, a
checkpoint is written and the process exits with 75, so the rerun resumes there. Exit status 2: bad input (missing
model directory or pairs file, invalid recipe), with the reason logged.

Multi-GPU runs use DDP through accelerate (every process holds the whole UNet); ZeRO/FSDP are not supported.
Several CPU processes (a test of the distributed path) need ``ACCELERATE_USE_CPU=true torchrun --nproc_per_node N``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..config import recipe_from_mapping
from ..provenance import atomic_write_json, atomic_write_text, write_meta
from ..t2v.model import check_layout, encode_prompts, load_generator, save_generator
from ..training import (
    COMPLETE,
    PREEMPTED_EXIT_CODE,
    SignalFlag,
    any_rank,
    claim_checkpoint_dir,
    file_identity,
    fingerprint,
    latest_checkpoint,
    prune_checkpoints,
)
from ..video import MediaError
from .data import LatentCache, read_pairs, read_videodpo

log = logging.getLogger("vqinsight.dpo")

CHECKPOINT = r"step-(\d+)"  # step-NNNNNN/ under --checkpoint-dir
CSV_NAME = "train_log.csv"
CSV_COLUMNS = ("step", "loss", "implicit_acc", "model_diff", "ref_diff", "lr", "grad_norm", "seconds")
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
LORA_KEYS = {"rank", "alpha", "targets", "dropout"}
REFERENCES = ("lora_disabled", "frozen_copy")
# recipe keys that may change between a run and its resumption (extending a run, checkpoint bookkeeping)
RESUMABLE_CHANGES = ("max_steps", "save_every", "keep_checkpoints")


# --------------------------------------------------------------------------------------------------------- recipe


def _number(value: Any, name: str, kind: type = float, minimum: float | None = None, strict: bool = False) -> Any:
    """`value` as int/float, or ValueError. Accepts numeric strings ("6e-6": YAML 1.1 reads those as strings)."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if kind is int:
        if value != int(value):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        value = int(value)
    else:
        value = float(value)
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return value


@dataclass
class Recipe:
    """A DPO recipe (config/recipes/*_dpo.yaml). Unknown keys are errors; learning_rate, max_steps, lora required."""

    learning_rate: float
    max_steps: int
    lora: dict[str, Any] | None
    beta: float = 5000.0
    batch_size: int = 1
    grad_accum: int = 1
    reference: str | None = None
    timesteps: dict[str, Any] = field(default_factory=lambda: {"grid": "ddim", "ddim_steps": 50})
    guidance: float | None = None
    snr_gamma: float | None = None
    save_every: int = 50
    keep_checkpoints: int = 2
    max_grad_norm: float | None = 1.0
    warmup_steps: int = 0
    mixed_precision: str = "no"
    weight_decay: float = 0.01

    REQUIRED = ("learning_rate", "max_steps", "lora")

    def __post_init__(self) -> None:
        self.learning_rate = _number(self.learning_rate, "learning_rate", float, 0.0, strict=True)
        self.max_steps = _number(self.max_steps, "max_steps", int, 1)
        self.beta = _number(self.beta, "beta", float, 0.0, strict=True)
        self.batch_size = _number(self.batch_size, "batch_size", int, 1)
        self.grad_accum = _number(self.grad_accum, "grad_accum", int, 1)
        self.save_every = _number(self.save_every, "save_every", int, 0)
        self.keep_checkpoints = _number(self.keep_checkpoints, "keep_checkpoints", int, 1)
        self.warmup_steps = _number(self.warmup_steps, "warmup_steps", int, 0)
        self.weight_decay = _number(self.weight_decay, "weight_decay", float, 0.0)
        if self.guidance is not None:
            self.guidance = _number(self.guidance, "guidance", float, 0.0)
        if self.snr_gamma is not None:
            self.snr_gamma = _number(self.snr_gamma, "snr_gamma", float, 0.0, strict=True)
        if self.max_grad_norm is not None:
            self.max_grad_norm = _number(self.max_grad_norm, "max_grad_norm", float, 0.0, strict=True)
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}")
        self._check_lora()
        self._check_reference()
        self._check_timesteps()

    def _check_lora(self) -> None:
        if self.lora is None:
            return
        if not isinstance(self.lora, dict):
            raise ValueError(f"lora must be a mapping {{rank, alpha, targets, dropout}} or null, got {self.lora!r}")
        unknown = sorted(set(self.lora) - LORA_KEYS)
        if unknown:
            raise ValueError(f"unknown lora key(s) {unknown}; known: {sorted(LORA_KEYS)}")
        if "rank" not in self.lora:
            raise ValueError("lora.rank is required")
        lora = dict(self.lora)
        lora["rank"] = _number(lora["rank"], "lora.rank", int, 1)
        lora["alpha"] = _number(lora.get("alpha", lora["rank"]), "lora.alpha", float, 0.0, strict=True)
        lora["dropout"] = _number(lora.get("dropout", 0.0), "lora.dropout", float, 0.0)
        targets = lora.get("targets", list(DEFAULT_LORA_TARGETS))
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(f"lora.targets must be a non-empty list of module names, got {targets!r}")
        lora["targets"] = targets
        self.lora = lora

    def _check_reference(self) -> None:
        if self.reference is None:
            self.reference = "lora_disabled" if self.lora is not None else "frozen_copy"
        if self.reference not in REFERENCES:
            raise ValueError(f"reference must be one of {list(REFERENCES)}, got {self.reference!r}")
        if self.lora is None and self.reference == "lora_disabled":
            raise ValueError("reference 'lora_disabled' needs LoRA; full fine-tuning (lora: null) needs 'frozen_copy'")

    def _check_timesteps(self) -> None:
        t = self.timesteps
        if not isinstance(t, dict) or t.get("grid") not in ("ddim", "uniform"):
            raise ValueError(f"timesteps must be {{grid: ddim, ddim_steps: N}} or {{grid: uniform}}, got {t!r}")
        known = {"grid", "ddim_steps"} if t["grid"] == "ddim" else {"grid"}
        unknown = sorted(set(t) - known)
        if unknown:
            raise ValueError(f"unknown timesteps key(s) {unknown} for grid {t['grid']!r}; known: {sorted(known)}")
        if t["grid"] == "ddim":
            steps = _number(t.get("ddim_steps", 50), "timesteps.ddim_steps", int, 1)
            if 1000 % steps:
                raise ValueError(f"timesteps.ddim_steps must divide 1000, got {steps}")
            self.timesteps = {"grid": "ddim", "ddim_steps": steps}

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: recipe not found")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a recipe must be a YAML mapping, got {type(data).__name__}")
        missing = [k for k in cls.REQUIRED if k not in data]
        if missing and not set(data) - {f.name for f in fields(cls)}:
            raise ValueError(f"{path}: required recipe key(s) missing: {missing} (lora: null means full fine-tuning)")
        return recipe_from_mapping(cls, data, path)


# ------------------------------------------------------------------------------------------------ pure pieces


def timestep_grid(spec: dict[str, Any]):
    """The timesteps a DPO step draws from (LongTensor), or None for uniform over 0..999."""
    import torch

    from ..t2v.scheduler import ddim_timesteps

    if spec["grid"] == "uniform":
        return None
    return torch.tensor(ddim_timesteps(spec["ddim_steps"]), dtype=torch.long)


def sample_timesteps(n: int, grid, generator):
    """n timesteps: uniform over `grid` (VideoDPO: ``ddim_timesteps[randint(0, 50)]``) or over 0..999."""
    import torch

    from ..t2v.scheduler import NUM_TRAIN_TIMESTEPS

    if grid is None:
        return torch.randint(0, NUM_TRAIN_TIMESTEPS, (n,), generator=generator)
    return grid[torch.randint(0, len(grid), (n,), generator=generator)]


def noisy_pair_batch(scheduler, lat_w, lat_l, timesteps, noise):
    """Winner and loser latents (B, ...) noised with the same noise (B, ...) at the same timesteps (B,).

    Returns (noisy (2B, ...), timesteps (2B,), noise (2B, ...)): winners first, then losers, in pair order.
    """
    import torch

    if lat_w.shape != lat_l.shape or noise.shape != lat_w.shape:
        raise ValueError(f"winner {tuple(lat_w.shape)}, loser {tuple(lat_l.shape)} and noise {tuple(noise.shape)}")
    t2 = timesteps.repeat(2)
    n2 = noise.repeat(2, *([1] * (noise.ndim - 1)))
    return scheduler.add_noise(torch.cat([lat_w, lat_l]), n2, t2), t2, n2


class PairStream:
    """Deterministic pair order: a fresh seeded permutation per epoch; position g of the global stream is a pure
    function of (seed, g), so a resumed run continues exactly where the checkpoint left off."""

    def __init__(self, n: int, seed: int) -> None:
        if n < 1:
            raise ValueError("no pairs to train on")
        self.n, self.seed = n, seed
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        import torch

        if epoch not in self._perms:
            self._perms = {
                epoch: torch.randperm(
                    self.n, generator=torch.Generator().manual_seed(self.seed * 1009 + epoch)
                ).tolist()
            }
        return self._perms[epoch]

    def take(self, start: int, count: int) -> list[int]:
        return [self._perm(g // self.n)[g % self.n] for g in range(start, start + count)]


def constant_with_warmup(optimizer, warmup_steps: int):
    """LR factor step/warmup for the first `warmup_steps` optimizer steps, then 1 (diffusers' constant_with_warmup)."""
    from torch.optim.lr_scheduler import LambdaLR

    def factor(step: int) -> float:
        return step / max(1, warmup_steps) if step < warmup_steps else 1.0

    return LambdaLR(optimizer, factor)


# ------------------------------------------------------------------------------------------------ checkpoints


def run_fingerprint(a: argparse.Namespace, recipe: Recipe) -> str:
    """What checkpoints were trained from: recipe (less RESUMABLE_CHANGES), model, pairs, seed."""
    r = {k: v for k, v in asdict(recipe).items() if k not in RESUMABLE_CHANGES}
    videodpo = [file_identity(Path(a.videodpo) / n) for n in ("pair.json", "metadata.json")] if a.videodpo else None
    return fingerprint(
        {
            "recipe": r,
            "model": file_identity(Path(a.model)),
            "pairs": [file_identity(Path(p)) for p in a.pairs],
            "videodpo": videodpo,
            "dupbeta": a.dupbeta,
            "seed": a.seed,
        }
    )


def _rng_state(noise_gen) -> dict[str, Any]:
    import numpy as np
    import torch

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "noise": noise_gen.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], noise_gen) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    noise_gen.set_state(state["noise"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _torch_save_atomic(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(accelerator, root: Path, step: int, model, optimizer, lr_sched, noise_gen, state: dict) -> Path:
    """step-NNNNNN/: trainable.safetensors, optimizer.pt, scheduler.pt, state.json, rng_<rank>.pt, then COMPLETE."""
    from safetensors.torch import save_file

    d = root / f"step-{step:06d}"
    if accelerator.is_main_process:
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        weights = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        tmp = d / ".trainable.safetensors.tmp"
        save_file(weights, str(tmp))
        os.replace(tmp, d / "trainable.safetensors")
        _torch_save_atomic(optimizer.state_dict(), d / "optimizer.pt")
        _torch_save_atomic(lr_sched.state_dict(), d / "scheduler.pt")
        atomic_write_json(d / "state.json", {**state, "step": step})
    _torch_save_atomic(_rng_state(noise_gen), d / f"rng_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_text(d / COMPLETE, f"{step}\n")
    accelerator.wait_for_everyone()
    return d


def load_checkpoint(accelerator, d: Path, model, optimizer, lr_sched, noise_gen) -> int:
    """Restore a checkpoint written by save_checkpoint; returns its step."""
    import torch
    from safetensors.torch import load_file

    state = json.loads((d / "state.json").read_text())
    weights = load_file(str(d / "trainable.safetensors"))
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(named) - set(weights)), sorted(set(weights) - set(named))
    if missing or unexpected:
        raise ValueError(
            f"{d}: checkpoint does not match the model (missing {missing[:3]}..., unexpected {unexpected[:3]}...)"
        )
    with torch.no_grad():
        for n, p in named.items():
            p.copy_(weights[n].to(p.device, p.dtype))
    optimizer.load_state_dict(torch.load(d / "optimizer.pt", map_location="cpu", weights_only=True))
    lr_sched.load_state_dict(torch.load(d / "scheduler.pt", map_location="cpu", weights_only=True))
    rng = d / f"rng_{accelerator.process_index}.pt"
    if rng.is_file():
        # our own file (python/numpy RNG states are not plain tensors)
        _set_rng_state(torch.load(rng, map_location="cpu", weights_only=False), noise_gen)
    else:
        log.warning(
            "%s: no RNG state for process %d (another world size?); noise continues from the seed",
            d,
            accelerator.process_index,
        )
    if state.get("world_size") != accelerator.num_processes:
        log.warning(
            "%s was written by %s processes, resuming with %d: the pair order after the resume differs",
            d,
            state.get("world_size"),
            accelerator.num_processes,
        )
    return int(state["step"])


# ---------------------------------------------------------------------------------------------------- logging


def reset_csv(path: Path, upto: int) -> None:
    """Keep the rows of steps <= upto (0: none), so a resumed run appends without duplicating steps."""
    rows: list[dict[str, str]] = []
    if path.is_file():
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                with contextlib.suppress(TypeError, ValueError):
                    if int(row["step"]) <= upto:
                        rows.append(row)
    lines = [",".join(CSV_COLUMNS)] + [",".join(str(r.get(c, "")) for c in CSV_COLUMNS) for r in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def append_csv(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", newline="") as f:
        csv.writer(f).writerow([row[c] for c in CSV_COLUMNS])
        f.flush()


def read_csv(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


# ----------------------------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", required=True, type=Path)
    ap.add_argument("--model", required=True, type=Path, help="the generator directory to fine-tune")
    ap.add_argument("--pairs", nargs="*", default=[], type=Path, help="pairs JSONL file(s) (vqinsight.dpo.data)")
    ap.add_argument("--videodpo", type=Path, default=None, help="a VideoDPO META dir (pair.json, metadata.json)")
    ap.add_argument("--dupbeta", type=float, default=0.0, help="VideoDPO pair weight exponent; 0 = uniform")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--checkpoint-dir", required=True, type=Path)
    ap.add_argument("--log-dir", required=True, type=Path)
    ap.add_argument("--cache-dir", type=Path, default=None, help="latent cache (default: <checkpoint-dir>/latents)")
    ap.add_argument("--reader", choices=("decord", "pyav"), default="decord")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    a = ap.parse_args(argv)
    if not a.pairs and a.videodpo is None:
        ap.error("give --pairs and/or --videodpo")
    return a


def _check_inputs(a: argparse.Namespace) -> str | None:
    """The first missing input, described, or None."""

    try:
        check_layout(a.model)
    except FileNotFoundError as e:
        return str(e)
    for p in a.pairs:
        if not p.is_file():
            return f"{p}: pairs file not found"
    if a.videodpo is not None and not a.videodpo.is_dir():
        return f"{a.videodpo}: VideoDPO META directory not found"
    return None


def load_pairs(a: argparse.Namespace) -> list[dict[str, Any]]:
    pairs = [p for f in a.pairs for p in read_pairs(f)]
    if a.videodpo is not None:
        pairs += read_videodpo(a.videodpo, a.dupbeta)
    return pairs


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        recipe = Recipe.load(a.recipe)
    except (FileNotFoundError, ValueError) as e:
        log.error("%s", e)
        return 2
    problem = _check_inputs(a)
    if problem:
        log.error("%s", problem)
        return 2
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)

    try:
        pairs = load_pairs(a)
    except (FileNotFoundError, ValueError, MediaError) as e:
        log.error("%s", e)
        return 2
    return train(a, recipe, pairs)


def train(a: argparse.Namespace, recipe: Recipe, pairs: list[dict[str, Any]]) -> int:
    """Run (or resume) the DPO training; 0 when the model is written, PREEMPTED_EXIT_CODE after SIGURG/SIGUSR1."""
    flag = SignalFlag()  # installed first, so a warning that comes while the latents are encoded is not lost
    flag.install()
    try:
        return _train(a, recipe, pairs, flag)
    finally:
        flag.restore()


def _train(a: argparse.Namespace, recipe: Recipe, pairs: list[dict[str, Any]], flag) -> int:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from ..t2v.scheduler import T2VTurboScheduler, w_embedding
    from .loss import diffusion_dpo_loss, implicit_accuracy, min_snr_weights, per_sample_mse

    accelerator = Accelerator(mixed_precision=recipe.mixed_precision)
    is_main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    if not is_main:
        log.setLevel(logging.WARNING)
    device = accelerator.device
    set_seed(a.seed)  # same LoRA init on every process

    gen = load_generator(a.model, device=str(device))
    scheduler = T2VTurboScheduler()
    guidance = recipe.guidance if recipe.guidance is not None else gen.config.guidance
    wdim = gen.config.w_embedding_dim

    # --- latents: every video encoded once (sharded over the processes), then read from the cache
    cache = LatentCache(gen, a.cache_dir or a.checkpoint_dir / "latents", backend=a.reader)
    videos = sorted({v for p in pairs for v in (p["win"], p["lose"])})
    cache.warm(videos[rank::world], progress=is_main)
    accelerator.wait_for_everyone()

    # --- policy and reference
    unet = gen.unet
    ref_unet = None
    if recipe.reference == "frozen_copy":
        ref_unet = copy.deepcopy(unet).requires_grad_(False).eval()
    if recipe.lora is not None:
        from peft import LoraConfig, get_peft_model

        lc = recipe.lora
        unet.requires_grad_(False)
        unet = get_peft_model(
            unet,
            LoraConfig(
                r=lc["rank"],
                lora_alpha=lc["alpha"],
                target_modules=lc["targets"],
                lora_dropout=lc["dropout"],
                init_lora_weights="gaussian",  # diffusers' DPO script: A gaussian, B zero -> starts at the reference
            ),
        )
    else:
        unet.requires_grad_(True)
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    n_train, n_all = sum(p.numel() for p in params), sum(p.numel() for p in unet.parameters())
    log.info(
        "%s: %.2f M trainable of %.2f M parameters; reference: %s",
        "LoRA" if recipe.lora is not None else "full fine-tuning",
        n_train / 1e6,
        n_all / 1e6,
        recipe.reference,
    )
    optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    lr_sched = constant_with_warmup(optimizer, recipe.warmup_steps)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    model = accelerator.unwrap_model(unet)

    # --- resume
    noise_gen = torch.Generator().manual_seed(a.seed * 1_000_003 + rank + 1)
    if is_main:
        # the latent cache (default <checkpoint-dir>/latents) was just filled and depends on the videos only
        claim_checkpoint_dir(a.checkpoint_dir, run_fingerprint(a, recipe), pattern=CHECKPOINT, keep=("latents",))
    accelerator.wait_for_everyone()
    resume = latest_checkpoint(a.checkpoint_dir, CHECKPOINT)
    step = 0
    if resume is not None:
        step = load_checkpoint(accelerator, resume, model, optimizer, lr_sched, noise_gen)
        log.info("resuming from %s (step %d)", resume, step)
    csv_path = a.log_dir / CSV_NAME
    writer = None
    if is_main:
        a.log_dir.mkdir(parents=True, exist_ok=True)
        reset_csv(csv_path, step)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(a.log_dir / "tb"), purge_step=step + 1)

    grid = timestep_grid(recipe.timesteps)
    stream = PairStream(len(pairs), a.seed)
    B, GA = recipe.batch_size, recipe.grad_accum
    ckpt_state = {"world_size": world, "batch_size": B, "grad_accum": GA, "pairs": len(pairs)}

    def pair_errors(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        lat_w = torch.stack([cache.get(p["win"]) for p in batch]).to(device)
        lat_l = torch.stack([cache.get(p["lose"]) for p in batch]).to(device)
        t = sample_timesteps(len(batch), grid, noise_gen)
        noise = torch.randn(lat_w.shape, generator=noise_gen).to(device)
        noisy, t2, n2 = noisy_pair_batch(scheduler, lat_w, lat_l, t, noise)
        t2 = t2.to(device)
        text = encode_prompts(gen, [p["prompt"] for p in batch])
        text2 = torch.cat([text, text])
        w_emb = w_embedding(torch.full((len(t2),), float(guidance)), wdim).to(device)
        kw = {"encoder_hidden_states": text2, "timestep_cond": w_emb}
        with accelerator.autocast():
            err = per_sample_mse(unet(noisy, t2, **kw).sample, n2)
            with torch.no_grad():
                if ref_unet is not None:
                    ref_err = per_sample_mse(ref_unet(noisy, t2, **kw).sample, n2)
                else:
                    with model.disable_adapter():
                        ref_err = per_sample_mse(model(noisy, t2, **kw).sample, n2)
        if recipe.snr_gamma is not None:
            sw = min_snr_weights(t2, scheduler.alphas_cumprod, recipe.snr_gamma).to(device)
            err, ref_err = err * sw, ref_err * sw
        mw, ml = err.chunk(2)
        rw, rl = ref_err.detach().chunk(2)
        weights = torch.tensor([p["weight"] for p in batch], dtype=torch.float32, device=device)
        return {
            "loss": diffusion_dpo_loss(mw, ml, rw, rl, recipe.beta, weights),
            "implicit_acc": implicit_accuracy(mw, ml, rw, rl, recipe.beta),
            "model_diff": (mw - ml).detach().mean(),
            "ref_diff": (rw - rl).mean(),
        }

    if ref_unet is not None:
        ref_unet.to(device)
    pbar = tqdm(total=recipe.max_steps, initial=step, desc="DPO", unit="step", disable=not is_main)
    try:
        while step < recipe.max_steps:
            t0 = time.time()
            sums: dict[str, torch.Tensor] = {}
            for k in range(GA):
                start = ((step * GA + k) * world + rank) * B
                batch = [pairs[i] for i in stream.take(start, B)]
                sync = contextlib.nullcontext() if k == GA - 1 else accelerator.no_sync(unet)
                with sync:
                    out = pair_errors(batch)
                    accelerator.backward(out["loss"] / GA)
                for key, v in out.items():
                    sums[key] = sums.get(key, 0.0) + v.detach().float() / GA
            grad_norm = accelerator.clip_grad_norm_(params, recipe.max_grad_norm or float("inf"))
            lr = lr_sched.get_last_lr()[0]
            optimizer.step()
            lr_sched.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            metrics = {k: accelerator.reduce(v.reshape(1), reduction="mean").item() for k, v in sums.items()}
            row = {"step": step, **metrics, "lr": lr, "grad_norm": float(grad_norm), "seconds": time.time() - t0}
            if is_main:
                append_csv(csv_path, row)
                for key in CSV_COLUMNS[1:]:
                    writer.add_scalar(f"dpo/{key}", row[key], step)
                pbar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['implicit_acc']:.2f}")
            pbar.update(1)
            if not math.isfinite(row["loss"]):
                raise FloatingPointError(f"non-finite DPO loss at step {step}; lower learning_rate or beta")
            stop = any_rank(flag.is_set())
            if (recipe.save_every and step % recipe.save_every == 0) or step == recipe.max_steps or stop:
                d = save_checkpoint(
                    accelerator, a.checkpoint_dir, step, model, optimizer, lr_sched, noise_gen, ckpt_state
                )
                if is_main:
                    prune_checkpoints(a.checkpoint_dir, recipe.keep_checkpoints, CHECKPOINT)
                if stop and step < recipe.max_steps:
                    name = flag.received.name if flag.received else "signal on another process"
                    log.warning("%s: wrote %s; exiting with %d so the job is rerun", name, d, PREEMPTED_EXIT_CODE)
                    return PREEMPTED_EXIT_CODE
    finally:
        pbar.close()
        if writer is not None:
            writer.close()

    accelerator.wait_for_everyone()
    if is_main:
        merged = model.merge_and_unload() if recipe.lora is not None else model
        merged.eval()
        rows = read_csv(csv_path)
        last = rows[-10:]
        summary = {
            "steps": step,
            "pairs": len(pairs),
            "final_loss": rows[-1]["loss"] if rows else None,
            "implicit_acc_last10": sum(r["implicit_acc"] for r in last) / len(last) if last else None,
            "resumed_from": str(resume) if resume else None,
            "world_size": world,
            "recipe": asdict(recipe),
        }
        out = a.out
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_generator(gen, tmp, unet=merged, copy_from=a.model)
        atomic_write_json(tmp / "dpo_summary.json", summary)
        write_meta(tmp / "meta.json", {"recipe": asdict(recipe), "args": {k: str(v) for k, v in vars(a).items()}})
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        log.info("wrote %s (step %d, final loss %s)", out, step, summary["final_loss"])
    accelerator.wait_for_everyone()
    return 0


if __name__ == "__main__":
    sys.exit(main())
