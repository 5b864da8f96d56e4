"""Progress in log files: periodic lines with done / total, rate and ETA when stderr is not a terminal."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import pytest
from tqdm import tqdm

from vqinsight.progress import LogProgress, progress, progress_line, training_progress_callback


def test_progress_line_reports_done_total_rate_and_eta():
    assert progress_line("frame cache", 30, 120, 60.0, "video") == (
        "frame cache: 30/120 video (25.0%), 2 s/video, elapsed 1m00s, ETA 3m00s"
    )
    assert progress_line("check media", 300, 1000, 1.0, "file") == (
        "check media: 300/1000 file (30.0%), 300 file/s, elapsed 1s, ETA 2s"
    )
    # a resumed run: the rate counts this run's items only (80 of 100 were done before)
    assert progress_line("judge", 90, 100, 10.0, "row", initial=80).endswith("1 row/s, elapsed 10s, ETA 10s")
    assert progress_line("download", 5e8, 2e9, 10.0, "B", scale=True) == (
        "download: 500MB/2.00GB (25.0%), 50.0MB/s, elapsed 10s, ETA 30s"
    )
    assert progress_line("rows", 7, None, 2.0, "row") == "rows: 7 row, 3.5 row/s, elapsed 2s"


def test_outside_a_terminal_progress_logs_lines_at_start_periodically_and_at_the_end(monkeypatch, caplog):
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    clock = iter(range(0, 10_000, 7))  # every tqdm time reading advances 7 s
    monkeypatch.setattr("tqdm.std.time", lambda: float(next(clock)))  # tqdm's clock (self._time)
    caplog.set_level(logging.INFO, logger="vqinsight.progress")
    with progress(total=20, desc="frame cache", unit="video", interval=30) as bar:
        assert isinstance(bar, LogProgress)
        for _ in range(20):
            bar.update()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("frame cache: 0/20 video (0.0%)")
    assert lines[-1].startswith("frame cache: 20/20 video (100.0%)") and "ETA" not in lines[-1]
    middle = lines[1:-1]
    assert middle and all(
        re.search(r"\d+/20 video \(\d+\.\d%\), [\d.]+ s/video, elapsed \S+, ETA \S+", m) for m in middle
    )
    assert len(lines) < 20, "periodic, not one line per item"


def test_on_a_terminal_it_is_a_tqdm_bar_and_disable_true_stays_silent(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="vqinsight.progress")
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    bar = progress(range(3), desc="x", disable=True)
    assert type(bar) is tqdm and bar.disable
    list(bar)
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    quiet = progress(total=3, desc="x", disable=True)
    quiet.update(3)
    quiet.close()
    assert not caplog.records


def test_training_callback_logs_steps_with_eta_from_the_main_process_only(monkeypatch, caplog):
    pytest.importorskip("transformers")
    caplog.set_level(logging.INFO, logger="vqinsight.progress")
    t = iter([0.0, 5.0, 100.0, 200.0, 300.0])
    monkeypatch.setattr("time.monotonic", lambda: next(t))
    cb = training_progress_callback(interval=60)
    state = SimpleNamespace(global_step=10, max_steps=40, is_world_process_zero=True)
    cb.on_train_begin(None, state, None)  # resumed at step 10
    for step in (11, 20, 40):
        state.global_step = step
        cb.on_step_end(None, state, None)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "training: 11/40 step (27.5%), 5 s/step, elapsed 5s, ETA 2m25s"
    assert lines[-1].startswith("training: 40/40 step (100.0%)") and len(lines) == 3
    worker = training_progress_callback(interval=0)
    state = SimpleNamespace(global_step=0, max_steps=4, is_world_process_zero=False)
    caplog.clear()
    monkeypatch.setattr("time.monotonic", lambda: 1.0)
    worker.on_train_begin(None, state, None)
    worker.on_step_end(None, state, None)
    assert not caplog.records
