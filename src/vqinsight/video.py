"""Video IO: uniform frame sampling (pure), decoding (decord default, PyAV fallback), encoding, frame cache."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np


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
