"""`vqinsight judge` on a tiny model: one video, a pair, a folder (resumed after a real kill), a CSV of pairs, the
Python API's results equal to the CLI's, and each bad input with its message."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vqinsight import cli
from vqinsight.api import Judge, as_dict, settings_for


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """Tiny model, 6 short videos in a folder, a text file named .mp4 and a truncated mp4."""
    from vqinsight.models.tiny import build_tiny
    from vqinsight.video import write_video

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cli")
    model = build_tiny(root / "model", seed=0, video_pixels=(784, 4704), image_pixels=(784, 4704))
    folder = root / "videos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    vids = []
    for i in range(6):
        frames = np.clip(rng.normal(40 + 35 * i, 20, (4, 56, 84, 3)), 0, 255).astype(np.uint8)
        write_video(folder / f"clip{i}.mp4", frames, fps=4)
        vids.append(str(folder / f"clip{i}.mp4"))
    (folder / "notes.txt").write_text("not a video, and not picked up from the folder")
    bad = root / "bad"
    bad.mkdir()
    (bad / "text.mp4").write_text("hello, I am plain text")
    data = Path(vids[0]).read_bytes()
    (bad / "truncated.mp4").write_bytes(data[: len(data) // 2])
    return {"root": root, "model": model, "folder": folder, "vids": vids, "bad": bad}


def args(world, *extra: str) -> list[str]:
    return ["--model", str(world["model"]), "--nframes", "4", "--max-new-tokens", "6", "--threads", "1",
            "--batch-size", "4", "--cache-dir", str(world["root"] / "cache"), *extra]  # fmt: skip


def judge(world, capsys, *inputs: str, extra: tuple[str, ...] = ()) -> tuple[int, str, str]:
    rc = cli.main(["judge", *inputs, *args(world, *extra)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_settings_from_meta_json(world, tmp_path: Path) -> None:
    s = settings_for(world["model"])  # the tiny builder's meta.json: pixel budgets, no frame count
    assert (s.min_pixels, s.max_pixels, s.image_max_pixels, s.nframes) == (784, 4704, 4704, 16)
    grpo = tmp_path / "grpo"
    grpo.mkdir()
    args = {"nframes": "8", "max_pixels": "4704", "min_pixels": "784", "scale": "(1.0, 5.0)"}
    (grpo / "meta.json").write_text(json.dumps({"config": {"recipe": {"prompt_style": "short"}, "args": args}}))
    s = settings_for(grpo)
    assert (s.nframes, s.max_pixels, s.min_pixels, s.image_max_pixels, s.style) == (8, 4704, 784, 4704, "short")
    assert settings_for(grpo, nframes=4, fmt="release").nframes == 4
    assert settings_for(tmp_path / "none").nframes == 16  # no meta.json: the official release's settings


def test_one_video_text_and_json_equal_the_api(world, capsys) -> None:
    v = world["vids"][0]
    rc, out, _ = judge(world, capsys, v)
    assert rc == 0 and out.startswith(f"{v}: score ") and "\nreasoning: " in out
    rc, out, _ = judge(world, capsys, v, extra=("--json",))
    assert rc == 0
    rec = json.loads(out)
    assert rec["task"] == "score" and rec["video"] == v and rec["scale"] == [1.0, 5.0]
    assert rec["score"] is None or 1.0 <= rec["score"] <= 5.0
    api = Judge.load(world["model"], cache_dir=world["root"] / "cache", nframes=4, max_new_tokens=6, batch_size=4)
    assert {"key": rec["key"], **as_dict(api.score(v))} == rec, "the CLI prints what the Python API returns"


def test_pair_gives_verdict_and_p_a_from_both_orders(world, capsys) -> None:
    a, b = world["vids"][:2]
    rc, out, _ = judge(world, capsys, a, b, extra=("--prompt", "a grey fog", "--json"))
    assert rc == 0
    rec = json.loads(out)
    assert rec["task"] == "compare" and (rec["a"], rec["b"], rec["prompt"]) == (a, b, "a grey fog")
    assert 0.0 <= rec["p_a"] <= 1.0 and rec["verdict"] == ("A" if rec["p_a"] > 0.5 else "B")
    assert set(rec["answers"]) == set(rec["reasoning"]) == {"AB", "BA"}
    rc, text, _ = judge(world, capsys, a, b, extra=("--prompt", "a grey fog"))
    assert rc == 0 and f"P(A better) = {rec['p_a']:.3f} from both orders" in text


def test_multidim_and_question(world, capsys) -> None:
    v = world["vids"][1]
    rc, out, _ = judge(world, capsys, v, extra=("--task", "multidim", "--prompt", "fog", "--json"))
    assert rc == 0 and json.loads(out)["task"] == "multidim"
    rc, out, _ = judge(world, capsys, v, extra=("--question", "Is it foggy?", "--json"))
    rec = json.loads(out)
    assert rc == 0 and rec["task"] == "vqa" and 0.0 <= rec["p_yes"] <= 1.0 and rec["question"] == "Is it foggy?"


@pytest.mark.slow
def test_folder_resumes_after_a_kill(world, tmp_path: Path, capsys) -> None:
    out = tmp_path / "scores.jsonl"
    cmd = [sys.executable, "-m", "vqinsight.cli", "judge", str(world["folder"]), "--out", str(out)]
    cmd += args(world, "--batch-size", "1", "--max-new-tokens", "48")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.05)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = out.read_text().splitlines()
    assert before, proc.stderr.read().decode()[-2000:]
    with open(out, "a") as f:
        f.write('{"key": "score|half a line')  # a line the kill cut off
    rc = cli.main(["judge", str(world["folder"]), "--out", str(out), *args(world, "--max-new-tokens", "48")])
    assert rc == 0
    lines = out.read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert lines[: len(before)] == before, "results written before the kill are kept, not recomputed"
    assert sorted(r["video"] for r in recs) == world["vids"], "every video once; notes.txt is not a video"
    assert len({r["key"] for r in recs}) == len(recs)
    if killed:
        assert len(before) < len(recs)
    # started again when finished: nothing to do, the file is unchanged
    assert cli.main(["judge", str(world["folder"]), "--out", str(out), *args(world, "--max-new-tokens", "48")]) == 0
    assert out.read_text().splitlines() == lines


def test_csv_of_pairs_and_glob_to_csv(world, tmp_path: Path, capsys) -> None:
    pairs = tmp_path / "pairs.csv"
    rel = os.path.relpath(world["folder"], tmp_path)
    pairs.write_text(f"a,b,prompt\n{rel}/clip0.mp4,{rel}/clip1.mp4,fog\n{rel}/clip2.mp4,{rel}/clip3.mp4,\n")
    out = tmp_path / "pairs_out.csv"
    rc, _, _ = judge(world, capsys, str(pairs), extra=("--out", str(out)))
    assert rc == 0
    import csv

    rows = list(csv.DictReader(out.open()))
    assert [r["task"] for r in rows] == ["compare", "compare"] and rows[0]["prompt"] == "fog"
    assert all(r["verdict"] in ("A", "B") and 0 <= float(r["p_a"]) <= 1 for r in rows)
    out2 = tmp_path / "glob.csv"
    rc, _, _ = judge(world, capsys, str(world["folder"] / "clip[01].mp4"), extra=("--out", str(out2)))
    assert rc == 0 and [r["video"] for r in csv.DictReader(out2.open())] == world["vids"][:2]


@pytest.mark.parametrize(
    ("make", "message", "code"),
    [
        (lambda w: [str(w["root"] / "missing.mp4")], "missing.mp4: file not found", 2),
        (lambda w: [str(w["bad"] / "text.mp4")], "text.mp4: cannot decode", 1),
        (lambda w: [str(w["bad"] / "truncated.mp4")], "truncated.mp4: cannot decode", 1),
        (lambda w: [str(w["root"] / "empty_dir")], "no videos or images in this folder", 2),
        (lambda w: [str(w["root"] / "*.nothing")], "the pattern matches no videos or images", 2),
    ],
)
def test_bad_inputs_name_the_file_and_the_reason(world, capsys, caplog, make, message, code) -> None:
    (world["root"] / "empty_dir").mkdir(exist_ok=True)
    with caplog.at_level(logging.ERROR):
        rc, out, _ = judge(world, capsys, *make(world))
    assert rc == code
    assert message in out + caplog.text


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: None, "model directory not found"),
        (lambda d: d.mkdir(), "not a model directory (no config.json)"),
        (lambda d: (d.mkdir(), (d / "config.json").write_text("{not json")), "cannot load the judge"),
    ],
)
def test_unreadable_model_directory(world, tmp_path: Path, capsys, caplog, setup, message) -> None:
    d = tmp_path / "model"
    setup(d)
    with caplog.at_level(logging.ERROR):
        rc = cli.main(["judge", world["vids"][0], "--model", str(d), "--cache-dir", str(tmp_path / "c")])
    assert rc == 2 and message in caplog.text and str(d) in caplog.text
