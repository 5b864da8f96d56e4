"""A finished project moved or cloned to another path (same config, results moved with it) plans nothing to do, its
results are readable by the group under the usual umask, and its job logs show progress.

The finished DAG is the cheapest one with code inputs: the demo's KonViD download, manifest (the parser modules are
its inputs) and frame cache, on 8 videos, in a copy of the repository.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
TARGET = "results/demo/frames/konvid.json"


def _repo_files() -> list[str]:
    """The checkout's files as a clone would have them: tracked plus untracked, not ignored."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


def _copy_checkout(dest: Path, files: list[str]) -> None:
    """Copy the repository's files with fresh modification times, as `git clone` writes them."""
    for f in files:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / f, dest / f)


def _smk(project: Path, config: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    p = subprocess.run(
        [SNAKEMAKE, "--configfile", str(config), *args], cwd=project, capture_output=True, text=True, env=env,
        timeout=900, check=False, preexec_fn=lambda: os.umask(0o022),
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout + p.stderr


@pytest.mark.slow
def test_moved_and_recloned_project_plans_nothing_and_results_are_group_readable(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    cfg["datasets"]["konvid"]["synthetic"]["counts"] = {"test": 8}
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg))
    files = _repo_files()

    first = tmp_path / "a" / "vqinsight"
    _copy_checkout(first, files)
    _smk(first, config, "--cores", "2", TARGET)  # the project runs in its own root, as README says
    assert (first / TARGET).is_file()

    # the jobs' logs (files, not terminals) carry progress lines: done / total, rate, elapsed
    logs = first / "logs/demo/data"
    for log, pattern in (
        ("download_konvid.log", r"konvid: 8/8 file \(100\.0%\), [\d.]+ (file/s|s/file), elapsed"),
        ("manifest_konvid.log", r"check media: 8/8 file \(100\.0%\)"),
        ("frame_cache_konvid.log", r"frame cache: 8/8 video \(100\.0%\), [\d.]+ (video/s|s/video), elapsed"),
    ):
        assert re.search(pattern, (logs / log).read_text()), (log, (logs / log).read_text()[-2000:])

    # results under umask 022: every file group- and world-readable (atomic writes included)
    results = [p for p in (first / "results").rglob("*") if p.is_file()]
    assert any(p.name.endswith(".meta.json") for p in results)
    unreadable = [str(p) for p in results if stat.S_IMODE(p.stat().st_mode) & 0o044 != 0o044]
    assert not unreadable, unreadable

    # 1. moved (renamed folder, another parent): code, results and .snakemake records go together
    moved = tmp_path / "b" / "renamed-project"
    moved.parent.mkdir()
    shutil.move(first, moved)
    out = _smk(moved, config, "-n", TARGET)
    assert "Nothing to be done" in out, out[-3000:]

    # 2. re-cloned: the code files written again (new mtimes, same content), the results kept
    time.sleep(1.1)
    _copy_checkout(moved, files)
    out = _smk(moved, config, "-n", TARGET)
    assert "Nothing to be done" in out, out[-3000:]


def test_no_job_names_a_repository_file_by_its_absolute_path():
    """Code, recipes and accelerate configs are named relative to the working directory in every job of both
    configs (absolute paths would make a moved project rerun)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    for args in ([], ["--configfile", "config/demo.yaml"]):
        p = subprocess.run(
            [SNAKEMAKE, "-n", "-p", *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600,
            check=False,
        )  # fmt: skip
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        lines = [ln for ln in p.stdout.splitlines() if ln.lstrip().startswith(("input:", "Shell command:"))]
        assert lines and not [ln for ln in lines if str(ROOT) in ln], [ln for ln in lines if str(ROOT) in ln][:3]
