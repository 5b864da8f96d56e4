"""Chat prompts with decoded media for the judge's training commands: one row's messages, a processor batch, and
the training set whose prompts are built on access.

Media are decoded lazily when a row is accessed (`datasets.Dataset.with_transform`), from the on-disk frame cache
(`vqinsight.video.FrameCache`), so a video is decoded once per run configuration, not once per epoch. Selecting the
rows is `vqinsight.records.select_rows`; decoding them is `vqinsight.media.MediaLoader`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from datasets import Dataset

from ..media import MediaLoader
from ..prompts import build_messages
from ..records import COLUMNS


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
