"""The GRPO entry point as a job runs it: CPU training on generated data, kill + automatic resume, outputs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from vqinsight.data.manifest import main as manifest_main
from vqinsight.data.synthetic import generate_dataset
from vqinsight.models.tiny import build_tiny

pytestmark = pytest.mark.slow
MIX = {"exposure_p": 1.0, "under_p": 1.0, "other_max_severity": 0.25}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny model + koniq and visionreward manifests in a scratch directory."""
    root = tmp_path_factory.mktemp("grpo")
    for key, counts in (("koniq", {"train": 24, "test": 8}), ("visionreward", {"vqa": 4, "pairs": 12})):
        generate_dataset(key, root / "raw" / key, counts=counts, nframes=4, mix=MIX)
        assert (
            manifest_main(
                [
                    "--dataset",
                    key,
                    "--raw-dir",
                    str(root / "raw" / key),
                    "--out",
                    str(root / f"{key}.parquet"),
                    "--quarantine",
                    str(root / f"{key}.q.csv"),
                ]
            )
            == 0
        )
    build_tiny(root / "tiny", seed=0)
    return root


def _recipe(path: Path, max_steps: int, temporal: bool) -> Path:
    recipe = {
        "prompt_style": "short",
        "rewards": {
            "format": 0.5,
            "score": 1.0,
            "choice": 1.0,
            "length": {"weight": 1.0, "gamma": 0.1, "l_min": 2, "l_max": 40},
        },
        "temporal": {"enabled": temporal, "rollouts": 2},
        "eval": {"n": 8, "batch_size": 8, "max_new_tokens": 8},
        "trainer": {
            "num_generations": 4,
            "per_device_train_batch_size": 8,
            "max_completion_length": 8,
            "max_steps": max_steps,
            "learning_rate": 1e-3,
            "beta": 0.0,
            "save_steps": 2,
            "logging_steps": 1,
            "dataloader_num_workers": 0,
            "lr_scheduler_type": "constant",
        },
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def _cmd(world: Path, out: Path, recipe: Path, manifests: list[str], tasks: list[str], evals: list[str]):
    return [
        sys.executable,
        "-m",
        "vqinsight.grpo",
        "--recipe",
        str(recipe),
        "--model",
        str(world / "tiny"),
        "--manifests",
        *manifests,
        "--tasks",
        *tasks,
        "--eval-manifests",
        *evals,
        "--output-dir",
        str(out / "model"),
        "--checkpoint-dir",
        str(out / "checkpoints"),
        "--cache-dir",
        str(world / "cache"),
        "--nframes",
        "4",
        "--max-pixels",
        "4704",
        "--min-pixels",
        "784",
        "--threads",
        "1",
    ]


def test_killed_training_resumes_from_the_newest_complete_checkpoint(world, tmp_path):
    out = tmp_path / "run"
    cmd = _cmd(
        world,
        out,
        _recipe(tmp_path / "r.yaml", 10, False),
        [str(world / "koniq.parquet")],
        ["image_score"],
        [str(world / "koniq.parquet")],
    )
    log1 = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, stdout=log1, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and not list((out / "checkpoints").glob("checkpoint-*/COMPLETE")):
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "model").exists()
    done = sorted(int(p.parent.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*/COMPLETE"))
    assert done and done[-1] >= 2

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming from" in second.stderr
    assert "loaded the model weights of" in second.stderr  # every weight, under the module's names
    # progress lines in the job log (stderr is a file, not a terminal): the resumed run's optimizer steps and the
    # held-out evaluation, each with done / total
    assert re.search(r"training: 10/10 step \(100\.0%\), [\d.]+ (s/step|step/s)", second.stderr), second.stderr[-3000:]
    assert re.search(r"held-out eval: \d+/\d+ batch \(100\.0%\)", second.stderr), second.stderr[-3000:]
    result = json.loads((out / "model" / "eval.json").read_text())
    assert result["global_step"] == 10
    resumed = int(Path(result["resumed_from"]).name.split("-")[1])
    assert resumed >= done[-1] > 0
    assert (out / "model" / "model.safetensors").exists() and (out / "model" / "meta.json").exists()
    header = (out / "model" / "curves.csv").read_text().splitlines()[0].split(",")
    assert "reward" in header and "rewards/score/mean" in header
    steps = [int(line.split(",")[0]) for line in (out / "model" / "curves.csv").read_text().splitlines()[1:]]
    assert steps[0] == 1 and steps[-1] == 10  # history from before the kill survives the resume
    assert list((out / "checkpoints" / "tensorboard").rglob("events.out.tfevents.*"))
    assert {"before", "after"} <= set(result) and "image_score" in result["after"]


def test_stage2_step_on_mixed_video_tasks_with_temporal_reward(world, tmp_path):
    out = tmp_path / "s2"
    cmd = _cmd(
        world,
        out,
        _recipe(tmp_path / "r.yaml", 2, True),
        [str(world / "visionreward.parquet")],
        ["comparison", "vqa"],
        [],
    )
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    # without CUDA the run trains in float32, not under TRL's default bf16 autocast (28 % slower on the demo)
    assert "no CUDA device: training in float32 (bf16 autocast off)" in p.stderr
    header = (out / "model" / "curves.csv").read_text().splitlines()[0].split(",")
    for key in ("rewards/temporal/mean", "temporal/acc_ordered", "temporal/acc_shuffled", "rewards/length/mean"):
        assert key in header, header


def test_missing_manifest_and_base_model_are_clear_errors(world, tmp_path):
    recipe = _recipe(tmp_path / "r.yaml", 2, False)
    p = subprocess.run(
        _cmd(world, tmp_path / "x", recipe, [str(tmp_path / "nope.parquet")], ["image_score"], []),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2 and "nope.parquet: data manifest not found" in p.stderr
    cmd = _cmd(world, tmp_path / "x", recipe, [str(world / "koniq.parquet")], ["image_score"], [])
    cmd[cmd.index("--model") + 1] = str(tmp_path / "no-model")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "no-model" in p.stderr and "not found" in p.stderr
