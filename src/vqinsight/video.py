"""Video IO: uniform frame sampling (pure), decoding (decord default, PyAV fallback), encoding, frame cache."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import multiprocessing
import os
import re
import subprocess
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .progress import progress

log = logging.getLogger(__name__)

BACKENDS = ("decord", "pyav")
MAX_ASPECT_RATIO = 200
# A container may declare a frame or two more than it can decode (edit lists, a dropped final packet); such a
# shortfall is tolerated by resampling over the decodable frames. More than this is treated as a truncated file.
FRAME_SHORTFALL_TOLERANCE = 2


class MediaError(RuntimeError):
    """A media file that cannot be read or written; the message names the file and the reason."""


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 8.0, crf: int = 23) -> None:
    """Encode uint8 frames (T, H, W, 3) to an H.264 mp4 with the ffmpeg binary from imageio-ffmpeg.

    Written to a temporary name first and renamed, so a killed job never leaves a truncated file behind.
    H and W must be even (yuv420p).
    """
    import imageio_ffmpeg

    frames = np.ascontiguousarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{path}: frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if t < 1 or h % 2 or w % 2:
        raise ValueError(f"{path}: need >=1 frame and even H, W for yuv420p, got {frames.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    # fmt: off
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-r", f"{fps}", "-i", "-", "-an", "-c:v", "libx264", "-preset", "veryfast",
           "-crf", str(crf), "-pix_fmt", "yuv420p", "-threads", "1", "-bitexact", "-map_metadata", "-1", str(tmp)]
    # fmt: on
    proc = subprocess.run(cmd, input=frames.tobytes(), capture_output=True, check=False)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise MediaError(f"{path}: ffmpeg failed: {proc.stderr.decode(errors='replace').strip()}")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------- pure


def sample_indices(num_frames_total: int, nframes: int) -> list[int]:
    """Uniform frame indices as in qwen-vl-utils: ``round(linspace(0, total - 1, nframes))`` (half to even).

    When the video has fewer frames than requested, indices repeat (still ``nframes`` long, non-decreasing).
    """
    if num_frames_total <= 0 or nframes <= 0:
        raise ValueError(f"need num_frames_total > 0 and nframes > 0, got {num_frames_total} and {nframes}")
    return [int(i) for i in np.round(np.linspace(0, num_frames_total - 1, nframes))]


def fit_pixels(h: int, w: int, max_pixels: int, min_pixels: int = 0, factor: int = 28) -> tuple[int, int]:
    """Qwen2.5-VL ``smart_resize``: (h2, w2), both multiples of ``factor``, min_pixels <= h2*w2 <= max_pixels.

    Rounds each side to the nearest multiple of ``factor``; if the area is too large it scales both sides down by
    sqrt(h*w/max_pixels) and floors to ``factor``, if too small it scales up by sqrt(min_pixels/(h*w)) and ceils.
    """
    if h <= 0 or w <= 0 or factor <= 0:
        raise ValueError(f"need positive sizes and factor, got {h}x{w} factor {factor}")
    if max(h, w) / min(h, w) > MAX_ASPECT_RATIO:
        raise ValueError(f"aspect ratio of {h}x{w} is {max(h, w) / min(h, w):.1f}, above {MAX_ASPECT_RATIO}")
    if max_pixels < factor * factor or min_pixels > max_pixels:
        raise ValueError(
            f"need {factor}*{factor} <= max_pixels and min_pixels <= max_pixels, got {min_pixels=}, {max_pixels=}"
        )
    h2 = max(factor, round(h / factor) * factor)
    w2 = max(factor, round(w / factor) * factor)
    if h2 * w2 > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        h2 = max(factor, math.floor(h / beta / factor) * factor)
        w2 = max(factor, math.floor(w / beta / factor) * factor)
        while h2 * w2 > max_pixels:  # only when one side was clamped up to `factor`
            if h2 >= w2:
                h2 -= factor
            else:
                w2 -= factor
    elif h2 * w2 < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        h2 = math.ceil(h * beta / factor) * factor
        w2 = math.ceil(w * beta / factor) * factor
    return h2, w2


# ------------------------------------------------------------------------------------------------------ decoding


@functools.cache
def _decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError as exc:
        log.warning("decord is not importable (%s); backend 'decord' falls back to PyAV", exc)
        return False
    return True


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    return "decord" if backend == "decord" and _decord_available() else "pyav"


def available_backends() -> list[str]:
    """Backends usable on this machine (decord only where its wheel is importable)."""
    return [b for b in BACKENDS if _resolve_backend(b) == b]


def _reason(exc: BaseException) -> str:
    """One readable line from an FFmpeg/decord exception (decord prefixes '[hh:mm:ss] file.cc:N: ')."""
    lines = [ln for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
    text = re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", lines[0]).strip()
    text = re.sub(r"^\[Errno -?\d+\] ", "", text)
    return text[:300]


def _check_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise MediaError(f"{p}: file not found")
    if not p.is_file():
        raise MediaError(f"{p}: not a regular file")
    if p.stat().st_size == 0:
        raise MediaError(f"{p}: empty file (0 bytes)")
    return p


def _stream_meta(p: Path) -> dict[str, Any]:
    """Container header only (no decoding): declared frame count (0 = unknown), fps, size, duration."""
    import av

    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise MediaError(f"{p}: no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0.0)
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            else:
                duration = container.duration / 1e6 if container.duration else 0.0
            return {
                "frames": int(stream.frames or 0),
                "fps": fps,
                "width": int(stream.codec_context.width),
                "height": int(stream.codec_context.height),
                "duration": duration,
            }
    except MediaError:
        raise
    except Exception as exc:  # av.error.FFmpegError subclasses, EOFError, OSError
        raise MediaError(f"{p}: cannot decode: {_reason(exc)}") from exc


def _decord_reader(p: Path) -> Any:
    import decord

    try:
        return decord.VideoReader(str(p), num_threads=1)
    except Exception as exc:  # decord raises RuntimeError / DECORDError
        raise MediaError(f"{p}: cannot decode: {_reason(exc)}") from exc


def _check_count(p: Path, readable: int, declared: int) -> None:
    if readable <= 0:
        raise MediaError(f"{p}: cannot decode: 0 frames")
    if declared > 0 and readable < declared - FRAME_SHORTFALL_TOLERANCE:
        raise MediaError(f"{p}: cannot decode: truncated, only {readable} of {declared} declared frames readable")


def _read_decord(p: Path, nframes: int, declared: int) -> np.ndarray:
    vr = _decord_reader(p)
    # decord counts the packets it indexed: a file cut at a packet boundary opens fine with fewer frames and would
    # silently be sampled over the prefix, so compare with the count the container header declares.
    total = len(vr)
    _check_count(p, total, declared)
    idx = sample_indices(total, nframes)
    try:
        batch = vr.get_batch(idx).asnumpy()
    except Exception as exc:
        raise MediaError(f"{p}: cannot decode: {_reason(exc)}") from exc
    if batch.ndim != 4 or batch.shape[0] != len(idx) or batch.shape[-1] != 3:
        raise MediaError(f"{p}: cannot decode: decord returned shape {batch.shape} for {len(idx)} frames")
    return np.ascontiguousarray(batch, dtype=np.uint8)


def _pyav_decode(p: Path, idx: Sequence[int] | None) -> tuple[list[np.ndarray], int]:
    """One sequential pass: keep the RGB frames at ``idx`` (sorted, may repeat), stop after the last one.

    With ``idx=None`` only counts. Returns (frames, number of frames decoded).
    """
    import av

    wanted: dict[int, int] = {}
    for i in idx or ():
        wanted[i] = wanted.get(i, 0) + 1
    last = max(wanted) if wanted else None
    out: list[np.ndarray] = []
    n = 0
    try:
        with av.open(str(p)) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1  # like decord num_threads=1; parallelism comes from processes
            for frame in container.decode(stream):
                if n in wanted:
                    rgb = frame.to_ndarray(format="rgb24")
                    out.extend([rgb] * wanted[n])
                n += 1
                if last is not None and n > last:
                    break
    except Exception as exc:
        raise MediaError(f"{p}: cannot decode: {_reason(exc)}") from exc
    return out, n


def _read_pyav(p: Path, nframes: int, declared: int) -> np.ndarray:
    total = declared if declared > 0 else _pyav_decode(p, None)[1]  # unknown count: decode everything once
    _check_count(p, total, 0)
    idx = sample_indices(total, nframes)
    frames, decoded = _pyav_decode(p, idx)
    if len(frames) != nframes:
        _check_count(p, decoded, total)  # raises unless a small, tolerated shortfall
        log.warning("%s: header declares %d frames but %d decode; resampling over %d", p, total, decoded, decoded)
        frames, _ = _pyav_decode(p, sample_indices(decoded, nframes))
        if len(frames) != nframes:
            raise MediaError(f"{p}: cannot decode: got {len(frames)} of {nframes} sampled frames")
    return np.stack(frames).astype(np.uint8, copy=False)


def _resize(frames: np.ndarray, max_pixels: int, min_pixels: int, factor: int, p: Path) -> np.ndarray:
    """Resize (T, H, W, 3) uint8 frames to ``fit_pixels`` with PIL bicubic (antialiased when shrinking)."""
    from PIL import Image

    h, w = frames.shape[1:3]
    if max(h, w) / min(h, w) > MAX_ASPECT_RATIO:  # a property of the file, not a caller error: name the file
        raise MediaError(f"{p}: aspect ratio of {h}x{w} is {max(h, w) / min(h, w):.1f}, above {MAX_ASPECT_RATIO}")
    h2, w2 = fit_pixels(h, w, max_pixels, min_pixels, factor)
    if (h2, w2) == (h, w):
        return frames
    bicubic = Image.Resampling.BICUBIC
    return np.stack([np.asarray(Image.fromarray(f).resize((w2, h2), bicubic)) for f in frames])


def read_frames(
    path: str | os.PathLike,
    nframes: int,
    *,
    backend: str = "decord",
    max_pixels: int | None = None,
    min_pixels: int = 0,
    factor: int = 28,
) -> np.ndarray:
    """Decode ``nframes`` uniformly sampled frames as uint8 (T, H, W, 3), resized to fit ``max_pixels`` if given.

    Raises MediaError (message starts with the path) for missing, empty, non-video, truncated or undecodable files.
    """
    if nframes <= 0:
        raise ValueError(f"nframes must be positive, got {nframes}")
    p = _check_file(path)
    declared = _stream_meta(p)["frames"]
    if _resolve_backend(backend) == "decord":
        frames = _read_decord(p, nframes, declared)
    else:
        frames = _read_pyav(p, nframes, declared)
    if max_pixels is not None:
        frames = _resize(frames, max_pixels, min_pixels, factor, p)
    return frames


def probe(path: str | os.PathLike, backend: str = "decord") -> dict[str, Any]:
    """Frames (as the backend counts them), fps, width, height, duration in seconds and the backend used."""
    p = _check_file(path)
    meta = _stream_meta(p)
    used = _resolve_backend(backend)
    if used == "decord":
        frames = len(_decord_reader(p))
    else:
        frames = meta["frames"] or _pyav_decode(p, None)[1]
    _check_count(p, frames, meta["frames"])
    duration = meta["duration"] or (frames / meta["fps"] if meta["fps"] else 0.0)
    return {
        "path": str(p),
        "frames": frames,
        "fps": meta["fps"],
        "width": meta["width"],
        "height": meta["height"],
        "duration": duration,
        "backend": used,
    }


def read_image(
    path: str | os.PathLike, max_pixels: int | None = None, min_pixels: int = 0, factor: int = 28
) -> np.ndarray:
    """Read an image as uint8 RGB (H, W, 3), resized to fit ``max_pixels`` if given; MediaError on failure."""
    from PIL import Image, UnidentifiedImageError

    p = _check_file(path)
    try:
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            arr = np.asarray(im.convert("RGB"))
    except UnidentifiedImageError as exc:
        raise MediaError(f"{p}: not an image") from exc
    except Exception as exc:  # truncated / corrupt data: OSError, SyntaxError, ValueError from plugins
        raise MediaError(f"{p}: cannot decode: {_reason(exc)}") from exc
    if max_pixels is not None:
        arr = _resize(arr[None], max_pixels, min_pixels, factor, p)[0]
    return arr


# --------------------------------------------------------------------------------------------------------- cache


class FrameCache:
    """Decode once, then serve sampled frames from uncompressed ``.npy`` files under ``root``.

    The key hashes the absolute path, file size and mtime_ns (so an edited video is re-decoded) and the sampling
    parameters. The backend is not part of the key: both backends decode the same frames.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        nframes: int,
        max_pixels: int | None,
        min_pixels: int = 0,
        backend: str = "decord",
        factor: int = 28,
    ) -> None:
        self.root = Path(root)
        self.nframes = nframes
        self.max_pixels = max_pixels
        self.min_pixels = min_pixels
        self.backend = backend
        self.factor = factor
        self.decodes = 0  # frames decoded by this instance (cache misses)

    def key(self, path: str | os.PathLike) -> str:
        """sha256 hex of the file identity and the sampling parameters; MediaError if the file is missing."""
        p = _check_file(path).resolve()
        st = p.stat()
        ident = [str(p), st.st_size, st.st_mtime_ns, self.nframes, self.max_pixels, self.min_pixels, self.factor]
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()

    def path_for(self, path: str | os.PathLike) -> Path:
        """Where the cached frames of ``path`` live."""
        k = self.key(path)
        return self.root / k[:2] / f"{k}.npy"

    def _load(self, entry: Path) -> np.ndarray | None:
        if not entry.exists():
            return None
        try:
            arr = np.load(entry, allow_pickle=False)
        except Exception as exc:  # truncated / garbage file: ValueError, OSError, EOFError
            log.warning("%s: corrupted cache file (%s); decoding again", entry, _reason(exc))
            return None
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[0] != self.nframes or arr.shape[-1] != 3:
            log.warning(
                "%s: cache file holds %s %s, not %d frames; decoding again", entry, arr.dtype, arr.shape, self.nframes
            )
            return None
        return arr

    def get(self, path: str | os.PathLike) -> np.ndarray:
        """Frames of ``path`` from the cache, decoding and storing them on a miss."""
        entry = self.path_for(path)
        arr = self._load(entry)
        if arr is not None:
            return arr
        arr = read_frames(
            path,
            self.nframes,
            backend=self.backend,
            max_pixels=self.max_pixels,
            min_pixels=self.min_pixels,
            factor=self.factor,
        )
        self.decodes += 1
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)
            os.replace(tmp, entry)
        finally:
            tmp.unlink(missing_ok=True)
        return arr

    def _params(self) -> tuple[Any, ...]:
        return (str(self.root), self.nframes, self.max_pixels, self.min_pixels, self.backend, self.factor)

    def warm(self, paths: Iterable[str | os.PathLike], workers: int = 1) -> list[tuple[str, str]]:
        """Fill the cache for ``paths`` (``workers`` spawned processes); return (path, error) for failed files."""

        todo = [str(p) for p in dict.fromkeys(str(p) for p in paths)]
        jobs = [(self._params(), p) for p in todo]
        failures: list[tuple[str, str]] = []
        bar = progress(total=len(jobs), desc="frame cache", unit="video")
        if workers <= 1 or len(jobs) <= 1:
            results: Iterable[tuple[str, str | None]] = map(_warm_one, jobs)
            for path, err in results:
                bar.update()
                if err is not None:
                    failures.append((path, err))
        else:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(min(workers, len(jobs))) as pool:
                for path, err in pool.imap_unordered(_warm_one, jobs, chunksize=1):
                    bar.update()
                    if err is not None:
                        failures.append((path, err))
        bar.close()
        for path, err in failures:
            log.warning("frame cache: %s", err if err.startswith(path) else f"{path}: {err}")
        order = {p: i for i, p in enumerate(todo)}
        return sorted(failures, key=lambda f: order[f[0]])


def _warm_one(job: tuple[tuple[Any, ...], str]) -> tuple[str, str | None]:
    """Pool worker (module level, so spawn can import it): cache one video, report its error instead of raising."""
    (root, nframes, max_pixels, min_pixels, backend, factor), path = job
    try:
        FrameCache(root, nframes, max_pixels, min_pixels, backend, factor).get(path)
    except Exception as exc:  # one bad video must not stop the others
        return path, str(exc) if isinstance(exc, MediaError) else f"{path}: {type(exc).__name__}: {exc}"
    return path, None
