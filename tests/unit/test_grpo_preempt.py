"""SLURM's time-limit warning signal: checkpoint at the end of the step, mark it complete, exit for a rerun, resume.

A real `transformers.Trainer` on a two-parameter model (CPU, about a second), with the callback order of
vqinsight.callbacks.trainer_callbacks: a MarkComplete-style callback first, CheckpointOnSignal last.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainingArguments

from vqinsight.callbacks import CheckpointOnSignal
from vqinsight.training import PREEMPTED_EXIT_CODE, SignalFlag

COMPLETE = "COMPLETE"


class Line(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.b = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, y):
        return {"loss": ((self.w * x + self.b - y) ** 2).mean()}


class MarkComplete(TrainerCallback):
    def on_save(self, args, state, control, **kw):
        (Path(args.output_dir) / f"checkpoint-{state.global_step}" / COMPLETE).write_text("ok")


class SignalAtStep(TrainerCallback):
    """Plays SLURM: sends the signal to this process during step `step`."""

    def __init__(self, step: int, sig: signal.Signals = signal.SIGURG):
        self.step, self.sig = step, sig

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step + 1 == self.step:
            os.kill(os.getpid(), self.sig)


class StepRecorder(TrainerCallback):
    def __init__(self):
        self.done: list[int] = []

    def on_step_end(self, args, state, control, **kw):
        self.done.append(state.global_step)


def _trainer(out: Path, max_steps: int, callbacks: list) -> Trainer:
    data = [{"x": torch.tensor([float(i)]), "y": torch.tensor([2.0 * i + 1])} for i in range(64)]
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        save_strategy="steps",
        save_steps=100,  # no periodic checkpoint within these runs: only the signal makes one
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    collate = lambda rows: {k: torch.stack([r[k] for r in rows]) for k in ("x", "y")}  # noqa: E731
    return Trainer(model=Line(), args=args, train_dataset=data, data_collator=collate, callbacks=callbacks)


def test_signal_checkpoints_marks_complete_exits_and_the_rerun_resumes(tmp_path):
    before = signal.getsignal(signal.SIGURG)
    trainer = _trainer(tmp_path, 8, [MarkComplete(), CheckpointOnSignal(), SignalAtStep(3)])
    with pytest.raises(SystemExit) as exc:
        trainer.train()
    assert exc.value.code == PREEMPTED_EXIT_CODE
    ckpts = sorted(p.name for p in tmp_path.glob("checkpoint-*"))
    assert ckpts == ["checkpoint-3"], ckpts
    assert (tmp_path / "checkpoint-3" / COMPLETE).is_file(), "MarkComplete ran before the exit"
    assert signal.getsignal(signal.SIGURG) == before, "handlers restored"

    steps = StepRecorder()
    rerun = _trainer(tmp_path, 8, [MarkComplete(), CheckpointOnSignal(), steps])
    rerun.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    assert steps.done == [4, 5, 6, 7, 8], "resumed after the checkpointed step"


def test_signal_at_the_last_step_saves_and_lets_the_run_finish(tmp_path):
    trainer = _trainer(tmp_path, 4, [MarkComplete(), CheckpointOnSignal(), SignalAtStep(4, signal.SIGUSR1)])
    trainer.train()  # no SystemExit
    assert (tmp_path / "checkpoint-4" / COMPLETE).is_file()


def test_no_signal_changes_nothing():
    cb = CheckpointOnSignal()
    control = TrainerControl()
    cb.on_step_end(None, None, control)
    assert not control.should_save and not control.should_training_stop


def test_flag_records_the_first_signal_and_restores_handlers():
    flag = SignalFlag((signal.SIGURG, signal.SIGUSR1))
    before = signal.getsignal(signal.SIGUSR1)
    assert flag.install()
    os.kill(os.getpid(), signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGURG)
    assert flag.received == signal.SIGUSR1
    flag.restore()
    assert signal.getsignal(signal.SIGUSR1) == before
