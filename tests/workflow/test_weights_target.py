"""Weights: `snakemake models` downloads every configured checkpoint on the login node (a local rule); the jobs that
load one take its directory as an input and run with the hub offline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from vqinsight.models import fetch as fetch_mod

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def _dry(*args: str, cwd: Path = ROOT) -> tuple[int, str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    p = subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-d", str(cwd), "-n", "-p", *args],
                       capture_output=True, text=True, env=env, timeout=600, check=False)  # fmt: skip
    return p.returncode, p.stdout + p.stderr


def _jobs(out: str) -> list[tuple[str, str, str]]:
    """(rule, input line, shell command) of every job of a dry run."""
    jobs = []
    for block in re.split(r"^\[.*\]\n(?=(?:local)?rule \w+:$)", out, flags=re.M)[1:]:
        inp = re.search(r"^\s+input: (.*)$", block, flags=re.M)
        cmd = re.search(r"^Shell command: (.*)$", block, flags=re.M)
        jobs.append((block.split()[1].rstrip(":"), inp[1] if inp else "", cmd[1] if cmd else ""))
    return jobs


def test_models_target_fetches_every_configured_checkpoint_with_the_hub_online():
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())["weights"]
    rc, out = _dry("models")
    assert rc == 0, out[-3000:]
    cmds = [c for rule, _, c in _jobs(out) if rule == "model_weights"]
    assert len(cmds) == len(cfg["hub"]) >= 6
    for name, spec in cfg["hub"].items():
        cmd = next(c for c in cmds if f"--out {cfg['dir']}/{name} " in c)
        assert cmd.startswith("HF_HUB_OFFLINE=0 python -m vqinsight.models.fetch") and f"--repo {spec['repo']} " in cmd
        for pattern in spec.get("allow", []):
            assert f"--allow {pattern}" in cmd
    assert "localrules:\n    model_weights,\n    models," in (ROOT / "rules/models.smk").read_text()


def test_jobs_take_the_downloaded_directories_as_inputs():
    rc, out = _dry("all")
    assert rc == 0, out[-3000:]
    jobs = _jobs(out)

    def inputs(rule: str, needle: str = "") -> str:
        return next(i for r, i, c in jobs if r == rule and needle in c)

    base = "resources/models/Qwen2.5-VL-7B-Instruct"
    assert base in inputs("grpo_stage1") and base in inputs("sft_baseline")
    assert base in inputs("judge_predict", f"--model {base} ")  # the zero-shot baseline
    assert "resources/models/Q-Insight" in inputs("judge_predict", "Q-Insight/score_degradation")
    assert "resources/models/clip-vit-base-patch16" in inputs("clip_predict")
    t2v = inputs("t2v_base")
    assert "resources/models/text-to-video-ms-1.7b" in t2v and "resources/models/T2V-Turbo-MS" in t2v
    assert any(r == "model_weights" for r, _, _ in jobs), "`all` fetches missing checkpoints first"


def test_a_hub_id_in_the_config_is_rejected_with_the_fix(tmp_path):
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["model"]["base"] = "Qwen/Qwen2.5-VL-3B-Instruct"
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    rc, out = _dry("--configfile", str(path), cwd=ROOT)
    assert rc != 0 and str(path) in out
    assert "model.base: 'Qwen/Qwen2.5-VL-3B-Instruct' looks like a hub id" in out
    assert "Qwen2.5-VL-3B-Instruct: {repo: Qwen/Qwen2.5-VL-3B-Instruct}" in out


def test_fetch_stages_then_renames_and_refuses_offline(tmp_path, monkeypatch):
    calls = []

    def fake_snapshot(repo, revision=None, local_dir=None, allow_patterns=None):
        calls.append((repo, revision, Path(local_dir), allow_patterns))
        (Path(local_dir) / "sub").mkdir(parents=True, exist_ok=True)
        (Path(local_dir) / "sub" / "model.safetensors").write_bytes(b"x" * 10)
        (Path(local_dir) / ".cache").mkdir(exist_ok=True)
        return str(local_dir)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    out = tmp_path / "models" / "Q-Insight"
    assert fetch_mod.main(["--repo", "ByteDance/Q-Insight", "--out", str(out), "--allow", "*.safetensors"]) == 0
    assert calls == [("ByteDance/Q-Insight", None, tmp_path / "models/.partial/Q-Insight", ["*.safetensors"])]
    assert (out / "sub/model.safetensors").is_file() and (out / "fetch.meta.json").is_file()
    assert not (out / ".cache").exists() and not (tmp_path / "models/.partial/Q-Insight").exists()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert fetch_mod.main(["--repo", "a/b", "--out", str(tmp_path / "x")]) == 2 and not calls[1:]
