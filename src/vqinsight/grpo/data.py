"""Training and evaluation rows for the judge: manifests → task rows → chat prompts with decoded media.

Media are decoded lazily when a row is accessed (`datasets.Dataset.with_transform`), from the on-disk frame cache
(`vqinsight.video.FrameCache`), so a video is decoded once per run configuration, not once per epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..data.manifest import load_manifest
from ..prompts import TASKS, build_messages
from ..video import FrameCache, read_image

log = logging.getLogger("vqinsight.grpo.data")

COLUMNS = ("sample_id", "task", "media_type", "media", "prompt_text", "question", "gt_score", "gt_scores", "gt_choice")


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
        from PIL import Image

        if media_type == "image":
            return Image.fromarray(read_image(path, max_pixels=self.spec.image_max_pixels))
        return self.cache.get(path)


def select_rows(
    manifests: list[str | Path],
    tasks: list[str],
    split: str,
    *,
    limit: int | None = None,
    seed: int = 0,
    drop_ties: bool = True,
    scale: tuple[float, float] | None = None,
) -> pl.DataFrame:
    """Rows of the given tasks and split from the manifests, in a seeded random order (optionally the first `limit`).

    Comparison rows whose human label is a tie are dropped for training (`drop_ties`): the judge answers
    "Video A" or "Video B" only, as in the official release.
    """
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; valid: {', '.join(TASKS)}")
    frames = [load_manifest(m, scale) for m in manifests]
    df = pl.concat(frames, how="vertical") if frames else pl.DataFrame()
    df = df.filter(pl.col("task").is_in(tasks) & (pl.col("split") == split))
    if drop_ties:
        df = df.filter(pl.col("gt_choice").is_null() | (pl.col("gt_choice") != "tie"))
    if df.height == 0:
        raise ValueError(f"no rows with task in {tasks} and split {split!r} in {[str(m) for m in manifests]}")
    order = np.random.default_rng(seed).permutation(df.height)
    df = df.sort("sample_id")[order.tolist()]
    if limit is not None:
        df = df.head(limit)
    counts = dict(df.group_by("task").len().iter_rows())
    log.info("selected %d rows (%s) from %d manifest(s), split %s", df.height, counts, len(manifests), split)
    return df


def to_records(df: pl.DataFrame) -> list[dict[str, Any]]:
    """Plain-python rows with the columns the rewards expect (`gt_score`, `gt_scores`, `gt_choice`, `task`)."""
    rows = []
    for r in df.iter_rows(named=True):
        rows.append(
            {
                "sample_id": r["sample_id"],
                "task": r["task"],
                "media_type": r["media_type"],
                "media": list(r["media"]),
                "prompt_text": r["prompt"],
                "question": r["question"],
                "gt_score": r["gt_score"],
                "gt_scores": r["gt_scores"],
                "gt_choice": r["gt_choice"],
            }
        )
    return rows


def messages_for(
    row: dict[str, Any], loader: Callable[[str, str], Any], style: str, scale: tuple[float, float]
) -> list[dict]:
    """The chat prompt of one row, with its media decoded."""
    media = [loader(m, row["media_type"]) for m in row["media"]]
    return build_messages(
        row["task"],
        media=media,
        prompt=row["prompt_text"],
        question=row["question"],
        scale=scale,
        media_type="image" if row["media_type"] == "image" else "video",
        style=style,
    )


def encode_batch(
    processor,
    rows: list[dict[str, Any]],
    loader: MediaLoader,
    style: str,
    scale: tuple[float, float],
    suffixes: list[str] | None = None,
    padding_side: str = "left",
):
    """Processor inputs for rows: chat prompts (plus an optional text suffix each) with their decoded media."""
    texts, images, videos = [], [], []
    for i, r in enumerate(rows):
        msgs = messages_for(r, loader, style, scale)
        for part in msgs[-1]["content"]:
            if part["type"] == "image":
                images.append(part["image"])
            elif part["type"] == "video":
                videos.append(part["video"])
        text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        texts.append(text + (suffixes[i] if suffixes else ""))
    return processor(
        text=texts,
        images=images or None,
        videos=videos or None,
        padding=True,
        padding_side=padding_side,
        return_tensors="pt",
    )


def build_dataset(rows: list[dict[str, Any]], loader: MediaLoader, style: str, scale: tuple[float, float]):
    """A `datasets.Dataset` whose `prompt` column is built (and its media decoded) on access."""
    from datasets import Dataset

    table = {c: [r[c] for r in rows] for c in COLUMNS}
    ds = Dataset.from_dict(table)

    def transform(batch: dict[str, list]) -> dict[str, list]:
        n = len(batch["sample_id"])
        out = {k: list(v) for k, v in batch.items()}
        # GRPO's sampler repeats each row G times in a batch: decode each media path once per batch (the copies
        # share the frame arrays, which also makes the trainer's equal-prompt check an identity check)
        memo: dict[tuple[str, str], Any] = {}

        def load(path: str, media_type: str) -> Any:
            key = (path, media_type)
            if key not in memo:
                memo[key] = loader(path, media_type)
            return memo[key]

        out["prompt"] = [messages_for({k: batch[k][i] for k in batch}, load, style, scale) for i in range(n)]
        return out

    return ds.with_transform(transform)
