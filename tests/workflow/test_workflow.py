"""The workflow as a user runs it: lint, config validation, the DAG of both configs, and the demo end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from vqinsight.data.manifest import load_manifest
from vqinsight.data.registry import DATASET_KEYS

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def smk(*args: str, cwd: Path = ROOT, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    p = subprocess.run(
        [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-d", str(cwd), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if check and p.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
        )
    return p


def job_counts(out: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry run."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Job stats"))
    counts = {}
    for line in lines[start + 3 :]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def test_lint_is_clean():
    p = smk("--lint", cwd=ROOT)
    assert "Congratulations" in p.stdout + p.stderr


def test_snakefmt_is_clean():
    p = subprocess.run(
        [str(Path(sys.executable).with_name("snakefmt")), "--check", "Snakefile", "rules"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_paper_dry_run_lists_a_download_and_manifest_job_per_dataset(tmp_path):
    p = smk("-n", "-p", cwd=tmp_path)
    counts = job_counts(p.stdout)
    assert counts["download"] == len(DATASET_KEYS) and counts["manifest"] == len(DATASET_KEYS)
    for key in DATASET_KEYS:
        assert f"--dataset {key} " in p.stdout
        assert f"results/paper/manifests/{key}.parquet" in p.stdout
    assert "https://huggingface.co/datasets/zhiyuanyou/Data-DeQA-Score" in p.stdout


def test_demo_config_does_not_inherit_paper_urls(tmp_path):
    p = smk("-n", "-p", "--configfile", str(ROOT / "config" / "demo.yaml"), cwd=tmp_path)
    assert job_counts(p.stdout)["download"] == len(DATASET_KEYS)
    assert "huggingface.co" not in p.stdout and '"source": "synthetic"' in p.stdout


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        (lambda c: c["data"].update(nframe=8), "data: Additional properties are not allowed ('nframe'"),  # typo
        (lambda c: c["data"].update(reader="opencv"), "data.reader: 'opencv' is not one of"),
        (lambda c: c["datasets"]["koniq"].update(source="ftp"), "datasets.koniq.source: 'ftp'"),
        (lambda c: c["datasets"].update(konik={"source": "local"}), "('konik' was unexpected)"),
        (lambda c: c["model"].pop("base"), "model: 'base' is a required property"),
        (
            lambda c: c["grpo"]["stage2"]["task_models"].update(x={"tasks": ["dance"], "datasets": ["lsvq"]}),
            "grpo.stage2.task_models.x.tasks.0: 'dance'",
        ),
    ],
)
def test_bad_config_is_rejected_naming_the_key(tmp_path, patch, needle):
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    patch(cfg)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    p = smk("-n", "--configfile", str(bad), cwd=tmp_path, check=False)
    assert p.returncode != 0
    assert needle in p.stdout + p.stderr


@pytest.mark.slow
def test_demo_builds_every_manifest_then_has_nothing_to_do(tmp_path):
    """`make demo` in miniature: the demo DAG in a scratch working directory, then a no-op rerun."""
    smk("--cores", "2", "--configfile", str(ROOT / "config" / "demo.yaml"), cwd=tmp_path, timeout=1800)
    for key in DATASET_KEYS:
        df = load_manifest(tmp_path / "results/demo/manifests" / f"{key}.parquet", scale=(1.0, 5.0))
        assert df.height > 0, key
        quarantine = pl.read_csv(tmp_path / "results/demo/quarantine" / f"{key}.csv")
        assert quarantine.height == 0, f"{key}: clean synthetic data was quarantined:\n{quarantine}"
        assert (tmp_path / "results/demo/manifests" / f"{key}.meta.json").is_file()
    again = smk("-n", "--configfile", str(ROOT / "config" / "demo.yaml"), cwd=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr
    shutil.rmtree(tmp_path / "results", ignore_errors=True)


def test_ruff_is_clean():
    ruff = str(Path(sys.executable).with_name("ruff"))
    for args in (["check", "."], ["format", "--check", "."]):
        p = subprocess.run([ruff, *args], cwd=ROOT, capture_output=True, text=True, check=False)
        assert p.returncode == 0, p.stdout + p.stderr
