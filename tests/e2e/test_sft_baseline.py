"""The Qwen-SFT baseline (`vqinsight.baselines.sft`): targets, the video collator, CPU training, resume, errors."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from vqinsight.baselines.sft import SFTRecipe, VideoSFTCollator, build_sft_dataset, target_text

MIX = {"exposure_p": 1.0, "under_p": 1.0, "other_max_severity": 0.25}


# ---------------------------------------------------------------------------------------------------------------
# targets, recipe, collator (fast)
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"task": "video_score", "gt_score": 3.20346}, "<think></think><answer>3.20</answer>"),
        ({"task": "image_score", "gt_score": 4.0}, "<think></think><answer>4.00</answer>"),
        (
            {"task": "multidim_score", "gt_scores": {"spatial": 3.0, "temporal": 2.125, "alignment": 4.5}},
            '<think></think><answer>{"spatial": 3.00, "temporal": 2.12, "alignment": 4.50}</answer>',
        ),
        ({"task": "comparison", "gt_choice": "A"}, "<think></think><answer>Video A</answer>"),
        ({"task": "comparison", "gt_choice": "B"}, "<think></think><answer>Video B</answer>"),
        ({"task": "vqa", "gt_choice": "yes"}, "<think></think><answer>yes</answer>"),
        ({"task": "vqa", "gt_choice": "no"}, "<think></think><answer>no</answer>"),
    ],
)
def test_target_is_the_ground_truth_in_the_judge_answer_format(row, expected):
    assert target_text(row) == expected


@pytest.mark.parametrize(
    "row",
    [{"task": "comparison", "gt_choice": "tie"}, {"task": "video_score", "gt_score": None}, {"task": "vqa"}],
)
def test_rows_without_a_usable_target_are_errors(row):
    with pytest.raises(ValueError):
        target_text(row)


def test_recipe_is_strict(tmp_path):
    ok = {"prompt_style": "short", "trainer": {"learning_rate": 1e-3, "max_steps": 2}}
    for bad, msg in (
        ({**ok, "rewards": {}}, "unknown recipe key"),
        ({**ok, "trainer": {"max_steps": 2}}, "learning_rate is required"),
        ({**ok, "trainer": {"learning_rate": 1e-3}}, "max_steps or trainer.num_train_epochs"),
        ({**ok, "trainer": {**ok["trainer"], "output_dir": "x"}}, "set by the command"),
        ({**ok, "eval": {"m": 1}}, "unknown eval key"),
        ({**ok, "prompt_style": "long"}, "prompt_style"),
    ):
        (tmp_path / "r.yaml").write_text(yaml.safe_dump(bad))
        with pytest.raises(ValueError, match=msg):
            SFTRecipe.load(tmp_path / "r.yaml")
    for name in ("demo_sft.yaml", "paper_sft.yaml"):
        SFTRecipe.load(Path(__file__).parents[2] / "config" / "recipes" / name)


def test_collator_feeds_videos_and_labels_only_the_completion():
    from vqinsight.models.tiny import build_processor, build_tokenizer

    processor = build_processor(build_tokenizer())
    rows = [
        {"sample_id": "s", "task": "video_score", "media_type": "video", "media": ["a"], "gt_score": 2.5},
        {"sample_id": "c", "task": "comparison", "media_type": "video", "media": ["a", "b"], "gt_choice": "B"},
    ]
    for r in rows:
        r.update(prompt_text=None, question=None, gt_scores=None, gt_choice=r.get("gt_choice"))
    frames = np.random.default_rng(0).integers(0, 255, (4, 56, 84, 3), dtype=np.uint8)
    collate = VideoSFTCollator(processor, lambda path, kind: frames, "short", (1.0, 5.0))
    batch = collate(list(build_sft_dataset(rows)))
    assert batch["video_grid_thw"].shape[0] == 3  # 1 + 2 videos reach the model
    tok = processor.tokenizer
    for i, r in enumerate(rows):
        kept = batch["labels"][i][batch["labels"][i] != -100]
        assert tok.decode(kept) == target_text(r) + tok.eos_token


# ---------------------------------------------------------------------------------------------------------------
# the command (CPU training of a tiny model)
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny model + an LSVQ (video_score) and a VisionReward (comparison) manifest in a scratch directory."""
    from vqinsight.data.manifest import main as manifest_main
    from vqinsight.data.synthetic import generate_dataset
    from vqinsight.models.tiny import build_tiny

    root = tmp_path_factory.mktemp("sft")
    counts = {"lsvq": {"train": 12, "test": 6, "test_1080p": 1, "invalid": 0}, "visionreward": {"vqa": 1, "pairs": 12}}
    for key, c in counts.items():
        generate_dataset(key, root / "raw" / key, counts=c, nframes=4, mix=MIX)
        args = ["--dataset", key, "--raw-dir", str(root / "raw" / key), "--out", str(root / f"{key}.parquet")]
        assert manifest_main([*args, "--quarantine", str(root / f"{key}.q.csv")]) == 0
    build_tiny(root / "tiny", seed=0)
    recipe = {
        "prompt_style": "short",
        "eval": {"n": 6, "batch_size": 6, "max_new_tokens": 12},
        "trainer": {
            "max_steps": 6,
            "per_device_train_batch_size": 8,
            "learning_rate": 3e-3,
            "lr_scheduler_type": "constant",
            "bf16": False,
            "activation_checkpointing": False,
            "save_steps": 3,
            "logging_steps": 1,
            "dataloader_num_workers": 0,
        },
    }
    (root / "sft.yaml").write_text(yaml.safe_dump(recipe))
    return root


def _cmd(world: Path, out: Path, manifests: list[str], model: Path | None = None) -> list[str]:
    media = ["--cache-dir", str(world / "cache"), "--nframes", "4", "--max-pixels", "4704", "--min-pixels", "784"]
    return [
        *(sys.executable, "-m", "vqinsight.baselines.sft", "--recipe", str(world / "sft.yaml")),
        *("--model", str(model or world / "tiny"), "--manifests", *manifests),
        *("--tasks", "video_score", "comparison", "--eval-manifests", str(world / "lsvq.parquet")),
        *("--output-dir", str(out / "model"), "--checkpoint-dir", str(out / "checkpoints")),
        *("--seed", "0", "--threads", "1", *media),
    ]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def _losses(model_dir: Path) -> dict[int, float]:
    lines = (model_dir / "curves.csv").read_text().splitlines()
    col = lines[0].split(",").index("loss")
    return {int(x.split(",")[0]): float(x.split(",")[col]) for x in lines[1:] if x.split(",")[col]}


@pytest.mark.slow
def test_sft_trains_on_video_tasks_and_resumes_from_the_newest_complete_checkpoint(world, tmp_path):
    out = tmp_path / "run"
    cmd = _cmd(world, out, [str(world / "lsvq.parquet"), str(world / "visionreward.parquet")])
    first = _run(cmd)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    model = out / "model"
    assert (model / "model.safetensors").exists() and (model / "meta.json").exists()
    losses = _losses(model)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(v) for v in losses.values()) and losses[6] < losses[1], losses
    result = json.loads((model / "eval.json").read_text())
    assert result["global_step"] == 6 and result["resumed_from"] is None
    assert result["before"]["video_score"]["n"] == 6 and "srcc" in result["after"]["video_score"]
    assert json.loads((model / "meta.json").read_text())["train_rows"] == 12 + _decisive_pairs(world)

    # A kill after checkpoint-3 (checkpoint-6 and the model never written): the rerun continues from step 3.
    shutil.rmtree(model)
    shutil.rmtree(out / "checkpoints" / "checkpoint-6")
    second = _run(cmd)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming from" in second.stderr
    result = json.loads((model / "eval.json").read_text())
    assert Path(result["resumed_from"]).name == "checkpoint-3" and result["global_step"] == 6
    resumed = _losses(model)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]  # the history before the kill survives
    assert (model / "model.safetensors").exists()
    # ... from the checkpoint's weights: steps 4-6 repeat the first run's losses (same machine, same data order).
    # Resuming under the checkpoint's own key names once loaded none of them and continued from the base model.
    assert "loaded the model weights of" in second.stderr
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(losses[step], rel=0.02), (step, resumed, losses)


def _decisive_pairs(world: Path) -> int:
    """Training comparison rows with an A/B label (ties are dropped, as for GRPO)."""
    import polars as pl

    df = pl.read_parquet(world / "visionreward.parquet")
    return df.filter((pl.col("task") == "comparison") & pl.col("gt_choice").is_in(["A", "B"])).height


@pytest.mark.slow
def test_missing_manifest_and_base_model_are_clear_errors(world, tmp_path):
    p = _run(_cmd(world, tmp_path / "x", [str(tmp_path / "nope.parquet")]))
    assert p.returncode == 2 and "nope.parquet: data manifest not found" in p.stderr
    p = _run(_cmd(world, tmp_path / "x", [str(world / "lsvq.parquet")], model=tmp_path / "no-model"))
    assert p.returncode == 2 and "no-model: base model directory not found" in p.stderr
