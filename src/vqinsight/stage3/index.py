"""Stage 3's sample index (one JSONL per sampling shard) and the comparison manifests built from it: a prompt's
round robin of pairs, the judge-refinement set and the two-generator win-rate pairs. ``vqinsight.stage3.pairs``
(the command) describes the formats.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import polars as pl

from ..data.manifest import to_frame, validate_manifest
from ..jsonl import iter_objects

log = logging.getLogger("vqinsight.stage3.pairs")

INDEX_FIELDS: dict[str, type] = {"prompt_id": str, "prompt": str, "index": int, "seed": int, "path": str}
UNLABELED = "unlabeled (generated pair)"


def read_index(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The sample-index rows of the given JSONL files, sorted by (prompt_id, index), each with ``source`` and ``line``.

    Every line must be a JSON object with the fields of INDEX_FIELDS (right types, index >= 0, non-empty prompt_id
    without "|", non-empty path); a (prompt_id, index) seen twice is an error naming both places, and so is one
    prompt_id with two different prompt texts.
    """
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[str, int], str] = {}
    texts: dict[str, tuple[str, str]] = {}
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no sample index files given")
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: sample index not found (run the sampling rule first)")
        for where, obj in iter_objects(path):
            ln = int(where.rsplit(":", 1)[1])
            for k, t in INDEX_FIELDS.items():
                if k not in obj:
                    raise ValueError(f"{where}: missing field {k!r}")
                v = obj[k]
                if not isinstance(v, t) or isinstance(v, bool):
                    raise ValueError(f"{where}: field {k!r} must be {t.__name__}, got {v!r}")
            pid, idx = obj["prompt_id"], obj["index"]
            if not pid.strip() or "|" in pid:
                raise ValueError(f"{where}: prompt_id must be non-empty and free of '|', got {pid!r}")
            if idx < 0:
                raise ValueError(f"{where}: index must be >= 0, got {idx}")
            if not obj["path"].strip():
                raise ValueError(f"{where}: empty path")
            key = (pid, idx)
            if key in seen:
                raise ValueError(f"duplicate sample (prompt_id {pid!r}, index {idx}): {seen[key]} and {where}")
            seen[key] = where
            if pid in texts and texts[pid][0] != obj["prompt"]:
                raise ValueError(f"{where}: prompt_id {pid!r} has another prompt text at {texts[pid][1]}")
            texts.setdefault(pid, (obj["prompt"], where))
            rows.append({**{k: obj[k] for k in INDEX_FIELDS}, "source": str(path), "line": ln})
    if not rows:
        raise ValueError(f"{', '.join(map(str, paths))}: no samples")
    rows.sort(key=lambda r: (r["prompt_id"], r["index"]))
    return rows


def by_prompt(index_rows: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Index rows grouped by prompt_id (sorted), each group sorted by index."""
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in index_rows:
        groups[r["prompt_id"]].append(r)
    return {pid: sorted(g, key=lambda r: r["index"]) for pid, g in sorted(groups.items())}


def pair_id(prompt_id: str, i: int, j: int) -> str:
    """The manifest sample_id of the comparison of videos i and j (index values, i < j) of a prompt."""
    return f"{prompt_id}|{i:02d}-{j:02d}"


def comparison_row(sample_id: str, dataset: str, split: str, media: list[str], prompt: str, **kw: Any) -> dict:
    return {
        "sample_id": sample_id,
        "dataset": dataset,
        "split": split,
        "task": "comparison",
        "media_type": "video",
        "media": media,
        "prompt": prompt,
        "question": None,
        "gt_score": None,
        "raw_score": None,
        "gt_scores": None,
        "raw_scores": None,
        "gt_choice": kw.get("gt_choice", "tie"),
        "preference": kw.get("preference", 0),
        "raw_label": kw.get("raw_label", UNLABELED),
        "source_file": kw.get("source_file", ""),
        "source_row": kw.get("source_row"),
    }


def pair_manifest(
    index_rows: Iterable[Mapping[str, Any]], dataset: str = "stage3", split: str = "all", source_file: str = ""
) -> pl.DataFrame:
    """All i < j comparison rows of every prompt (unlabeled: gt_choice "tie", preference 0), validated.

    ``source_file`` defaults to the index file of the pair's first video; ``source_row`` is the pair's position
    in the manifest (0-based, sorted by sample_id).
    """
    rows: list[dict[str, Any]] = []
    single = []
    for pid, group in by_prompt(index_rows).items():
        if len(group) < 2:
            single.append(pid)
        for a in range(len(group)):
            for b in range(a + 1, len(group)):
                ra, rb = group[a], group[b]
                rows.append(
                    comparison_row(
                        pair_id(pid, ra["index"], rb["index"]),
                        dataset,
                        split,
                        [ra["path"], rb["path"]],
                        ra["prompt"],
                        source_file=source_file or ra.get("source", ""),
                        source_row=len(rows),
                    )
                )
    if single:
        log.warning("%d prompt(s) have a single video and no pair: %s", len(single), single[:5])
    if not rows:
        raise ValueError("no prompt has two or more videos: nothing to compare")
    df = to_frame(rows)
    validate_manifest(df, where=f"{dataset} pair manifest")
    return df


def read_pairs(path: str | Path) -> list[dict[str, Any]]:
    """The lines of a ``select`` output, each with its line number (``line``); fields are checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: win/lose pairs not found (run the select step first)")
    out, seen = [], {}
    need = {"prompt_id": str, "prompt": str, "lose": str, "lose_index": int}
    for where, obj in iter_objects(path):
        ln = int(where.rsplit(":", 1)[1])
        for k, t in need.items():
            if not isinstance(obj.get(k), t) or isinstance(obj.get(k), bool):
                raise ValueError(f"{where}: field {k!r} must be {t.__name__}, got {obj.get(k)!r}")
        if obj["prompt_id"] in seen:
            raise ValueError(f"{where}: prompt_id {obj['prompt_id']!r} already on line {seen[obj['prompt_id']]}")
        seen[obj["prompt_id"]] = ln
        out.append({**obj, "line": ln})
    return out


def winrate_manifest(
    a_rows: Iterable[Mapping[str, Any]], b_rows: Iterable[Mapping[str, Any]], dataset: str = "winrate"
) -> pl.DataFrame:
    """One unlabeled comparison row [a_path, b_path] per (prompt_id, index) present on both sides."""
    a = {(r["prompt_id"], r["index"]): r for r in a_rows}
    b = {(r["prompt_id"], r["index"]): r for r in b_rows}
    common = sorted(set(a) & set(b))
    only_a, only_b = len(set(a) - set(b)), len(set(b) - set(a))
    if only_a or only_b:
        log.warning("%d sample(s) only in a and %d only in b are left out", only_a, only_b)
    if not common:
        raise ValueError("the two sample sets share no (prompt_id, index)")
    rows = []
    for pid, idx in common:
        ra, rb = a[(pid, idx)], b[(pid, idx)]
        if ra["prompt"] != rb["prompt"]:
            raise ValueError(f"prompt {pid}: the two sides have different prompt texts")
        rows.append(
            comparison_row(
                f"{pid}|{idx:02d}",
                dataset,
                "all",
                [ra["path"], rb["path"]],
                ra["prompt"],
                source_file=ra.get("source", ""),
                source_row=len(rows),
            )
        )
    df = to_frame(rows)
    validate_manifest(df, where=f"{dataset} win-rate manifest")
    return df


def parse_pair_id(sample_id: str) -> tuple[str, int, int]:
    """(prompt_id, i, j) of a ``pair_id``; anything else is an error naming it."""
    pid, sep, ij = sample_id.rpartition("|")
    i, dash, j = ij.partition("-")
    if not (sep and pid and dash and i.isdigit() and j.isdigit() and int(i) < int(j)):
        raise ValueError(f"{sample_id!r} is not a stage-3 pair id '<prompt_id>|<i>-<j>' (i < j)")
    return pid, int(i), int(j)
