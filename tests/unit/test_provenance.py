"""Provenance records name the code that ran, wherever the job's working directory is."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vqinsight import provenance

SRC = Path(provenance.__file__).resolve().parent


def test_git_sha_is_the_code_repository_not_the_working_directory(tmp_path, monkeypatch):
    inside = subprocess.run(["git", "rev-parse", "HEAD"], cwd=SRC, capture_output=True, text=True, check=False)
    if inside.returncode != 0:
        pytest.skip("the package is not in a git checkout (installed from a wheel)")
    monkeypatch.chdir(tmp_path)  # like `snakemake -d <elsewhere>`: not a git repository
    sha = provenance.git_sha()
    assert sha is not None and sha.split("-")[0] == inside.stdout.strip()
    assert provenance.meta()["git_sha"] == sha
