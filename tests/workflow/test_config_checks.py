"""Mistakes in the config or a recipe fail the dry run at DAG start, in seconds, naming the file, the key and the
allowed values: none may surface hours later in a GPU job or drop a table row silently."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from vqinsight.config import ConfigError, check_trainer_args, coerce_value, scheduler_names, trainer_fields

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
DEMO = ROOT / "config" / "demo.yaml"


def _dry_run(tmp_path: Path, *args: str) -> tuple[int, str, float]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    t0 = time.monotonic()
    p = subprocess.run(
        [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "-n", *args],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    return p.returncode, p.stdout + p.stderr, time.monotonic() - t0


def _recipe(tmp_path: Path, name: str, patch) -> str:
    recipe = yaml.safe_load((ROOT / "config" / "recipes" / name).read_text())
    patch(recipe)
    path = tmp_path / f"bad_{name}"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return str(path)


def _stage2(tmp_path, patch):
    return lambda c: c["grpo"]["stage2"].update(recipe=_recipe(tmp_path, "demo_stage2.yaml", patch))


def _stage1(tmp_path, patch):
    return lambda c: c["grpo"]["stage1"].update(recipe=_recipe(tmp_path, "demo_stage1.yaml", patch))


# (config patch (given tmp_path), the file the message must name ("cfg" = the config file), needles)
CASES = {
    "benchmark task_model typo drops Table 2/4 rows": (
        lambda t: lambda c: c["eval"]["benchmarks"]["monetbench"].update(task_model="compp"),
        "cfg", ["eval.benchmarks.monetbench.task_model: 'compp' is not a stage-2 task model", "did you mean comp"],
    ),
    "benchmark dataset typo": (
        lambda t: lambda c: c["eval"]["benchmarks"]["konvid"].update(dataset="konvidd"),
        "cfg", ["eval.benchmarks.konvid.dataset: 'konvidd' is not a dataset", "did you mean konvid"],
    ),
    "benchmark split typo": (
        lambda t: lambda c: c["eval"]["benchmarks"]["lsvq_1080p"].update(split="test1080p"),
        "cfg", ["eval.benchmarks.lsvq_1080p.split: 'test1080p' is not a split of lsvq", "test_1080p"],
    ),
    "baseline lists an unknown benchmark": (
        lambda t: lambda c: c["eval"]["baselines"]["clip_iqa"]["benchmarks"].append("lsvq_tset"),
        "cfg", ["eval.baselines.clip_iqa.benchmarks: 'lsvq_tset' is not a benchmark", "lsvq_test"],
    ),
    "ablation names an unknown task model": (
        lambda t: lambda c: c["eval"]["ablations"]["no_length"].update(task_models=["aigc"]),
        "cfg", ["eval.ablations.no_length.task_models: 'aigc'", "aigcvideo"],
    ),
    "stage-3 judge task model": (
        lambda t: lambda c: c["stage3"]["judge"].update(task_model="compare"),
        "cfg", ["stage3.judge.task_model: 'compare' is not a stage-2 task model", "comp"],
    ),
    "stage-3 prompt dataset": (
        lambda t: lambda c: c["stage3"]["prompts"].update(dataset="vidprm"),
        "cfg", ["stage3.prompts.dataset: 'vidprm' is not a dataset", "vidprom"],
    ),
    "missing accelerate file": (
        lambda t: lambda c: c["grpo"].update(accelerate="config/accelerate/zero4.yaml"),
        "cfg", ["grpo.accelerate: file config/accelerate/zero4.yaml not found"],
    ),
    "score scale reversed": (
        lambda t: lambda c: c["data"].update(score_scale=[5, 1]),
        "cfg", ["data.score_scale: [5, 1] must be [low, high] with low < high"],
    ),
    "learning rate that is not a number": (
        lambda t: _stage2(t, lambda r: r["trainer"].update(learning_rate="fast")),
        "bad_demo_stage2.yaml", ["trainer.learning_rate: 'fast' is not a number (expected float)"],
    ),
    "trainer argument typo": (
        lambda t: _stage2(t, lambda r: r["trainer"].update(save_step=50)),
        "bad_demo_stage2.yaml", ["trainer.save_step: not an argument of TRL's GRPOConfig", "save_steps"],
    ),
    # (stage 1: the demo's stage-2 task models each set their own scheduler, which overrides the shared recipe's)
    "scheduler name typo": (
        lambda t: _stage1(t, lambda r: r["trainer"].update(lr_scheduler_type="cosin")),
        "bad_demo_stage1.yaml", ["trainer.lr_scheduler_type: 'cosin' is not a scheduler", "cosine, cosine_with"],
    ),
    "reward name typo": (
        lambda t: _stage2(t, lambda r: r["rewards"].update(lenght=1.0)),
        "bad_demo_stage2.yaml", ["rewards:", "lenght", "length"],
    ),
    "unknown recipe key": (
        lambda t: _stage2(t, lambda r: r.update(prompt_stlye="full")),
        "bad_demo_stage2.yaml", ["unknown recipe key(s) ['prompt_stlye']", "prompt_style"],
    ),
    "typo in the stage-3 refinement override": (
        lambda t: lambda c: c["stage3"]["refine"].update(recipe={"trainer": {"save_step": 10}}),
        "demo_stage2.yaml", ["stage3.refine.recipe", "trainer.save_step", "save_steps"],
    ),
    "typo in an SFT recipe": (
        lambda t: lambda c: c["eval"]["baselines"]["sft"].update(
            recipe=_recipe(t, "demo_sft.yaml", lambda r: r["trainer"].update(lr_scheduler_type="cosin"))
        ),
        "bad_demo_sft.yaml", ["trainer.lr_scheduler_type: 'cosin'", "cosine"],
    ),
    "DPO learning rate that is not a number": (
        lambda t: lambda c: c["stage3"]["dpo"].update(
            recipe=_recipe(t, "demo_dpo.yaml", lambda r: r.update(learning_rate="fast"))
        ),
        "bad_demo_dpo.yaml", ["learning_rate must be a number, got 'fast'"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_each_mistake_fails_the_dry_run_naming_file_key_and_allowed_values(tmp_path, case):
    make_patch, file_, needles = CASES[case]
    cfg = yaml.safe_load(DEMO.read_text())
    make_patch(tmp_path)(cfg)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    rc, out, seconds = _dry_run(tmp_path, "--configfile", str(path))
    assert rc != 0, out[-2000:]
    assert (str(path) if file_ == "cfg" else file_) in out, out[-2000:]
    for needle in needles:
        assert needle in out, (needle, out[-2000:])
    assert seconds < 60, f"the mistake surfaced after {seconds:.0f} s"


def test_yaml_1_1_string_numbers_are_coerced_in_the_dry_run_and_the_job(tmp_path):
    """`learning_rate: 1e-3` is a string to YAML 1.1 (PyYAML): it passes the dry run and reaches TRL as a float."""
    from vqinsight.grpo.train import Recipe

    text = (ROOT / "config/recipes/demo_stage2.yaml").read_text()
    text = "\n".join(
        "  learning_rate: 1e-3" if line.strip().startswith("learning_rate:") else line for line in text.splitlines()
    )
    recipe_path = tmp_path / "stage2.yaml"
    recipe_path.write_text(text + "\n")
    assert yaml.safe_load(recipe_path.read_text())["trainer"]["learning_rate"] == "1e-3"
    assert Recipe.load(recipe_path).trainer["learning_rate"] == 1e-3
    cfg = yaml.safe_load(DEMO.read_text())
    cfg["grpo"]["stage2"]["recipe"] = str(recipe_path)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    rc, out, _ = _dry_run(tmp_path, "--configfile", str(tmp_path / "cfg.yaml"))
    assert rc == 0, out[-2000:]


def test_config_override_errors_name_the_override_and_the_overlay_alternative(tmp_path):
    rc, out, _ = _dry_run(tmp_path, "--config", 'grpo={"gpus": 4}')
    assert rc != 0
    assert "--config grpo" in out and "replaces" in out and "--configfile config/config.yaml my-changes.yaml" in out
    overlay = tmp_path / "gpus.yaml"
    overlay.write_text("grpo: {gpus: 4}\n")
    rc, out, _ = _dry_run(tmp_path, "-p", "--configfile", str(ROOT / "config/config.yaml"), str(overlay))
    assert rc == 0, out[-2000:]
    assert "--num_processes 4" in out, "the overlay changes the one nested value"


def test_trainer_fields_read_from_source_match_trl():
    """The ast-read fields are exactly the dataclass fields of the installed TRL configs."""
    from dataclasses import fields

    from transformers.trainer_utils import SchedulerType
    from trl import GRPOConfig, SFTConfig

    assert set(trainer_fields("GRPOConfig")) == {f.name for f in fields(GRPOConfig)}
    assert set(trainer_fields("SFTConfig")) == {f.name for f in fields(SFTConfig)}
    assert set(scheduler_names()) == {s.value for s in SchedulerType}


def test_coercion_keeps_names_and_rejects_words_where_numbers_are_required():
    assert coerce_value("1e-3", "float", "k") == 1e-3 and coerce_value("8", "int | None", "k") == 8
    assert coerce_value("0.5", "float", "k") == 0.5 and coerce_value(3, "float", "k") == 3
    assert coerce_value("cosine", "SchedulerType | str", "k") == "cosine"
    assert coerce_value("steps", "float | str", "k") == "steps"
    with pytest.raises(ConfigError, match="r.yaml: trainer.x: 'abc' is not a number"):
        coerce_value("abc", "int", "r.yaml: trainer.x")
    assert check_trainer_args({"save_steps": "50", "bf16": True}, "GRPOConfig", "r") == {
        "save_steps": 50.0,
        "bf16": True,
    }
