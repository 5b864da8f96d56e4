"""scripts/install-cluster.sh picks the torch build the NVIDIA driver can run (dry runs with a stub nvidia-smi)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "install-cluster.sh"
HEADER = "| NVIDIA-SMI 570.86.15    Driver Version: 570.86.15    CUDA Version: {cuda}     |"


def _pin(name: str) -> str:
    return re.search(rf'"{name}==([^";]+)"', (ROOT / "pyproject.toml").read_text())[1]


def _dry_run(tmp_path: Path, cuda: str | None, **env: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    if cuda is not None:
        smi.write_text(f"#!/bin/sh\necho '{HEADER.format(cuda=cuda)}'\n")
        smi.chmod(0o755)
    path = f"{bin_dir}:/usr/bin:/bin"
    full = {"PATH": path, "HOME": os.environ.get("HOME", "/root"), "VENV": str(tmp_path / "venv"), **env}
    return subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, env=full, timeout=60)


@pytest.mark.parametrize(
    ("cuda", "build"), [("13.0", None), ("13.1", None), ("12.9", "cu128"), ("12.8", "cu128"), ("12.6", "cu126")]
)
def test_the_build_follows_the_drivers_cuda_version(tmp_path, cuda, build):
    p = _dry_run(tmp_path, cuda)
    assert p.returncode == 0, p.stdout + p.stderr
    torch_line = next(line for line in p.stdout.splitlines() if f"torch=={_pin('torch')}" in line)
    assert f"torchvision=={_pin('torchvision')}" in torch_line
    if build is None:  # PyPI's torch is the CUDA 13.0 build
        assert "--index-url" not in torch_line
    else:
        assert torch_line.endswith(f"--index-url https://download.pytorch.org/whl/{build}")
    lines = p.stdout.splitlines()
    assert lines.index(torch_line) < next(i for i, line in enumerate(lines) if "-e .[paper]" in line), "torch first"


def test_too_old_driver_and_no_driver_stop_with_the_reason(tmp_path):
    old = _dry_run(tmp_path, "12.4")
    assert old.returncode == 2 and "no build for CUDA 12.4" in old.stderr and "update the NVIDIA driver" in old.stderr
    none = _dry_run(tmp_path / "x", None)
    assert none.returncode == 2 and "CUDA_VERSION=" in none.stderr
    forced = _dry_run(tmp_path / "y", None, TORCH_CUDA="cu126")
    assert forced.returncode == 0 and "whl/cu126" in forced.stdout


def test_the_paper_extra_holds_deepspeed_and_no_unused_pins():
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^paper = \["deepspeed==[\d.]+"\]', text, flags=re.M)
    assert "ffmpeg-python" not in text  # never imported: videos are written through imageio-ffmpeg and PyAV
