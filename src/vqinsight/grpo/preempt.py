"""Checkpoint, then exit, when SLURM warns that a training job's time is nearly up.

The cluster profile (slurm/config.yaml) submits the training rules with `--signal=URG@<seconds>`: that many seconds
before the time limit SLURM sends SIGURG to every process of the job step. SIGURG, not the usual SIGUSR1, because
on a Snakemake cluster the trainer is not alone in its step: `srun` starts Snakemake, which starts a shell, which
starts `accelerate launch` and then the trainer. SIGUSR1 terminates every process that does not handle it, so
the step would end (and take the trainer with it) before any checkpoint is written; SIGURG is ignored by default,
so only the processes that install a handler react to it (both seen on SLURM 22.05; tests/workflow/test_slurm.py
checks the SIGURG path).

`CheckpointOnSignal` is a `transformers.TrainerCallback`. After the signal it asks the Trainer to save at the end
of the current optimizer step, lets the checkpoint be written (and marked complete by the callbacks before it),
then exits with `PREEMPTED_EXIT_CODE`. The job fails, Snakemake resubmits it (`retries` in the profile)
or a later run reruns it, and training resumes from that checkpoint instead of from the last
periodic one (`save_steps`). Under `accelerate launch` every rank receives the signal; the ranks agree on the
step to stop at through one all-reduce per step.

Example:
    trainer = GRPOTrainer(..., callbacks=[MarkComplete(), CsvLog(), CheckpointOnSignal()])  # last in the list
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable

from transformers import TrainerCallback

log = logging.getLogger(__name__)

# SIGURG: what the cluster profile sends (see the module docstring). SIGUSR1: for a trainer started directly with
# `srun`/`sbatch --signal=USR1@...`, outside Snakemake, where it is the usual choice.
SIGNALS: tuple[signal.Signals, ...] = (signal.SIGURG, signal.SIGUSR1)
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"; the rerun resumes from the checkpoint


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


class CheckpointOnSignal(TrainerCallback):
    """Save a checkpoint at the end of the step during which the warning signal came, then exit.

    Put it after the callbacks whose `on_save` must run for the checkpoint to count (MarkComplete): it exits from
    its own `on_save`. At the last step it only saves: the run then finishes normally.

    Args:
        signals: the signals that mean "time is nearly up".
        exit_code: the process's exit status after the checkpoint.
    """

    def __init__(self, signals: Iterable[signal.Signals] = SIGNALS, exit_code: int = PREEMPTED_EXIT_CODE):
        self.flag = SignalFlag(signals)
        self.exit_code = exit_code
        self._exit_after_save = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.flag.install()

    def on_step_end(self, args, state, control, **kwargs):
        if self._exit_after_save or not any_rank(self.flag.is_set()):
            return
        control.should_save = True
        if control.should_training_stop:  # the last step anyway: save, and let the run finish
            log.warning("%s at the last step %d: saving and finishing", self._name(), state.global_step)
            return
        log.warning("%s: saving a checkpoint at step %d, then exiting", self._name(), state.global_step)
        self._exit_after_save = True
        control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        if self._exit_after_save:
            self._exit(state)

    def on_train_end(self, args, state, control, **kwargs):
        # never let a stopped run continue into writing its "final" model (in case no save happened)
        if self._exit_after_save:
            self._exit(state)
        self.flag.restore()

    def _name(self) -> str:
        return self.flag.received.name if self.flag.received else "signal on another rank"

    def _exit(self, state) -> None:
        self.flag.restore()
        log.warning("checkpoint-%d written; exiting with %d so the job is rerun", state.global_step, self.exit_code)
        raise SystemExit(self.exit_code)
