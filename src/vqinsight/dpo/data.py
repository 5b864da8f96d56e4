"""DPO training data: win/lose video pairs, VideoDPO's released pair format, and a cache of VAE latents.

Our pairs file is JSON Lines, one pair per line::

    {"prompt_id": "p0003", "prompt": "a red fox ...", "win": "videos/p0003_2.mp4", "lose": "videos/p0003_0.mp4"}

with an optional positive ``"weight"`` (default 1); other keys are kept. A relative video path is taken as given
(relative to the working directory, like Snakemake paths) when that file exists, otherwise relative to the pairs
file's directory.

VideoDPO (CIntellifusion/VideoDPO, ``data/video_data.py: TextVideoDPO``) ships ``<META>/pair.json``, a list of
``{"video1": winner_index, "video2": loser_index, "frame_caption"?: str, "score"?: float}`` indexing the items of
``<META>/metadata.json`` (``item["basic"]["clip_path"]``, ``item["misc"]["frame_caption"]``). Each pair is weighted
by its ``dupfactor = (0.72 / score) ** dupbeta``; ``dupbeta = 0`` (their ``configs/vc2_dpo``) is uniform weighting.
``python -m vqinsight.dpo.videodpo`` converts that to our JSONL so the trainer reads one format.

``LatentCache`` encodes each video once with the generator's VAE (``num_frames`` uniformly sampled frames at the
generator's size) and keeps the latents as ``.pt`` files, written atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..jsonl import iter_objects
from ..provenance import atomic_write_bytes, atomic_write_text
from ..t2v.model import encode_frames
from ..video import read_frames

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("prompt_id", "prompt", "win", "lose")
VIDEODPO_SCORE_REF = 0.72  # the numerator of VideoDPO's dupfactor


def _resolve_video(value: Any, base: Path, where: str, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: {key!r} must be a non-empty path string, got {value!r}")
    p = Path(value)
    if p.is_absolute():
        return p
    return p if p.exists() else base / p


def _weight(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{where}: 'weight' must be a positive finite number, got {value!r}")
    return float(value)


def _check_videos(pairs: list[dict[str, Any]], source: str) -> None:
    missing: dict[str, str] = {}
    for p in pairs:
        for key in ("win", "lose"):
            if not Path(p[key]).is_file():
                missing.setdefault(p[key], p["source"])
    if missing:
        shown = "; ".join(f"{v} (from {s})" for v, s in list(missing.items())[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileNotFoundError(f"{source}: {len(missing)} video file(s) not found: {shown}{more}")


def read_pairs(path: str | Path, check_files: bool = True) -> list[dict[str, Any]]:
    """Pairs of a pairs JSONL file (format in the module docstring), with absolute video paths and a weight.

    Each pair also gets ``"source": "<file>:<line>"``. Raises FileNotFoundError for a missing file (or missing
    videos, named, when ``check_files``), ValueError naming the file and line for anything malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pairs file not found")
    base = path.resolve().parent
    pairs: list[dict[str, Any]] = []
    for where, row in iter_objects(path):
        missing = [k for k in REQUIRED_KEYS if k not in row]
        if missing:
            raise ValueError(f"{where}: missing key(s) {missing}; a pair needs {list(REQUIRED_KEYS)}")
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise ValueError(f"{where}: 'prompt' must be a non-empty string, got {row['prompt']!r}")
        win = _resolve_video(row["win"], base, where, "win").resolve()
        lose = _resolve_video(row["lose"], base, where, "lose").resolve()
        if win == lose:
            raise ValueError(f"{where}: 'win' and 'lose' are the same video ({win})")
        pair = dict(row)
        pair.update(
            prompt_id=str(row["prompt_id"]),
            win=str(win),
            lose=str(lose),
            weight=_weight(row.get("weight", 1.0), where),
            source=where,
        )
        pairs.append(pair)
    if not pairs:
        raise ValueError(f"{path}: no pairs in the file")
    if check_files:
        _check_videos(pairs, str(path))
    return pairs


def _load_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: VideoDPO {what} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the VideoDPO {what} ({e})") from None


def _index(value: Any, n: int, where: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
        raise ValueError(f"{where}: {key!r} must be an index into metadata.json (0..{n - 1}), got {value!r}")
    return value


def read_videodpo(meta_dir: str | Path, dupbeta: float = 0.0, check_files: bool = True) -> list[dict[str, Any]]:
    """Pairs from VideoDPO's ``<META>/pair.json`` + ``<META>/metadata.json`` (format in the module docstring).

    The prompt is the pair's ``frame_caption`` if present, else the winner's ``misc.frame_caption``; the
    ``prompt_id`` is the first 12 hex digits of the prompt's SHA-1 (pairs of one prompt share it). Relative clip
    paths are resolved against META. ``weight = (0.72 / score) ** dupbeta``; with ``dupbeta = 0`` every weight is 1
    and ``score`` is not needed.
    """
    meta_dir = Path(meta_dir)
    pairs_path, items_path = meta_dir / "pair.json", meta_dir / "metadata.json"
    raw_pairs = _load_json(pairs_path, "pair list")
    items = _load_json(items_path, "metadata")
    if not isinstance(raw_pairs, list) or not raw_pairs:
        raise ValueError(f"{pairs_path}: expected a non-empty JSON list of pairs")
    if not isinstance(items, list) or not items:
        raise ValueError(f"{items_path}: expected a non-empty JSON list of items")

    def clip(i: int) -> tuple[Path, str | None]:
        where = f"{items_path}: item {i}"
        item = items[i]
        try:
            clip_path = item["basic"]["clip_path"]
        except (KeyError, TypeError):
            raise ValueError(f"{where}: no basic.clip_path") from None
        caption = (item.get("misc") or {}).get("frame_caption") if isinstance(item, dict) else None
        p = Path(str(clip_path))
        return (p if p.is_absolute() else meta_dir / p).resolve(), caption

    out: list[dict[str, Any]] = []
    for k, row in enumerate(raw_pairs):
        where = f"{pairs_path}: pair {k}"
        if not isinstance(row, dict) or "video1" not in row or "video2" not in row:
            raise ValueError(f"{where}: expected an object with 'video1' (winner) and 'video2' (loser) indices")
        iw = _index(row["video1"], len(items), where, "video1")
        il = _index(row["video2"], len(items), where, "video2")
        win, caption = clip(iw)
        lose, _ = clip(il)
        prompt = row.get("frame_caption") or caption
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(
                f"{where}: no caption (neither the pair's frame_caption nor item {iw}'s misc.frame_caption)"
            )
        weight = 1.0
        if dupbeta != 0:
            score = row.get("score")
            if isinstance(score, bool) or not isinstance(score, int | float) or not score > 0:
                raise ValueError(f"{where}: dupbeta={dupbeta} needs a positive 'score', got {score!r}")
            weight = _weight((VIDEODPO_SCORE_REF / score) ** dupbeta, where)
        out.append(
            {
                "prompt_id": hashlib.sha1(prompt.encode()).hexdigest()[:12],
                "prompt": prompt,
                "win": str(win),
                "lose": str(lose),
                "weight": weight,
                "source": where,
            }
        )
    if check_files:
        _check_videos(out, str(pairs_path))
    return out


def write_pairs(pairs: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write pairs as our JSONL (without the ``source`` bookkeeping key), atomically."""
    lines = [json.dumps({k: v for k, v in p.items() if k != "source"}, ensure_ascii=False) for p in pairs]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return Path(path)


# --------------------------------------------------------------------------------------------------- latent cache


def _resize_cover(frames, height: int, width: int):
    """Resize (F, H, W, 3) uint8 frames to cover (height, width) with PIL bicubic, then center-crop to it."""
    import numpy as np
    from PIL import Image

    h, w = frames.shape[1:3]
    if (h, w) == (height, width):
        return frames
    s = max(height / h, width / w)
    h2, w2 = max(height, round(h * s)), max(width, round(w * s))
    top, left = (h2 - height) // 2, (w2 - width) // 2
    box = (left, top, left + width, top + height)
    resample = Image.Resampling.BICUBIC
    return np.stack([np.asarray(Image.fromarray(f).resize((w2, h2), resample).crop(box)) for f in frames])


class LatentCache:
    """VAE latents (4, F, h, w) of videos, computed once per video and kept under ``cache_dir`` as ``.pt`` files.

    A video is read with ``read_frames`` (``gen.config.num_frames`` uniformly sampled frames), resized to cover
    the generator's (height, width) and center-cropped if its size differs, and encoded with ``encode_frames``.
    The key is the SHA-1 of the absolute path, file size, mtime, (H, W, F) and the VAE's config and dtype, so a
    re-rendered video or another VAE gets new latents. A cache file that cannot be read is rebuilt.
    """

    def __init__(self, gen, cache_dir: str | Path, backend: str = "decord") -> None:
        self.gen = gen
        self.cache_dir = Path(cache_dir)
        self.backend = backend
        vae = gen.vae
        vae_cfg = json.dumps(dict(vae.config), sort_keys=True, default=str)
        dtype = str(next(vae.parameters()).dtype)
        self._vae_id = hashlib.sha1(f"{vae_cfg}|{dtype}".encode()).hexdigest()
        self.hits = self.misses = 0

    def shape(self) -> tuple[int, int, int, int]:
        c = self.gen.config
        return (int(self.gen.vae.config.latent_channels), c.num_frames, c.height // 8, c.width // 8)

    def key(self, video_path: str | Path) -> str:
        p = Path(video_path).resolve()
        try:
            st = p.stat()
        except OSError as e:
            raise FileNotFoundError(f"{p}: video not found ({e.strerror})") from None
        c = self.gen.config
        ident = [str(p), st.st_size, st.st_mtime_ns, c.height, c.width, c.num_frames, self._vae_id]
        return hashlib.sha1(json.dumps(ident).encode()).hexdigest()

    def path(self, video_path: str | Path) -> Path:
        k = self.key(video_path)
        return self.cache_dir / k[:2] / f"{k}.pt"

    def _load(self, file: Path):
        import torch

        try:
            lat = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated or foreign file: rebuild it
            log.warning("%s: unreadable latent cache file (%s); re-encoding", file, e)
            return None
        if not isinstance(lat, torch.Tensor) or tuple(lat.shape) != self.shape():
            got = tuple(lat.shape) if isinstance(lat, torch.Tensor) else type(lat).__name__
            log.warning("%s: cached latents are %s, expected %s; re-encoding", file, got, self.shape())
            return None
        return lat

    def encode(self, video_path: str | Path):
        """Encode a video without the cache: float32 CPU latents (4, F, h, w)."""

        c = self.gen.config
        frames = read_frames(video_path, c.num_frames, backend=self.backend)
        frames = _resize_cover(frames, c.height, c.width)
        return encode_frames(self.gen, frames).float().cpu()

    def get(self, video_path: str | Path):
        """The latents of one video, from the cache when present (float32, CPU)."""
        import torch

        file = self.path(video_path)
        if file.is_file():
            lat = self._load(file)
            if lat is not None:
                self.hits += 1
                return lat
        self.misses += 1
        lat = self.encode(video_path)
        buf = io.BytesIO()
        torch.save(lat, buf)
        atomic_write_bytes(file, buf.getvalue())
        return lat

    def warm(self, videos: Sequence[str | Path], progress: bool = True) -> None:
        """Encode every video not cached yet (e.g. this rank's shard before training)."""
        from tqdm.auto import tqdm

        todo = [v for v in videos if not self.path(v).is_file()]
        for v in tqdm(todo, desc="encoding videos", unit="video", disable=not progress or not todo):
            self.get(v)


# ------------------------------------------------------------------------------------------------------------ CLI
