"""Progress of long steps: a tqdm bar in a terminal, periodic log lines in a log file (SLURM job logs).

    with progress(total=len(videos), desc="frame cache", unit="video") as bar:
        for v in videos:
            ...
            bar.update()

Attached to a terminal this is an ordinary tqdm bar. Otherwise (a job whose stderr is a file) it writes one log line
at the start, one every `interval` seconds and one at the end, each with items done / total, the rate and the time
left, e.g. ``frame cache: 1200/28000 video (4.3%), 12.1 video/s, elapsed 1m39s, ETA 36m55s``. tqdm's own
``disable=None`` shows nothing at all outside a terminal, so an hours-long SLURM job would log nothing.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

log = logging.getLogger("vqinsight.progress")

#: seconds between two log lines outside a terminal
INTERVAL = 60.0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def progress_line(
    desc: str, n: float, total: float | None, elapsed: float, unit: str = "it", initial: float = 0, scale: bool = False
) -> str:
    """``desc: n/total unit (pct%), rate unit/s, elapsed ..., ETA ...`` (the parts that are known). The rate counts
    the items done since the start (`initial` of them were done before, e.g. by an interrupted run); `scale` writes
    amounts with SI prefixes (bytes: 1.2GB)."""

    def amount(x: float, suffix: str = "") -> str:
        return (
            tqdm.format_sizeof(x, unit + suffix)
            if scale
            else f"{x:.0f} {unit}{suffix}"
            if x >= 100
            else (f"{x:.3g} {unit}{suffix}")
        )

    if total:
        head = f"{amount(n)}/{amount(total)}" if scale else f"{n:g}/{total:g} {unit}"
        parts = [f"{head} ({100.0 * n / total:.1f}%)"]
    else:
        parts = [amount(n) if scale else f"{n:g} {unit}"]
    rate = (n - initial) / elapsed if elapsed > 0 else None
    if rate:
        parts.append(amount(rate, "/s") if rate >= 1 or scale else f"{1 / rate:.3g} s/{unit}")
    parts.append(f"elapsed {_duration(elapsed)}")
    if rate and total and n < total:
        parts.append(f"ETA {_duration((total - n) / rate)}")
    return f"{desc}: {', '.join(parts)}"


class LogProgress(tqdm):
    """tqdm that writes `progress_line` through `logging` (start, every `mininterval` seconds, end)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("mininterval", INTERVAL)
        kwargs["maxinterval"] = max(kwargs["mininterval"], kwargs.get("maxinterval", 0))
        kwargs["file"] = open(os.devnull, "w")  # noqa: SIM115 -- closed in close(); tqdm's own output is not used
        kwargs["disable"] = False
        self._initial = kwargs.get("initial", 0)
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        d = self.format_dict
        desc = (d.get("prefix") or "progress").rstrip(": ")
        unit, scale = d.get("unit") or "it", bool(d.get("unit_scale"))
        log.info("%s", progress_line(desc, d["n"], d["total"], d["elapsed"], unit, self._initial, scale))
        return True

    def close(self) -> None:
        if self.disable:
            return
        f = self.fp
        super().close()
        try:
            f.close()
        except (AttributeError, OSError):
            pass


def progress(iterable: Iterable[Any] | None = None, *, interval: float | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on a terminal (stderr is a tty), else a `LogProgress` (log lines every `interval` seconds).
    Takes tqdm's keyword arguments (total, desc, unit, initial)."""
    if sys.stderr.isatty() or kwargs.get("disable") is True:
        return tqdm(iterable, **kwargs)
    kwargs.pop("disable", None)
    if interval is not None:
        kwargs["mininterval"] = interval
    return LogProgress(iterable, **kwargs)


def training_progress_callback(interval: float = INTERVAL, desc: str = "training"):
    """A transformers TrainerCallback that logs `progress_line` of the optimizer steps (done / max_steps, time per
    step, ETA) from the main process: at the first step, every `interval` seconds and at the last step. A resumed
    run's rate counts only its own steps."""
    import time

    from transformers import TrainerCallback

    class LogTrainingProgress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.t0, self.step0, self.last = time.monotonic(), state.global_step, None

        def on_step_end(self, args, state, control, **kw):
            now = time.monotonic()
            last_step = state.global_step >= state.max_steps
            if state.is_world_process_zero and (self.last is None or now - self.last >= interval or last_step):
                self.last = now
                line = progress_line(desc, state.global_step, state.max_steps, now - self.t0, "step", self.step0)
                log.info("%s", line)

    return LogTrainingProgress()
