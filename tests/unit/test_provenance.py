"""Provenance records name the code that ran, wherever the job's working directory is."""

from __future__ import annotations

import os
import stat
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


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask_like_an_ordinary_new_file(tmp_path, umask, mode):
    """Results are readable by whoever the umask allows (0644 under the usual 022), not mkstemp's private 0600."""
    from vqinsight.provenance import atomic_write_json, process_umask

    old = os.umask(umask)
    try:
        assert process_umask() == umask
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        provenance.write_meta(tmp_path / "m.meta.json")
        (tmp_path / "plain.txt").write_text("x")  # what open() gives under this umask
    finally:
        os.umask(old)
    for name in ("a.json", "m.meta.json", "plain.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
