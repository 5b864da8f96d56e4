"""Judgment rows and prediction records: manifest rows selected for a task and split, the judgments they expand to
(comparisons once per order), and the JSON-lines predictions file those judgments are written to and read back from.

Torch-free: the judge, the baselines, the GRPO/SFT training commands, evaluation and stage 3 all read and write
these.

**Resumable output.** Lines are appended to ``<out>.partial`` and flushed+fsynced batch by batch (``append_records``);
a restarted job skips the keys already there (``read_done``; a torn last line is dropped) and the finished file is
renamed to ``<out>`` at the end, so Snakemake never sees a half-written output.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from .data.manifest import load_manifest
from .prompts import TASKS

log = logging.getLogger("vqinsight.records")

# the keys of a judgment row (what the rewards and the prompt builders read)
COLUMNS = ("sample_id", "task", "media_type", "media", "prompt_text", "question", "gt_score", "gt_scores", "gt_choice")
ORDERS = ("AB", "BA")


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


@dataclass(frozen=True)
class Item:
    """One judgment to make: a manifest row, in a given order for comparisons."""

    key: str
    row: dict[str, Any]
    order: str | None


def swapped(row: dict[str, Any]) -> dict[str, Any]:
    """The comparison row with its two videos exchanged (and the human label with them)."""
    out = dict(row)
    out["media"] = list(reversed(row["media"]))
    out["gt_choice"] = {"A": "B", "B": "A"}.get(row.get("gt_choice"), row.get("gt_choice"))
    return out


def expand(rows: list[dict[str, Any]], orders: tuple[str, ...] = ORDERS) -> list[Item]:
    """Judgments for rows: comparisons once per order, everything else once."""
    items: list[Item] = []
    for r in rows:
        if r["task"] == "comparison":
            for o in orders:
                items.append(Item(f"{r['sample_id']}|{o}", r if o == "AB" else swapped(r), o))
        else:
            items.append(Item(r["sample_id"], r, None))
    return items


def ground_truth(row: dict[str, Any]) -> Any:
    """The human label of a row: its score, its per-dimension scores or its choice, by task."""
    task = row["task"]
    if task in ("image_score", "video_score"):
        return row.get("gt_score")
    if task == "multidim_score":
        return row.get("gt_scores")
    return row.get("gt_choice")


def read_done(partial: Path) -> set[str]:
    """Keys already written to a partial predictions file; a torn (unparsable) last line is cut off."""
    if not partial.exists():
        return set()
    raw = partial.read_bytes()
    lines = raw.split(b"\n")
    done, good = set(), 0
    for i, line in enumerate(lines):
        if not line.strip():
            good += len(line) + 1
            continue
        try:
            done.add(json.loads(line)["key"])
        except (ValueError, KeyError) as e:
            if i < len(lines) - 1 and any(x.strip() for x in lines[i + 1 :]):
                raise ValueError(
                    f"{partial}: line {i + 1} is not a prediction record; delete the file to restart"
                ) from e
            log.warning("%s: dropping a torn last line (%d bytes) from an interrupted run", partial, len(line))
            break
        good += len(line) + 1
    if good < len(raw):
        with open(partial, "r+b") as f:
            f.truncate(min(good, len(raw)))
    return done


def append_records(partial: Path, records: list[dict[str, Any]]) -> None:
    """Append records to a partial predictions file, flushed and fsynced (a killed job loses at most this batch)."""
    with open(partial, "a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def load_predictions(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a predictions file (JSON lines), with the file and line named on a malformed line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError as e:
                    raise ValueError(f"{path}: line {i}: not valid JSON ({e})") from e
    return out
