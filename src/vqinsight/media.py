"""How manifest media are decoded for the judge and its training commands: the spec, its CLI arguments, the loader.

Torch-free: the loader returns uint8 (T, H, W, 3) frames (``video.FrameCache``) or a PIL image, which every processor
takes as is.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .video import FrameCache, read_image


@dataclass(frozen=True)
class MediaSpec:
    """How media are decoded: frames per video, per-frame pixel budget, reader, cache location."""

    cache_dir: str
    nframes: int
    max_pixels: int
    min_pixels: int = 0
    reader: str = "decord"
    image_max_pixels: int | None = None

    def __post_init__(self) -> None:
        if self.nframes < 1 or self.max_pixels < 1:
            raise ValueError(f"nframes and max_pixels must be positive, got {self.nframes}, {self.max_pixels}")


class MediaLoader:
    """Decodes a manifest media path into what the processor takes: uint8 (T,H,W,3) frames or a PIL image."""

    def __init__(self, spec: MediaSpec) -> None:
        self.spec = spec
        self.cache = FrameCache(spec.cache_dir, spec.nframes, spec.max_pixels, spec.min_pixels, spec.reader)

    def __call__(self, path: str, media_type: str) -> Any:
        if media_type == "image":
            return Image.fromarray(read_image(path, max_pixels=self.spec.image_max_pixels))
        return self.cache.get(path)


def add_media_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("media (from config data.*)")
    g.add_argument("--cache-dir", required=True, help="frame cache directory")
    g.add_argument("--nframes", required=True, type=int)
    g.add_argument("--max-pixels", required=True, type=int)
    g.add_argument("--min-pixels", type=int, default=0)
    g.add_argument("--image-max-pixels", type=int, default=None)
    g.add_argument("--reader", choices=("decord", "pyav"), default="decord")
    g.add_argument("--scale", nargs=2, type=float, default=(1.0, 5.0), metavar=("LO", "HI"))


def media_spec(a: argparse.Namespace) -> MediaSpec:
    return MediaSpec(a.cache_dir, a.nframes, a.max_pixels, a.min_pixels, a.reader, a.image_max_pixels)


def processor_pixels(a: argparse.Namespace) -> dict[str, tuple[int, int]]:
    """Processor pixel budgets matching the decoded media, so visual token counts are what the config says."""
    return {
        "image_pixels": (a.min_pixels, a.image_max_pixels or a.max_pixels),
        "video_pixels": (a.min_pixels, a.max_pixels),
    }
