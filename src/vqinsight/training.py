"""What the training commands share: GRPO (``grpo/train.py``) and SFT (``baselines/sft.py``) of the judge, and
Diffusion-DPO of the generator (``dpo/train.py``).

- Seeding (``seed_everything``), float32 without CUDA (``cpu_float32``), the rank's device (``training_device``),
  atomic model saving (``save_atomically``; ``save_final`` gathers ZeRO-3 shards first, ``is_zero3``).
- Resuming a Trainer's checkpoint with every weight loaded under the module's names (``CheckpointResume``,
  ``load_checkpoint_weights``).
- Checkpoint directories: a checkpoint counts once its ``COMPLETE`` marker exists (``list_checkpoints``,
  ``latest_checkpoint``); a rerun keeps a directory's checkpoints only if they come from the same configuration
  (``fingerprint``, ``run_fingerprint``, ``claim_checkpoint_dir``), else it starts clean.
- The wide curves table of a Trainer's log history (``curves_table``) and the held-out rows (``held_out_rows``).
- SLURM's time-limit warning (``SignalFlag``, ``any_rank``, ``PREEMPTED_EXIT_CODE``); the ``transformers.Trainer``
  callbacks built on these are in ``vqinsight.callbacks``.

**The warning signal.** The cluster profile (slurm/config.yaml) submits the training rules with
``--signal=URG@<seconds>``: that many seconds before the time limit SLURM sends SIGURG to every process of the job
step. SIGURG, not the usual SIGUSR1, because on a Snakemake cluster the trainer is not alone in its step: ``srun``
starts Snakemake, which starts a shell, which starts ``accelerate launch`` and then the trainer. SIGUSR1 terminates
every process that does not handle it, so the step would end (and take the trainer with it) before any checkpoint is
written; SIGURG is ignored by default, so only the processes that install a handler react to it (both seen on SLURM
22.05; tests/workflow/test_slurm.py checks the SIGURG path). The trainer then saves a checkpoint at the end of the
current step and exits with ``PREEMPTED_EXIT_CODE``; the job fails, Snakemake resubmits it (``retries`` in the
profile) or a later run reruns it, and training resumes from that checkpoint. Under ``accelerate launch`` every rank
receives the signal; the ranks agree on the step to stop at through one all-reduce per step (``any_rank``).

Torch-free at import: the Snakefile imports the training commands' recipe classes at DAG start, so torch is imported
only inside the functions that need it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import random
import re
import shutil
import signal
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .cpu_kernels import active_float_order
from .provenance import atomic_write_json
from .records import select_rows, to_records

log = logging.getLogger("vqinsight.training")

COMPLETE = "COMPLETE"  # written into a checkpoint directory last: only then is the checkpoint used for resuming
TRAINER_CHECKPOINT = r"checkpoint-(\d+)"  # transformers.Trainer's checkpoint directories (GRPO, SFT)
HELD_OUT_ROWS = 128  # held-out rows evaluated before and after training when a recipe's eval.n is absent
# SIGURG: what the cluster profile sends (see the module docstring). SIGUSR1: for a trainer started directly with
# `srun`/`sbatch --signal=USR1@...`, outside Snakemake, where it is the usual choice.
SIGNALS: tuple[signal.Signals, ...] = (signal.SIGURG, signal.SIGUSR1)
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"; the rerun resumes from the checkpoint


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cpu_float32(trainer_kwargs: dict, cuda: bool, logger: logging.Logger) -> dict:
    """Without CUDA, turn off bf16 (TRL's configs autocast to bf16 by default): on a CPU that emulates bf16 matmuls
    and attention, and the demo's GRPO steps ran 28 % slower than in float32 (docs/PERFORMANCE.md)."""
    if not cuda and trainer_kwargs.get("bf16", True):
        kernels = active_float_order(os.environ) or "native"
        logger.info("no CUDA device: training in float32 (bf16 autocast off); CPU kernels: %s", kernels)
        trainer_kwargs["bf16"] = False
    return trainer_kwargs


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


def training_device(cuda: bool) -> str:
    """The device this rank trains on: ``cuda:<LOCAL_RANK>`` with CUDA, else the CPU. A model is loaded on the CPU and
    the trainer places it only when it is built, so work before that (the held-out evaluation before training) must
    move it here first; on the first GPU run the stage-1 job's evaluation generated on the CPU for five minutes."""
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if cuda else "cpu"


def is_zero3(trainer) -> bool:
    """Whether the trainer runs DeepSpeed ZeRO-3 (parameters partitioned across ranks)."""
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return bool(trainer.is_deepspeed_enabled and plugin is not None and plugin.zero_stage == 3)


def save_final(trainer, processor, out: str | os.PathLike) -> Path:
    """The trained model (safetensors) and its processor to ``out``, atomically. Collective: every rank calls it.

    Under DeepSpeed ZeRO-3 each rank holds a shard of every parameter, so ``save_pretrained`` of the in-memory model
    would write empty tensors: the full weights are gathered by ``trainer.save_model`` (config/accelerate/zero3.yaml
    sets zero3_save_16bit_model) into ``<out>.tmp``, renamed by the main process. Otherwise the main process saves
    the in-memory model with ``save_atomically``.
    """
    out = Path(out)
    if not is_zero3(trainer):
        if trainer.accelerator.is_main_process:
            save_atomically(trainer.model, processor, out)
        return out
    tmp = out.with_name(out.name + ".tmp")
    if trainer.accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(tmp)
        (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; nothing here ever loads it
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    return out


def checkpoint_key_map(model) -> dict[str, list[str]]:
    """Name in a ``save_pretrained`` file -> in-memory name(s) of each tensor.

    transformers 5 renames some models' weights on load (Qwen2.5-VL: ``visual.*`` -> ``model.visual.*``,
    ``model.layers.*`` -> ``model.language_model.layers.*``) and reverts the renaming on save, so a checkpoint's
    names are not the module's. Tied weights (one tensor, several names) map to every name."""
    sd = model.state_dict()
    names: dict[tuple, list[str]] = {}
    for k, t in sd.items():
        names.setdefault((t.data_ptr(), tuple(t.shape), t.dtype), []).append(k)
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # a transformers without weight conversions saves the module's own names
        return {k: [k] for k in sd}
    out = {}
    for saved, t in revert_weight_conversion(model, dict(sd)).items():
        ks = names.get((t.data_ptr(), tuple(t.shape), t.dtype))
        if ks is None:
            raise ValueError(f"checkpoint tensor {saved!r} is a converted copy, not a renamed model tensor")
        out[saved] = ks
    return out


def load_checkpoint_weights(model, checkpoint: str | os.PathLike) -> bool:
    """Load a ``transformers.Trainer`` checkpoint's full-model safetensors into ``model``, mapping the file's names
    to the module's (``checkpoint_key_map``). Returns False where the checkpoint holds no such file.

    The Trainer's own resume loads the file with ``load_state_dict(strict=False)`` under the file's names: on
    Qwen2.5-VL under transformers 5 no key matched, the resumed run silently continued from the base weights with
    the checkpoint's optimizer state (seen on the first GPU smoke run; the CPU demo's tiny model too). Here every
    tensor must load: a missing or unknown one is an error naming it."""
    import safetensors.torch

    ck = Path(checkpoint)
    index = ck / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (ck / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        return False
    mapping = checkpoint_key_map(model)
    state: dict[str, Any] = {}
    unknown = []
    for f in files:
        for saved, t in safetensors.torch.load_file(str(ck / f), device="cpu").items():
            if saved not in mapping:
                unknown.append(saved)
            for k in mapping.get(saved, ()):
                state[k] = t
    res = model.load_state_dict(state, strict=False)
    if unknown or res.missing_keys or res.unexpected_keys:
        raise RuntimeError(
            f"{ck}: checkpoint does not match the model (not in the model: {unknown[:5]}, "
            f"not in the checkpoint: {list(res.missing_keys)[:5]}); was it written by another model or "
            "transformers version? Delete the checkpoint directory to start over."
        )
    log.info("loaded the model weights of %s (%d tensors)", ck, len(state))
    return True


class CheckpointResume:
    """Mixin for ``transformers.Trainer`` subclasses: resume loads the model weights with
    ``load_checkpoint_weights`` (all of them, or an error) where the Trainer itself would load a full-model
    safetensors file; DeepSpeed, FSDP and PEFT adapter checkpoints keep the Trainer's own loading."""

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        plain = model is None and not (
            getattr(self, "is_deepspeed_enabled", False)
            or getattr(self, "is_fsdp_enabled", False)
            or hasattr(self.model, "peft_config")
        )
        if plain and load_checkpoint_weights(self.model, resume_from_checkpoint):
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)


# ------------------------------------------------------------------------------------------------ checkpoints


def list_checkpoints(root: Path, pattern: str = TRAINER_CHECKPOINT) -> list[tuple[int, Path, bool]]:
    """(step, directory, complete) of every checkpoint directory under ``root`` whose name matches ``pattern`` (one
    group: the step), by step."""
    out = []
    if root.is_dir():
        for d in root.iterdir():
            m = re.fullmatch(pattern, d.name)
            if m and d.is_dir():
                out.append((int(m.group(1)), d, (d / COMPLETE).is_file()))
    return sorted(out)


def latest_checkpoint(root: Path, pattern: str = TRAINER_CHECKPOINT) -> Path | None:
    """Newest checkpoint with a COMPLETE marker; incomplete ones (a kill during saving) are removed."""
    found = []
    for step, d, complete in list_checkpoints(root, pattern):
        if complete:
            found.append((step, d))
        else:
            log.warning("removing incomplete checkpoint %s", d)
            shutil.rmtree(d, ignore_errors=True)
    return max(found)[1] if found else None


def prune_checkpoints(root: Path, keep: int, pattern: str = TRAINER_CHECKPOINT) -> None:
    """Remove all but the newest ``keep`` complete checkpoints."""
    complete = [d for _, d, ok in list_checkpoints(root, pattern) if ok]
    for d in complete[:-keep]:
        shutil.rmtree(d, ignore_errors=True)


def claim_checkpoint_dir(
    root: Path, fingerprint: str, *, pattern: str = TRAINER_CHECKPOINT, keep: Iterable[str] = ()
) -> None:
    """Keep the checkpoints under ``root`` only if they come from this very configuration; otherwise start clean.

    A rerun after an interruption resumes; a rerun because the recipe, init model or data changed must not: then
    everything under ``root`` but the names in ``keep`` (a cache that does not depend on the configuration) is
    removed. Otherwise only incomplete checkpoints (a kill during saving) are. The configuration's fingerprint is
    stamped into ``root/run.json``.
    """
    stamp = root / "run.json"
    old = None
    if stamp.is_file():
        with contextlib.suppress(ValueError, OSError, AttributeError):
            old = json.loads(stamp.read_text()).get("fingerprint")
    keep = set(keep)
    if root.is_dir() and old != fingerprint:
        stale = [p for p in root.iterdir() if p.name not in keep]
        if any(p.name != stamp.name for p in stale):
            log.warning("%s holds checkpoints of a different configuration; starting from scratch", root)
        for p in stale:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    for _, d, complete in list_checkpoints(root, pattern):
        if not complete:
            log.warning("removing incomplete checkpoint %s", d)
            shutil.rmtree(d)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(stamp, {"fingerprint": fingerprint})


def file_identity(path: Path) -> list:
    """Cheap identity of a file or directory tree: relative names, sizes and mtimes (no hashing of weights)."""
    if path.is_file():
        st = path.stat()
        return [path.name, st.st_size, st.st_mtime_ns]
    if path.is_dir():
        return [
            [str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns]
            for f in sorted(path.rglob("*"))
            if f.is_file()
        ]
    return [str(path)]  # a hub id


def fingerprint(ident: dict[str, Any]) -> str:
    """SHA-256 of a configuration's identity (JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def run_fingerprint(a: argparse.Namespace) -> str:
    """What a judge checkpoint (GRPO, SFT) was trained from: recipe text, init model, data, seed and media settings."""
    return fingerprint(
        {
            "recipe": Path(a.recipe).read_text(),
            "recipe_override": getattr(a, "recipe_override", None),
            "model": [a.model, file_identity(Path(a.model))],
            "manifests": [[m, file_identity(Path(m))] for m in a.manifests],
            "tasks": a.tasks,
            "split": a.split,
            "seed": a.seed,
            "media": [a.nframes, a.max_pixels, a.min_pixels, a.image_max_pixels, a.reader, list(a.scale)],
        }
    )


# ------------------------------------------------------------------------------------------------ logs, held-out


def curves_table(log_history: list[dict]) -> str:
    """Wide CSV of the trainer's log history: one row per logged step, one column per metric."""
    rows = [h for h in log_history if "step" in h]
    keys = sorted({k for h in rows for k, v in h.items() if isinstance(v, int | float) and k != "step"})
    lines = [",".join(["step", *keys])]
    for h in rows:
        lines.append(",".join([str(h["step"]), *("" if h.get(k) is None else repr(float(h[k])) for k in keys)]))
    return "\n".join(lines) + "\n"


def held_out_rows(a: argparse.Namespace, eval_spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Held-out rows of the run's tasks (split --eval-split), a fixed seeded sample of the recipe's ``eval.n``."""
    if not a.eval_manifests:
        return []
    n = eval_spec.get("n", HELD_OUT_ROWS)
    return to_records(select_rows(a.eval_manifests, a.tasks, a.eval_split, limit=n, seed=a.seed + 1))


# ------------------------------------------------------------------------------------------------ signals


class SignalFlag:
    """Records the first of `signals` that arrives; installs its handlers in the main thread only."""

    def __init__(self, signals: Iterable[signal.Signals] = SIGNALS):
        self.signals = tuple(signals)
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def install(self) -> bool:
        """Install the handlers (idempotent). Returns False where signals cannot be handled (not the main thread)."""
        if self._previous:
            return True
        if threading.current_thread() is not threading.main_thread():
            log.warning("not in the main thread: the SLURM warning signal will not trigger a checkpoint")
            return False
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handle)
        return True

    def restore(self) -> None:
        """Put back the handlers that were there before `install`."""
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        # only record: saving from inside a signal handler could interrupt an optimizer step or a collective
        if self.received is None:
            self.received = signal.Signals(signum)

    def is_set(self) -> bool:
        return self.received is not None


def any_rank(flag: bool) -> bool:
    """True if `flag` is set on any rank (one all-reduce when torch.distributed runs with several processes)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if "nccl" in str(dist.get_backend()) else "cpu"
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
