"""What every native-format parser shares: errors, label parsing, scaling, table readers and the row sink.

A bad row becomes a `BadRow` naming the file, the row and the reason; a file that cannot be used at all (missing,
unreadable, missing columns) raises `ParseError`. Readers accept the column-name and file-name variants of the
published releases (docs/DATASETS.md lists which release uses which).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any


class ParseError(RuntimeError):
    """An annotation file that cannot be used at all (missing, unreadable, missing columns)."""


@dataclass(frozen=True)
class BadRow:
    file: str
    row: int | None
    reason: str
    sample_id: str | None = None


@dataclass
class Parsed:
    rows: list[dict[str, Any]] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # intentional, documented skips (e.g. is_valid=0)
    sources: list[str] = field(default_factory=list)  # the annotation files read, relative to the raw dir


class LabelError(ValueError):
    """A label value that cannot be used; the message is the quarantine reason."""


def to_float(value: Any, what: str = "label") -> float:
    """Parse a label to a finite float, or raise LabelError saying why not."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise LabelError(f"missing {what}")
    if isinstance(value, bool):
        raise LabelError(f"non-numeric {what} {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise LabelError(f"non-numeric {what} {str(value)[:40]!r}") from None
    except OverflowError:  # an integer beyond the float range (e.g. a JSON literal 10**400)
        raise LabelError(f"non-finite {what} {str(value)[:40]!r}") from None
    if not math.isfinite(x):
        raise LabelError(f"non-finite {what} {value!r}")
    return x


@dataclass(frozen=True)
class Scaler:
    """Maps a native MOS range onto the task scale; out-of-range raw values are errors, never clipped."""

    raw: tuple[float, float]
    scale: tuple[float, float]

    def __call__(self, x: float, what: str = "MOS") -> float:
        lo, hi = self.raw
        if not lo <= x <= hi:
            raise LabelError(f"{what} {x:g} outside the native range [{lo:g}, {hi:g}]")
        a, b = self.scale
        return a + (b - a) * (x - lo) / (hi - lo)


def rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def pick_column(header: Sequence[str], names: Sequence[str]) -> str | None:
    """The first of `names` (spelling variants of one column) present in `header`."""
    return next((n for n in names if n in header), None)


def require_columns(path: Path, header: Sequence[str], columns: dict[str, Sequence[str]]) -> dict[str, str]:
    """Map each logical column to the variant the file uses; a missing one is a ParseError listing the variants."""
    found = {k: pick_column(header, v) for k, v in columns.items()}
    missing = [" or ".join(repr(n) for n in columns[k]) for k, c in found.items() if c is None]
    if missing:
        raise ParseError(f"{path}: missing column(s) [{', '.join(missing)}]; found {list(header)}")
    return {k: c for k, c in found.items() if c is not None}


def read_csv_header(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Read a CSV as strings: (stripped header, rows keyed by stripped column names)."""
    if not path.is_file():
        raise ParseError(f"{path}: annotation file not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            return header, [{(k or "").strip(): v for k, v in row.items()} for row in reader]
    except (UnicodeDecodeError, csv.Error) as e:  # binary or non-UTF-8 file, oversized field
        raise ParseError(f"{path}: cannot read CSV: {e}") from None


def read_csv(path: Path, required: Iterable[str]) -> list[dict[str, str]]:
    """Read a CSV as strings, checking the header has the required columns."""
    header, rows = read_csv_header(path)
    missing = [c for c in required if c not in header]
    if missing:
        raise ParseError(f"{path}: missing column(s) {missing}; found {header}")
    return rows


def read_parquet_rows(path: Path, required: Iterable[str]) -> list[dict[str, Any]]:
    import polars as pl

    try:
        df = pl.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - any reader failure is a file-level error
        raise ParseError(f"{path}: cannot read parquet: {e}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ParseError(f"{path}: missing column(s) {missing}; found {df.columns}")
    return df.to_dicts()


def read_json_list(path: Path) -> list[Any]:
    """A JSON file holding a list of records."""
    if not path.is_file():
        raise ParseError(f"{path}: annotation file not found")
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: deep nesting
        raise ParseError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(items, list):
        raise ParseError(f"{path}: expected a JSON list of records, got {type(items).__name__}")
    return items


@dataclass(frozen=True)
class Label:
    """One entry of a benchmark label list: the media path as written, its MOS (or None with a reason)."""

    name: str
    mos: Any
    row: int


def read_label_list(path: Path) -> list[Label]:
    """Benchmark label lists as FAST-VQA / DOVER (`<name>, <n>, <n>, <MOS>` per line) and Q-Align publish them.

    Q-Align JSON records carry the name in `img_path` or `image`, the MOS in `gt_score`, or, in its training lists,
    only inside `id` (`<name>-><MOS>`). A line or record that does not have this shape keeps its row with a MOS of
    None, so the parser quarantines it by row number instead of dropping it.
    """
    if path.suffix == ".json":
        out = []
        for i, it in enumerate(read_json_list(path)):
            it = it if isinstance(it, dict) else {}
            name = str(it.get("img_path") or it.get("image") or "")
            mos = it.get("gt_score")
            if mos is None and "->" in str(it.get("id") or ""):
                ident, _, mos = str(it["id"]).rpartition("->")
                name = name or ident
            out.append(Label(name.strip(), mos, i))
        return out
    if not path.is_file():
        raise ParseError(f"{path}: annotation file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ParseError(f"{path}: cannot read label list: {e}") from None
    out = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        out.append(Label(parts[0], parts[-1] if len(parts) >= 2 else None, i))
    if not out:
        raise ParseError(f"{path}: empty label list")
    return out


def first_existing(root: Path, names: Sequence[str]) -> Path | None:
    """The first annotation file of `names` (release variants, in order of preference) that exists under root."""
    return next((root / n for n in names if (root / n).exists()), None)


def resolve_media(root: Path, candidates: Sequence[Sequence[str]]) -> str:
    """The first candidate path (parts under root) that exists; else the first candidate, for the missing-media
    report. Releases disagree on media names (KoNViD, LIVE-VQC, LGVQ): each candidate is one release's name."""
    paths = [root.joinpath(*c) for c in candidates]
    return str(next((p for p in paths if p.is_file()), paths[0]))


def glob_one_or_more(root: Path, pattern: str) -> list[Path]:
    files = sorted(root.glob(pattern))
    if not files:
        raise ParseError(f"{root / pattern}: no annotation file matches")
    return files


def stem_of(name: str) -> str:
    """`ia-batch1/xyz.mp4` -> `ia-batch1/xyz` (the id LSVQ's native CSVs use)."""
    p = PurePosixPath(name)
    return str(p.with_suffix("")) if p.suffix.lower() in (".mp4", ".jpg", ".jpeg", ".png", ".avi", ".mov") else name


class RowSink:
    """Collects rows, rejecting duplicate sample ids and turning LabelErrors into BadRows."""

    def __init__(self, dataset: str, root: Path) -> None:
        self.dataset, self.root, self.out, self._seen = dataset, root, Parsed(), set()

    def source(self, path: Path) -> None:
        self.out.sources.append(rel(path, self.root))

    def add(self, file: Path, row: int, split: str, native_id: str, build: Callable[[], dict[str, Any]]) -> None:
        sid = f"{self.dataset}/{split}/{native_id}"
        fname = rel(file, self.root)
        if not native_id.strip():
            self.out.bad.append(BadRow(fname, row, "missing id", None))
            return
        if sid in self._seen:
            self.out.bad.append(BadRow(fname, row, f"duplicate id {native_id!r}", sid))
            return
        self._seen.add(sid)  # also when the row itself is bad: a later row with this id is still a duplicate
        try:
            rec = build()
        except LabelError as e:
            self.out.bad.append(BadRow(fname, row, str(e), sid))
            return
        base = dict(
            sample_id=sid,
            dataset=self.dataset,
            split=split,
            prompt=None,
            question=None,
            gt_score=None,
            raw_score=None,
            gt_scores=None,
            raw_scores=None,
            gt_choice=None,
            preference=None,
            raw_label=None,
            source_file=fname,
            source_row=row,
        )
        base.update(rec)
        self.out.rows.append(base)

    def bad(self, file: Path, row: int | None, reason: str) -> None:
        self.out.bad.append(BadRow(rel(file, self.root), row, reason))

    def skip(self, reason: str) -> None:
        self.out.skipped[reason] = self.out.skipped.get(reason, 0) + 1


def media(root: Path, *parts: str) -> str:
    return str(root.joinpath(*parts))


def need(paths: list[str], what: str) -> list[str]:
    if not paths or not all(paths):
        raise LabelError(f"missing {what}")
    return paths


def score_rec(task: str, media_type: str, paths: list[str], raw: Any, scaler: Scaler, **extra: Any) -> dict:
    x = to_float(raw, "MOS")
    return dict(task=task, media_type=media_type, media=paths, raw_score=x, gt_score=scaler(x), **extra)
