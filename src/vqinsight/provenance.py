"""Provenance: atomic writers and the meta.json that sits beside every output."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from .cpu_kernels import active_float_order

PACKAGES = (
    "vqinsight",
    "torch",
    "transformers",
    "trl",
    "diffusers",
    "accelerate",
    "snakemake",
    "polars",
    "numpy",
    "decord",
    "av",
)


def process_umask() -> int:
    """The process umask, read without changing it (Linux /proc), else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over `path`.

    The file gets the mode of an ordinary new file (0666 minus the umask: 0644 under the usual 022), not mkstemp's
    private 0600, so group members on shared storage can read the results."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~process_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def git_sha(cwd: str | os.PathLike | None = None) -> str | None:
    """The commit of the code that runs (``-dirty`` with uncommitted changes to tracked files), or None.

    By default the repository holding this package's source, not the working directory: Snakemake may run in any
    directory (``-d``), and the provenance is about the code.
    """
    if cwd is None:
        cwd = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=False)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def device_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "cpu_kernels": active_float_order(os.environ),
    }
    if "torch" in sys.modules:  # never import torch just for provenance
        torch = sys.modules["torch"]
        info["cuda"] = bool(torch.cuda.is_available())
        if info["cuda"]:
            info["gpu"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def meta(config: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The provenance record: resolved config subset, git SHA, package versions, device, command line."""
    return {
        "config": config or {},
        "git_sha": git_sha(),
        "packages": package_versions(),
        "device": device_info(),
        "argv": sys.argv,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    }


def write_meta(path: str | os.PathLike, config: dict[str, Any] | None = None, **extra: Any) -> None:
    atomic_write_json(path, meta(config, **extra))
