"""Download one model checkpoint from the Hugging Face Hub into a local directory (the `models` target).

    python -m vqinsight.models.fetch --repo Qwen/Qwen2.5-VL-7B-Instruct \\
        --out resources/models/Qwen2.5-VL-7B-Instruct [--revision main] [--allow '*.safetensors' ...]

Runs where Snakemake runs (a local rule: the login node, which reaches the network); the GPU jobs then read the
directory with the hub offline (HF_HUB_OFFLINE=1). The files go to `<partial-dir>/<name>` first, where an
interrupted download resumes, and the directory is renamed to `--out` once complete, so `--out` is either absent or
whole. Gated repositories need `huggingface-cli login` (or HF_TOKEN) first; the error says which repository.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

from ..provenance import write_meta

log = logging.getLogger("vqinsight.models.fetch")


def fetch(repo: str, out: Path, revision: str | None = None, allow: list[str] | None = None,
          partial_dir: Path | None = None) -> Path:  # fmt: skip
    """snapshot_download of `repo` into `partial_dir/<out name>`, then renamed to `out`; returns `out`."""
    from huggingface_hub import snapshot_download

    staging = (partial_dir or out.parent / ".partial") / out.name
    staging.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s%s into %s", repo, f"@{revision}" if revision else "", staging)
    snapshot_download(repo, revision=revision, local_dir=staging, allow_patterns=allow or None)
    shutil.rmtree(staging / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping for resuming
    files = [p for p in staging.rglob("*") if p.is_file()]
    if not files:
        raise RuntimeError(f"{repo}: no files downloaded (allow patterns {allow})")
    size = sum(p.stat().st_size for p in files)
    write_meta(staging / "fetch.meta.json", {"repo": repo, "revision": revision, "allow": allow})
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, out)
    log.info("%s: %d files, %.2f GB in %s", repo, len(files), size / 1e9, out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", required=True, help="hub repository id, e.g. Qwen/Qwen2.5-VL-7B-Instruct")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--revision", default=None)
    ap.add_argument("--allow", nargs="*", default=None, help="only files matching these glob patterns")
    ap.add_argument("--partial-dir", type=Path, default=None)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        log.error("HF_HUB_OFFLINE is set: this command downloads; run it where the hub is reachable")
        return 2
    try:
        fetch(a.repo, a.out, a.revision, a.allow, a.partial_dir)
    except Exception as e:  # network, authentication, a missing repo: one line naming the repository
        log.error("%s: %s: %s (gated repositories need `huggingface-cli login` first)", a.repo, type(e).__name__, e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
