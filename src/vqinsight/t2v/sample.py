"""Sample N videos per prompt from a generator directory, resumably, with seeds derived from (seed, round, id, index).

    python -m vqinsight.t2v.sample --model results/demo/stage3/generators/g0 \\
        --prompts results/demo/stage3/prompts/train.jsonl --n 4 --round 0 --seed 0 \\
        --out results/demo/stage3/samples/g0/train/shard0 --shard 0 --num-shards 2 [--batch-size 4] \\
        [--threads 8] [--limit 10]

PROMPTS.jsonl has one ``{"prompt_id": str, "prompt": str}`` per line; shard I of K takes ``prompts[I::K]`` (after
``--limit``). Video ``index`` of a prompt is written to ``<out>/<prompt_id>/<index:02d>.mp4`` at the generator's
fps, with seed ``derive_seed(seed, round, prompt_id, index)``, so a video does not depend on the sharding, the
batch size or the other prompts. At the end ``<out>/index.jsonl`` lists every video of the shard, one line
``{"prompt_id", "prompt", "index", "seed", "path"}`` sorted by (prompt_id, index), with provenance in
``<out>/index.meta.json``.

**Resume.** Videos are written atomically (temporary name, then rename), so the mp4s that exist are complete and a
rerun samples only the missing ones. ``<out>/sampling.json`` records what the videos depend on (a content hash of
the generator directory, the sampling settings, seed, round, and each prompt's text); on a rerun with a different
generator or settings every existing video is deleted first, and a prompt whose text changed loses its videos.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..jsonl import iter_objects
from ..provenance import atomic_write_json, atomic_write_text, write_meta
from ..video import write_video
from .model import CONFIG_NAME, GeneratorConfig, check_layout, load_generator

log = logging.getLogger("vqinsight.t2v.sample")

SETTINGS_NAME = "sampling.json"
INDEX_NAME = "index.jsonl"
TORCH_SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes [-2**63, 2**64 - 1]; keep seeds non-negative int64


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    prompt: str


def derive_seed(seed: int, round: int, prompt_id: str, index: int) -> int:
    """First 8 bytes of sha256("{seed}|{round}|{prompt_id}|{index}"), big-endian, masked to 63 bits.

    The result is a non-negative int64, which torch.Generator.manual_seed accepts as is (and numpy/JSON readers
    keep exactly)."""
    digest = hashlib.sha256(f"{seed}|{round}|{prompt_id}|{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & TORCH_SEED_MAX


def read_prompts(path: str | Path) -> list[Prompt]:
    """The prompts of a PROMPTS.jsonl file, in file order; ValueError naming the file and line on bad input."""
    path = Path(path)
    out: list[Prompt] = []
    seen: dict[str, int] = {}
    for where, rec in iter_objects(path):
        lineno = int(where.rsplit(":", 1)[1])
        for key in ("prompt_id", "prompt"):
            if key not in rec:
                raise ValueError(f"{where}: missing field {key!r}")
            if not isinstance(rec[key], str) or not rec[key].strip():
                raise ValueError(f"{where}: field {key!r} must be a non-empty string, got {rec[key]!r:.80}")
        pid = rec["prompt_id"]
        if pid in (".", "..") or "/" in pid or "\\" in pid or pid.startswith(".") or "\0" in pid:
            raise ValueError(f"{where}: prompt_id {pid!r} cannot be used as a directory name")
        if pid in seen:
            raise ValueError(f"{where}: duplicate prompt_id {pid!r} (first on line {seen[pid]})")
        seen[pid] = lineno
        out.append(Prompt(pid, rec["prompt"]))
    if not out:
        raise ValueError(f"{path}: no prompts")
    return out


def video_path(out: Path, prompt_id: str, index: int) -> Path:
    return out / prompt_id / f"{index:02d}.mp4"


def model_fingerprint(model: Path) -> str:
    """sha256 over the generator directory's files (relative path, size, content); provenance files excluded."""
    h = hashlib.sha256()
    for f in sorted(p for p in model.rglob("*") if p.is_file() and not p.name.endswith(".meta.json")):
        h.update(f"{f.relative_to(model).as_posix()}\0{f.stat().st_size}\0".encode())
        with f.open("rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()


def reconcile(out: Path, settings: dict[str, Any], prompts: dict[str, str]) -> int:
    """Delete the videos in `out` that `settings` and `prompts` no longer describe, then record them.

    No record (videos of unknown origin) or different settings: every ``*/NN.mp4`` goes; same settings: only the
    videos of prompts whose text changed. Returns the number of files deleted."""

    path = out / SETTINGS_NAME
    old: dict[str, Any] | None = None
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            log.warning("%s: unreadable, treating the existing videos as stale", path)
    if old is None or old.get("settings") != settings:
        if old is not None:
            log.warning("%s: the generator or the sampling settings changed, deleting the existing videos", path)
        stale = sorted(out.glob("*/[0-9][0-9].mp4"))
        recorded: dict[str, str] = {}
    else:
        recorded = dict(old.get("prompts", {}))
        stale = []
        for pid, text in prompts.items():
            if recorded.get(pid, text) != text:
                log.warning("prompt %r has a new text, deleting its videos", pid)
                stale += sorted((out / pid).glob("[0-9][0-9].mp4"))
    for f in stale:
        f.unlink()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"settings": settings, "prompts": dict(sorted((recorded | prompts).items()))})
    return len(stale)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, type=Path, help="generator directory (vqinsight.t2v.model)")
    ap.add_argument("--prompts", required=True, type=Path, help='JSONL of {"prompt_id", "prompt"}')
    ap.add_argument("--n", required=True, type=int, help="videos per prompt")
    ap.add_argument("--round", required=True, type=int, help="stage-3 round (enters the seeds)")
    ap.add_argument("--seed", required=True, type=int, help="run seed (enters the seeds)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--shard", type=int, default=0)
    ap.add_argument("--num-shards", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--limit", type=int, default=None, help="only the first P prompts of the file")
    a = ap.parse_args(argv)
    if not 0 <= a.shard < a.num_shards:
        ap.error(f"--shard must be in [0, --num-shards={a.num_shards}), got {a.shard}")
    for name in ("n", "batch_size"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.n > 100:
        ap.error(f"--n must be <= 100 (file names are two digits), got {a.n}")
    if a.limit is not None and a.limit < 1:
        ap.error(f"--limit must be >= 1, got {a.limit}")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not a.prompts.is_file():
        log.error("%s: prompts file not found", a.prompts)
        return 2

    try:
        c = GeneratorConfig.read(check_layout(a.model) / CONFIG_NAME)
        prompts = read_prompts(a.prompts)
    except (FileNotFoundError, ValueError) as e:
        log.error("%s", e)
        return 2

    import torch
    from tqdm import tqdm

    from .pipeline import sample_videos

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.limit is not None:
        prompts = prompts[: a.limit]
    shard = prompts[a.shard :: a.num_shards]
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    jobs = [(p, i, derive_seed(a.seed, a.round, p.prompt_id, i)) for p in shard for i in range(a.n)]
    jobs.sort(key=lambda j: (j[0].prompt_id, j[1]))

    settings = {
        "model_sha256": model_fingerprint(a.model),
        "seed": a.seed,
        "round": a.round,
        "steps": c.steps,
        "guidance": c.guidance,
        "num_frames": c.num_frames,
        "height": c.height,
        "width": c.width,
        "fps": c.fps,
        "lcm_origin_steps": c.lcm_origin_steps,
        "dtype": str(dtype).removeprefix("torch."),
    }
    deleted = reconcile(a.out, settings, {p.prompt_id: p.prompt for p in shard})
    if deleted:
        log.info("deleted %d stale video(s) in %s", deleted, a.out)
    todo = [j for j in jobs if not video_path(a.out, j[0].prompt_id, j[1]).is_file()]
    log.info(
        "shard %d/%d: %d prompts x %d = %d videos, %d already in %s; %s %s, %d steps, guidance %g",
        a.shard,
        a.num_shards,
        len(shard),
        a.n,
        len(jobs),
        len(jobs) - len(todo),
        a.out,
        device,
        settings["dtype"],
        c.steps,
        c.guidance,
    )
    gen = load_generator(a.model, device=device, dtype=dtype) if todo else None
    with tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=f"sample {a.out.name}", unit="video") as bar:
        for s in range(0, len(todo), a.batch_size):
            batch = todo[s : s + a.batch_size]
            videos = sample_videos(gen, [p.prompt for p, _, _ in batch], [seed for _, _, seed in batch])
            for (p, i, _), frames in zip(batch, videos, strict=True):
                write_video(video_path(a.out, p.prompt_id, i), frames, fps=c.fps)
            bar.update(len(batch))

    lines = [
        json.dumps(
            {
                "prompt_id": p.prompt_id,
                "prompt": p.prompt,
                "index": i,
                "seed": seed,
                "path": str(video_path(a.out, p.prompt_id, i)),
            },
            ensure_ascii=False,
        )
        for p, i, seed in jobs
    ]
    missing = [j for j in jobs if not video_path(a.out, j[0].prompt_id, j[1]).is_file()]
    if missing:
        p, i, _ = missing[0]
        log.error("%d video(s) missing after sampling, e.g. %s", len(missing), video_path(a.out, p.prompt_id, i))
        return 1
    atomic_write_text(a.out / INDEX_NAME, "".join(line + "\n" for line in lines))
    write_meta(
        a.out / "index.meta.json",
        {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
        sampling=settings,
        videos=len(jobs),
        sampled=len(todo),
        torch_device=device,
    )
    log.info("wrote %d videos (%d new) and %s", len(jobs), len(todo), a.out / INDEX_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
