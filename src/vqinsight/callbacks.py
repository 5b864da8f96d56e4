"""The ``transformers.Trainer`` callbacks of the judge's training commands (GRPO, SFT): mark a checkpoint complete
once it is written, append every log record to a CSV, report progress, and checkpoint-then-exit on SLURM's
time-limit warning (``vqinsight.training`` explains the signal).

Imports transformers (and so torch): the training commands import this module inside ``main``, after the DAG-start
recipe checks that import their modules without torch.

Example:
    trainer = GRPOTrainer(..., callbacks=trainer_callbacks(checkpoint_dir / "curves.live.csv"))
"""

from __future__ import annotations

import csv
import logging
import signal
from collections.abc import Iterable
from pathlib import Path

from transformers import TrainerCallback

from .progress import training_progress_callback
from .training import COMPLETE, PREEMPTED_EXIT_CODE, SIGNALS, SignalFlag, any_rank

log = logging.getLogger("vqinsight.callbacks")


class MarkComplete(TrainerCallback):
    """Runs after the Trainer finished writing a checkpoint: only then is it trusted for resuming."""

    def on_save(self, args, state, control, **kw):
        if state.is_world_process_zero:
            d = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if d.is_dir():
                (d / COMPLETE).write_text(f"{state.global_step}\n")


class CsvLog(TrainerCallback):
    """Appends every log record to a CSV while training runs (live monitoring)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args, state, control, logs=None, **kw):
        if state.is_world_process_zero and logs:
            new = not self.path.exists()
            with open(self.path, "a", newline="") as f:
                w = csv.writer(f)
                if new:
                    w.writerow(["step", "key", "value"])
                for k, v in sorted(logs.items()):
                    if isinstance(v, int | float):
                        w.writerow([state.global_step, k, v])


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


def trainer_callbacks(curves_path: Path) -> list[TrainerCallback]:
    """The callbacks of a GRPO or SFT run, in order: CheckpointOnSignal last, so MarkComplete has marked the
    checkpoint it saves on SLURM's warning signal."""
    return [MarkComplete(), CsvLog(curves_path), training_progress_callback(), CheckpointOnSignal()]
