"""Preflight checks of the configured datasets and models, before any GPU job is submitted.

For each dataset: the native annotation files are there and parse, the benchmark splits have the published row
counts (config `datasets.<key>.expect_rows`), and every media file a row names exists, is not empty and is a complete
container (an MP4 whose boxes end inside the file and that has a `moov` box); with `decode=True` each file is also
opened and its first and last frames decoded. For each model: a local directory with a config and weights, a local
file, or a hub id already in the local Hugging Face cache. Every problem becomes a `Problem` with the fix in words.
The entry point is `python -m vqinsight.preflight`.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .manifest import check_media
from .parsers import ParseError, parse
from .registry import get as get_dataset

log = logging.getLogger("vqinsight.preflight")
MP4_SUFFIXES = (".mp4", ".m4v", ".mov")
BAD_ROWS = 20  # annotation rows listed one by one; the rest are counted
EXAMPLES = 3  # media problems of one kind are one table row naming this many files and the count


@dataclass(frozen=True)
class Problem:
    item: str  # dataset key or model name
    what: str  # the problem, naming the file and row
    fix: str


@dataclass
class DatasetReport:
    key: str
    counts: dict[str, int]
    sources: list[str]
    media_files: int
    problems: list[Problem]


def check_native(key: str, raw: Path) -> list[str]:
    """Return the native files/dirs (registry.native_files) that are missing under raw; an entry `a|b` is there
    when any of its variants (one per published release) is."""
    missing = []
    for entry in get_dataset(key).native_files:
        if not any(_present(raw, pattern) for pattern in entry.split("|")):
            missing.append(entry)
    return missing


def _present(raw: Path, pattern: str) -> bool:
    if pattern.endswith("/"):
        d = raw / pattern.rstrip("/")
        return d.is_dir() and any(d.iterdir())
    return any(raw.glob(pattern))


def container_problem(path: Path) -> str | None:
    """A cheap completeness check of an MP4/MOV: every top-level box ends inside the file and a `moov` box exists.
    A download cut short fails it without decoding anything. Other formats: None (only `decode` checks them)."""
    if path.suffix.lower() not in MP4_SUFFIXES:
        return None
    size, pos, kinds = path.stat().st_size, 0, set()
    with open(path, "rb") as f:
        while pos < size:
            f.seek(pos)
            head = f.read(16)
            if len(head) < 8:
                return f"truncated MP4: {size - pos} stray byte(s) after the last box"
            n, kind = int.from_bytes(head[:4], "big"), head[4:8].decode("latin-1")
            if n == 1:
                n = int.from_bytes(head[8:16], "big") if len(head) == 16 else 0
            elif n == 0:
                n = size - pos  # the last box runs to the end of the file
            if n < 8:
                return f"corrupt MP4: box {kind!r} at byte {pos} has size {n}"
            if pos + n > size:
                return f"truncated MP4: box {kind!r} at byte {pos} needs {n} bytes, the file ends {size - pos} later"
            kinds.add(kind)
            pos += n
    return None if "moov" in kinds else "incomplete MP4: no 'moov' box (an unfinished download or write?)"


def media_problem(path: str, media_type: str, decode: bool, reader: str) -> str | None:
    """Why a media file is unusable, or None."""
    p = Path(path)
    if not p.exists():
        return "missing"
    if p.is_dir():
        return "a directory, not a file"
    if p.stat().st_size == 0:
        return "empty (0 bytes)"
    try:
        why = container_problem(p)
    except OSError as e:
        return f"unreadable: {e}"
    if why is None and decode:
        why = check_media(path, media_type, reader)
    return why


def _refetch(raw: Path, spec: dict[str, Any]) -> str:
    """How to get a dataset's files again, by source."""
    if spec.get("source") == "download":
        return f"rerun its download (snakemake -f {raw}/.fetched.json; partial files resume)"
    if spec.get("source") == "synthetic":
        return f"regenerate it (snakemake -f {raw}/.fetched.json)"
    return "place the published file at that path (docs/DATASETS.md)"


def check_dataset(
    key: str,
    raw: Path,
    spec: dict[str, Any],
    scale: tuple[float, float],
    decode: bool = False,
    reader: str = "decord",
    workers: int = 4,
) -> DatasetReport:
    """Every check of one dataset; `spec` is its config entry (source, parse options, expect_rows)."""
    info = get_dataset(key)
    report = DatasetReport(key, {}, [], 0, [])
    add = report.problems.append
    fetch_fix = (
        _refetch(raw, spec) if spec.get("source") in ("download", "synthetic") else f"get it from {info.published_at}"
    )
    missing = check_native(key, raw)
    for entry in missing:
        add(Problem(key, f"{raw}/{entry.replace('|', ' or ')} missing", f"{fetch_fix}; layout: docs/DATASETS.md"))
    if missing:  # the parse and media checks would only repeat it
        return report
    try:
        parsed = parse(key, raw, scale, spec.get("parse"))
    except (ParseError, ValueError) as e:
        add(Problem(key, f"annotation files unusable: {e}", f"{fetch_fix}; layout: docs/DATASETS.md"))
        return report
    report.sources = parsed.sources
    report.counts = dict(sorted(Counter(r["split"] for r in parsed.rows).items()))
    row_fix = "fix or remove the row (or set data.on_bad_input: skip to drop such rows, counted)"
    for b in parsed.bad[:BAD_ROWS]:
        add(Problem(key, f"{raw / b.file} row {b.row}: {b.reason}", row_fix))
    if len(parsed.bad) > BAD_ROWS:
        add(Problem(key, f"{len(parsed.bad) - BAD_ROWS} more bad row(s), e.g. {parsed.bad[BAD_ROWS]}", row_fix))
    for split, accepted in (spec.get("expect_rows") or {}).items():
        n = report.counts.get(split, 0)
        if n not in accepted:
            add(
                Problem(
                    key,
                    f"split {split!r} has {n} rows, the published row set(s) {accepted}",
                    "use the benchmark label file the field evaluates on (docs/DATASETS.md, row sets)",
                )
            )
    items = sorted({(m, r["media_type"]) for r in parsed.rows for m in r["media"]})
    report.media_files = len(items)
    with ThreadPoolExecutor(max(1, workers)) as ex:
        whys = list(ex.map(lambda it: media_problem(it[0], it[1], decode, reader), items))
    by_reason: dict[str, list[str]] = defaultdict(list)
    for (m, _), why in zip(items, whys, strict=True):
        if why is not None:
            by_reason[why if why in ("missing", "empty (0 bytes)") else "damaged"].append(f"{m} ({why})")
    for reason, files in by_reason.items():
        head = "; ".join(files[:EXAMPLES])
        more = f" and {len(files) - EXAMPLES} more" if len(files) > EXAMPLES else ""
        fix = _refetch(raw, spec) if reason == "missing" else f"delete the file(s), then {_refetch(raw, spec)}"
        add(Problem(key, f"{len(files)} media file(s) {reason}: {head}{more}", fix))
    return report


def _is_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and not Path(name).exists()


def check_model(name: str, path: str) -> Problem | None:
    """A model the jobs will load: a local checkpoint directory or file, or a hub id already cached."""
    p = Path(path).expanduser()
    if p.is_file():
        return None if p.stat().st_size > 0 else Problem(name, f"{path} is empty", "download it again")
    if p.is_dir():
        weights = [f for pat in ("*.safetensors", "*.bin", "*.pt", "*.pth") for f in p.glob(pat)]
        if not (p / "config.json").is_file() and not (p / "model_index.json").is_file():
            return Problem(name, f"{path} has no config.json", "download the whole checkpoint into that directory")
        if not weights and not any(p.glob("*/*.safetensors")) and not any(p.glob("*/*.bin")):
            return Problem(name, f"{path} has no weight files", "download the whole checkpoint into that directory")
        return None
    if _is_hub_id(path):
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(path, "config.json")
        if isinstance(hit, str):
            return None
        return Problem(
            name,
            f"hub id {path} is not in the local Hugging Face cache (compute nodes are often offline)",
            f"huggingface-cli download {path} on the login node, or point the config at a local directory",
        )
    return Problem(name, f"{path} not found", "download the checkpoint to that path (README, cluster checklist)")


def check_all(
    datasets: dict[str, dict[str, Any]],
    models: dict[str, str],
    scale: tuple[float, float],
    decode: bool = False,
    reader: str = "decord",
    workers: int = 4,
) -> tuple[list[DatasetReport], list[Problem]]:
    """`datasets`: key -> {"raw": dir, **config entry}; `models`: name -> path or hub id."""
    reports = []
    for key, spec in datasets.items():
        log.info("checking %s in %s", key, spec["raw"])
        reports.append(check_dataset(key, Path(spec["raw"]), spec, scale, decode, reader, workers))
    problems = [p for r in reports for p in r.problems]
    problems += [p for name, path in models.items() if (p := check_model(name, path)) is not None]
    return reports, problems


def table(rows: Iterable[Iterable[str]], header: tuple[str, ...]) -> str:
    """A plain text table (columns padded, long cells kept whole)."""
    rows = [header, *([str(c) for c in r] for r in rows)]
    widths = [min(60, max(len(r[i]) for r in rows)) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([fmt(rows[0]), fmt(["-" * w for w in widths]), *map(fmt, rows[1:])])


def summary_table(reports: list[DatasetReport]) -> str:
    rows = [
        (
            r.key,
            ", ".join(f"{s} {n}" for s, n in r.counts.items()) or "-",
            ", ".join(r.sources) or "-",
            str(r.media_files),
            str(len(r.problems)),
        )
        for r in reports
    ]
    return table(rows, ("dataset", "rows", "annotation files read", "media", "problems"))


def problem_table(problems: list[Problem]) -> str:
    return table(((p.item, p.what, p.fix) for p in problems), ("item", "problem", "fix"))
