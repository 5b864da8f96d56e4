"""The preflight (python -m vqinsight.preflight, Snakemake target `check`) on generated demo data and fake models."""

from __future__ import annotations

import csv
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vqinsight import preflight
from vqinsight.data.preflight import check_dataset, check_model, container_problem
from vqinsight.data.registry import DATASET_KEYS
from vqinsight.data.synthetic import generate_dataset

ROOT = Path(__file__).resolve().parents[2]
SMALL = {
    "koniq": {"train": 3, "test": 2},
    "lsvq": {"train": 3, "test": 3, "test_1080p": 2, "invalid": 1},
    "konvid": {"test": 3},
    "livevqc": {"test": 3},
    "lgvq": {"prompts": 2, "models": 2},
    "visionreward": {"vqa": 2, "pairs": 2},
    "genaibench": {"pairs": 3},
    "monetbench": {"pairs": 3},
    "vidprom": {"prompts": 5},
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """Every dataset generated in its native layout (a finished demo's raw folder), plus a model directory."""
    root = tmp_path_factory.mktemp("raw")
    for key in DATASET_KEYS:
        generate_dataset(key, root / key, counts=SMALL[key], nframes=4)
    model = root / "models" / "base"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"\0" * 16)
    return root


def _args(root: Path, *extra: str) -> list[str]:
    datasets = {k: {"raw": str(root / k), "source": "synthetic"} for k in DATASET_KEYS}
    models = {"model.base": str(root / "models" / "base")}
    return ["--datasets", json.dumps(datasets), "--models", json.dumps(models), "--reader", "pyav", *extra]


def test_finished_demo_passes(demo, caplog):
    caplog.set_level(logging.INFO)
    assert preflight.main(_args(demo)) == 0
    assert "no problems in 9 dataset(s), 1 model(s)" in caplog.text
    assert preflight.main(_args(demo, "--decode")) == 0


def test_deleted_and_truncated_video_and_bad_row_are_each_named(demo, tmp_path, caplog):
    root = tmp_path / "raw"
    shutil.copytree(demo, root)
    videos = sorted((root / "lsvq" / "videos").rglob("*.mp4"))
    deleted, truncated = videos[0], videos[-1]  # a train and a test_1080p video (synth00003 is an is_valid=0 row)
    deleted.unlink()
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size * 2 // 3])
    attrs = root / "konvid" / "KoNViD_1k_attributes.csv"
    with open(attrs, newline="") as f:
        rows = list(csv.DictReader(f))
    rows[1]["MOS"] = "3,9 (bad)"
    with open(attrs, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    report = tmp_path / "check.tsv"
    assert preflight.main(_args(root, "--report", str(report))) == 1
    text = caplog.text
    assert str(deleted) in text and str(truncated) in text and "truncated MP4" in text
    assert f"{attrs} row 1: non-numeric MOS '3,9 (bad)'" in text
    with open(report, newline="") as f:
        problems = list(csv.DictReader(f, delimiter="\t"))
    assert sorted(p["item"] for p in problems) == ["konvid", "lsvq", "lsvq"] and all(p["fix"] for p in problems)
    assert "3 problem(s) in 9 dataset(s)" in text


def test_container_check_without_decoding(demo, tmp_path):
    video = next((demo / "lsvq" / "videos").rglob("*.mp4"))
    assert container_problem(video) is None
    data = video.read_bytes()
    for cut in (len(data) - 1, len(data) // 2, 12):
        bad = tmp_path / f"cut{cut}.mp4"
        bad.write_bytes(data[:cut])
        assert container_problem(bad) is not None, cut
    no_moov = tmp_path / "nomoov.mp4"
    no_moov.write_bytes((16).to_bytes(4, "big") + b"ftypisom" + b"\0" * 4)
    assert "no 'moov'" in container_problem(no_moov)
    assert container_problem(next((demo / "koniq" / "images").glob("*.jpg"))) is None  # only --decode opens images


def test_row_counts_and_missing_files(demo, tmp_path):
    spec = {"source": "synthetic", "expect_rows": {"test": [3], "test_1080p": [3573]}}
    report = check_dataset("lsvq", demo / "lsvq", spec, (1.0, 5.0))
    assert report.counts == {"test": 3, "test_1080p": 2, "train": 3} and report.media_files == 8
    assert [p.what for p in report.problems] == ["split 'test_1080p' has 2 rows, the published row set(s) [3573]"]
    empty = check_dataset("livevqc", tmp_path / "livevqc", {"source": "local"}, (1.0, 5.0))
    assert [p.what for p in empty.problems] == [
        f"{tmp_path}/livevqc/data.mat or labels.txt or LIVE_VQC_metadata.csv missing",
        f"{tmp_path}/livevqc/Video/ missing",
    ]
    assert "live.ece.utexas.edu" in empty.problems[0].fix


def test_models(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert "not in the local Hugging Face cache" in check_model("base", "Qwen/Qwen2.5-VL-7B-Instruct").what
    (tmp_path / "ckpt").mkdir()
    assert "no config.json" in check_model("m", str(tmp_path / "ckpt")).what
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    assert "no weight files" in check_model("m", str(tmp_path / "ckpt")).what
    (tmp_path / "ckpt" / "model-00001-of-00002.safetensors").write_bytes(b"\0")
    assert check_model("m", str(tmp_path / "ckpt")) is None
    (tmp_path / "lora.pt").write_bytes(b"")
    assert "empty" in check_model("lora", str(tmp_path / "lora.pt")).what
    assert "not found" in check_model("m", str(tmp_path / "nowhere")).what


@pytest.mark.slow
def test_snakemake_check_target_passes_config_datasets_and_models():
    """The `check` target: a local rule over every enabled dataset and every model no rule builds."""
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "check", "--cores", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cmd = next(line for line in out.splitlines() if "vqinsight.preflight" in line)
    datasets = json.loads(cmd.split("--datasets '")[1].split("' --models")[0])
    models = json.loads(cmd.split("--models '")[1].split("' --scale")[0])
    assert set(datasets) == set(DATASET_KEYS)
    assert datasets["lsvq"]["expect_rows"] == {"test": [7186, 7220], "test_1080p": [3573]}
    assert datasets["koniq"]["parse"] == {"target": "gt_score_norm"}
    assert models["model.base"] == "resources/models/Qwen2.5-VL-7B-Instruct" and "stage3.generator.lora" in models
    assert "localrule: True" in (ROOT / "rules" / "data.smk").read_text()
