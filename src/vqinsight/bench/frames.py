"""Frame-decoding benchmark: decord vs PyAV ``read_frames`` (with/without resize) and FrameCache cold vs warm."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vqinsight import video

log = logging.getLogger(__name__)

PAPER_MAX_PIXELS = 128 * 28 * 28  # VQ-Insight per-frame visual-token budget (128 tokens of 28x28 pixels)
FPS = 30


def make_clip(seconds: float, height: int, width: int, fps: int = FPS) -> np.ndarray:
    """Deterministic test frames (T, H, W, 3): a scrolling colour gradient with a moving box and disc."""
    t_total = max(1, round(seconds * fps))
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack(
        [(xx * 255 // max(1, width - 1)), (yy * 255 // max(1, height - 1)), ((xx + yy) // 4) % 256], axis=-1
    ).astype(np.uint8)
    shift = np.array([4, 2, 3], dtype=np.uint8)
    frames = np.empty((t_total, height, width, 3), dtype=np.uint8)
    bw, bh, rad = max(2, width // 8), max(2, height // 6), max(2, min(height, width) // 10)
    for t in range(t_total):
        f = frames[t]
        np.add(base, ((shift.astype(np.int64) * t) % 256).astype(np.uint8), out=f)  # uint8 wraps: it scrolls
        x0 = (t * 7) % max(1, width - bw)
        y0 = (t * 3) % max(1, height - bh)
        f[y0 : y0 + bh, x0 : x0 + bw] = (255, 255, 255)
        cx = int(width / 2 + width / 3 * np.sin(2 * np.pi * t / fps / 2))
        cy = int(height / 2 + height / 4 * np.cos(2 * np.pi * t / fps / 3))
        ys, xs = slice(max(0, cy - rad), cy + rad), slice(max(0, cx - rad), cx + rad)
        disc = (yy[ys, xs] - cy) ** 2 + (xx[ys, xs] - cx) ** 2 < rad * rad
        f[ys, xs][disc] = (20, 20, 200)
    return frames


def _time(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def _row(
    backend: str,
    mode: str,
    nframes: int,
    max_pixels: int | None,
    times: list[float],
    out: np.ndarray,
    decoded: int | None,
) -> dict[str, Any]:
    med = statistics.median(times)
    return {
        "backend": backend,
        "mode": mode,
        "nframes": nframes,
        "resize": max_pixels is not None,
        "max_pixels": max_pixels,
        "out_shape": list(out.shape),
        "median_s": med,
        "min_s": min(times),
        "times_s": times,
        "frames_per_s": nframes / med,
        "decoded_frames_per_s": decoded / med if decoded is not None else None,
    }


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("numpy", "decord", "av", "torch", "pillow"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def run(seconds: float, height: int, width: int, nframes: int, repeats: int, max_pixels: int) -> dict[str, Any]:
    """Generate the clip in a temp dir, time every configuration, return the result document."""
    backends = video.available_backends()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vqinsight-bench-frames-") as tmp:
        clip = Path(tmp) / "clip.mp4"
        t0 = time.perf_counter()
        video.write_video(clip, make_clip(seconds, height, width), fps=FPS)
        info = video.probe(clip, backend="pyav")
        clip_info = {
            "seconds": seconds,
            "fps": FPS,
            "frames": info["frames"],
            "height": height,
            "width": width,
            "bytes": clip.stat().st_size,
            "codec": "h264 (libx264 veryfast crf 23, yuv420p, default GOP)",
            "encode_s": time.perf_counter() - t0,
        }
        log.info("clip: %s", clip_info)
        for backend in backends:
            video.probe(clip, backend=backend)  # import the backend outside the timed region
            for mp in (None, max_pixels):
                times, out = _time(
                    lambda b=backend, m=mp: video.read_frames(clip, nframes, backend=b, max_pixels=m), repeats
                )
                # Both backends decode every frame up to the last sampled one (the GOP is longer than the stride).
                results.append(_row(backend, "read", nframes, mp, times, out, info["frames"]))
        cache_backend = backends[0]
        roots = iter(Path(tmp) / f"cache{i}" for i in range(repeats))

        def cold_get() -> np.ndarray:
            return video.FrameCache(next(roots), nframes, max_pixels, backend=cache_backend).get(clip)

        cold, out = _time(cold_get, repeats)
        results.append(_row(cache_backend, "cache_cold", nframes, max_pixels, cold, out, info["frames"]))
        cache = video.FrameCache(Path(tmp) / "cache0", nframes, max_pixels, backend=cache_backend)
        warm, out = _time(lambda: cache.get(clip), repeats)
        results.append(_row(cache_backend, "cache_warm", nframes, max_pixels, warm, out, None))

    def med(backend: str, mode: str, resize: bool) -> float | None:
        rows = [r for r in results if (r["backend"], r["mode"], r["resize"]) == (backend, mode, resize)]
        return rows[0]["median_s"] if rows else None

    ratios: dict[str, Any] = {"definition": "speedup = baseline median_s / candidate median_s (>1: candidate faster)"}
    for resize in (False, True):
        dec, pyav = med("decord", "read", resize), med("pyav", "read", resize)
        ratios[f"decord_vs_pyav_{'resize' if resize else 'noresize'}"] = pyav / dec if dec and pyav else None
    c_cold, c_warm = med(cache_backend, "cache_cold", True), med(cache_backend, "cache_warm", True)
    ratios["cache_warm_vs_cold"] = c_cold / c_warm if c_cold and c_warm else None
    return {
        "name": "frames",
        "clip": clip_info,
        "settings": {"nframes": nframes, "repeats": repeats, "max_pixels": max_pixels, "decoder_threads": 1},
        "results": results,
        "baseline": "pyav sequential decode",
        "ratios": ratios,
        "notes": "decoded_frames_per_s = clip frames / median_s; cache_warm reads a .npy from the OS page cache",
        "versions": _versions(),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "machine": platform.machine()},
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def main(argv: list[str] | None = None) -> int:
    """CLI entry: parse options, run, write the JSON atomically (and echo it on stdout)."""
    ap = argparse.ArgumentParser(prog="python -m vqinsight.bench frames", description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("results/bench/frames.json"))
    ap.add_argument("--nframes", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-pixels", type=int, default=PAPER_MAX_PIXELS)
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.nframes < 1 or args.seconds <= 0:
        ap.error("--repeats, --nframes and --seconds must be positive")
    doc = run(args.seconds, args.height, args.width, args.nframes, args.repeats, args.max_pixels)
    for r in doc["results"]:
        log.info(
            "%-6s %-10s resize=%-5s median %.3f s  %.1f frames/s",
            r["backend"],
            r["mode"],
            r["resize"],
            r["median_s"],
            r["frames_per_s"],
        )
    log.info("ratios: %s", {k: v for k, v in doc["ratios"].items() if k != "definition"})
    _write_json_atomic(args.out, doc)
    log.info("wrote %s", args.out)
    sys.stdout.write(json.dumps(doc) + "\n")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
