"""Native-format parsers: one function per dataset, each returning manifest rows and the rows it rejected.

Layouts are documented in docs/DATASETS.md. Parsers never crash on a bad row: a missing, NaN, non-numeric or
out-of-range label, a duplicate id or an unknown preference code becomes a `BadRow` naming the file and row.
A missing annotation file or missing columns is a whole-file problem and raises `ParseError`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .registry import REGISTRY

DIMENSIONS = ("spatial", "temporal", "alignment")


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


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def read_csv(path: Path, required: Iterable[str]) -> list[dict[str, str]]:
    """Read a CSV as strings, checking the header has the required columns."""
    if not path.is_file():
        raise ParseError(f"{path}: annotation file not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise ParseError(f"{path}: missing column(s) {missing}; found {header}")
            return [{(k or "").strip(): v for k, v in row.items()} for row in reader]
    except (UnicodeDecodeError, csv.Error) as e:  # binary or non-UTF-8 file, oversized field
        raise ParseError(f"{path}: cannot read CSV: {e}") from None


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


def glob_one_or_more(root: Path, pattern: str) -> list[Path]:
    files = sorted(root.glob(pattern))
    if not files:
        raise ParseError(f"{root / pattern}: no annotation file matches")
    return files


class RowSink:
    """Collects rows, rejecting duplicate sample ids and turning LabelErrors into BadRows."""

    def __init__(self, dataset: str, root: Path) -> None:
        self.dataset, self.root, self.out, self._seen = dataset, root, Parsed(), set()

    def add(self, file: Path, row: int, split: str, native_id: str, build: Callable[[], dict[str, Any]]) -> None:
        sid = f"{self.dataset}/{split}/{native_id}"
        fname = _rel(file, self.root)
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

    def skip(self, reason: str) -> None:
        self.out.skipped[reason] = self.out.skipped.get(reason, 0) + 1


def _media(root: Path, *parts: str) -> str:
    return str(root.joinpath(*parts))


def _score_rec(task: str, media_type: str, media: list[str], raw: Any, scaler: Scaler, **extra: Any) -> dict:
    x = to_float(raw, "MOS")
    return dict(task=task, media_type=media_type, media=media, raw_score=x, gt_score=scaler(x), **extra)


# --------------------------------------------------------------------------- score datasets
def parse_koniq(root: Path, scale: tuple[float, float]) -> Parsed:
    sink, sc = RowSink("koniq", root), Scaler(REGISTRY["koniq"].raw_range, scale)
    for split, name in (("train", "train_koniq_7k.json"), ("test", "test_koniq_2k.json")):
        path = root / "metas" / name
        if not path.is_file():
            raise ParseError(f"{path}: annotation file not found")
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: deep nesting
            raise ParseError(f"{path}: not valid JSON: {e}") from None
        if not isinstance(items, list):
            raise ParseError(f"{path}: expected a JSON list of records, got {type(items).__name__}")
        for i, it in enumerate(items):
            it = it if isinstance(it, dict) else {}
            image = str(it.get("image") or "")
            nid = str(it.get("id") or PurePosixPath(image).stem)
            media = [_media(root, "images", PurePosixPath(image).name)] if image else []
            sink.add(
                path,
                i,
                split,
                nid,
                lambda it=it, m=media: _score_rec(
                    "image_score", "image", _need(m, "image path"), it.get("gt_score"), sc
                ),
            )
    return sink.out


def _need(media: list[str], what: str) -> list[str]:
    if not media or not all(media):
        raise LabelError(f"missing {what}")
    return media


def parse_lsvq(root: Path, scale: tuple[float, float]) -> Parsed:
    sink, sc = RowSink("lsvq", root), Scaler(REGISTRY["lsvq"].raw_range, scale)
    for split, name in (
        ("train", "LSVQ_whole_train.csv"),
        ("test", "LSVQ_whole_test.csv"),
        ("test_1080p", "LSVQ_whole_test_1080p.csv"),
    ):
        path = root / name
        for i, r in enumerate(read_csv(path, ("name", "mos"))):
            if str(r.get("is_valid", "1")).strip().lower() in ("0", "false"):
                sink.skip("is_valid=0")
                continue
            n = (r.get("name") or "").strip()
            sink.add(
                path,
                i,
                split,
                n,
                lambda r=r, n=n: _score_rec(
                    "video_score", "video", [_media(root, "videos", f"{n}.mp4")], r.get("mos"), sc
                ),
            )
    return sink.out


def parse_konvid(root: Path, scale: tuple[float, float]) -> Parsed:
    sink, sc = RowSink("konvid", root), Scaler(REGISTRY["konvid"].raw_range, scale)
    path = root / "KoNViD_1k_attributes.csv"
    for i, r in enumerate(read_csv(path, ("flickr_id", "MOS"))):
        fid = (r.get("flickr_id") or "").strip()
        sink.add(
            path,
            i,
            "test",
            fid,
            lambda r=r, fid=fid: _score_rec(
                "video_score", "video", [_media(root, "KoNViD_1k_videos", f"{fid}.mp4")], r.get("MOS"), sc
            ),
        )
    return sink.out


def parse_livevqc(root: Path, scale: tuple[float, float]) -> Parsed:
    import numpy as np
    from scipy.io import loadmat

    sink, sc = RowSink("livevqc", root), Scaler(REGISTRY["livevqc"].raw_range, scale)
    path = root / "data.mat"
    if not path.is_file():
        raise ParseError(f"{path}: annotation file not found")
    try:
        mat = loadmat(path)
    except Exception as e:  # noqa: BLE001
        raise ParseError(f"{path}: cannot read MATLAB file: {e}") from None
    if "video_list" not in mat or "mos" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ParseError(f"{path}: missing variable(s) video_list/mos; found {found}")
    cells = [np.asarray(v).ravel() for v in np.asarray(mat["video_list"], dtype=object).ravel()]
    names = [str(c[0]) if c.size else "" for c in cells]
    mos = np.asarray(mat["mos"], dtype=object).ravel()
    if len(names) != len(mos):
        raise ParseError(f"{path}: video_list has {len(names)} entries but mos has {len(mos)}")
    for i, (n, m) in enumerate(zip(names, mos, strict=True)):
        sink.add(
            path,
            i,
            "test",
            n.strip(),
            lambda n=n, m=m: _score_rec("video_score", "video", [_media(root, "Video", n.strip())], m, sc),
        )
    return sink.out


def _lgvq_split(prompt: str, test_fraction: float = 0.2) -> str:
    h = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big") / 2**64
    return "test" if h < test_fraction else "train"


def parse_lgvq(root: Path, scale: tuple[float, float]) -> Parsed:
    sink, sc = RowSink("lgvq", root), Scaler(REGISTRY["lgvq"].raw_range, scale)
    path = root / "LGVQ_MOS.csv"
    for i, r in enumerate(read_csv(path, ("video_name", "prompt", *DIMENSIONS))):
        name, prompt = (r.get("video_name") or "").strip(), (r.get("prompt") or "").strip()
        split = (r.get("split") or "").strip() or _lgvq_split(prompt)

        def build(r=r, name=name, prompt=prompt) -> dict:
            if not prompt:
                raise LabelError("missing prompt")
            raw = {d: to_float(r.get(d), f"{d} MOS") for d in DIMENSIONS}
            return dict(
                task="multidim_score",
                media_type="video",
                media=[_media(root, "videos", name)],
                prompt=prompt,
                raw_scores=raw,
                gt_scores={d: sc(v, f"{d} MOS") for d, v in raw.items()},
            )

        sink.add(path, i, split, name, build)
    return sink.out


# --------------------------------------------------------------------------- preference datasets
_FIRST = {"1", "video1", "video 1", "a", "video a", "left", "leftvote", "first"}
_SECOND = {"2", "video2", "video 2", "b", "video b", "right", "rightvote", "second"}
_TIE = {"0", "same", "tie", "equal", "tievote", "bothbad_vote", "both bad", "similar"}


def preference_of(label: Any) -> int:
    """Native preference code → +1 (first better), −1 (second), 0 (tie)."""
    s = str(label).strip().lower() if label is not None else ""
    if s in _FIRST:
        return 1
    if s in _SECOND:
        return -1
    if s in _TIE:
        return 0
    raise LabelError(f"unknown preference label {str(label)[:40]!r}" if s else "missing preference label")


def _pair_rec(prompt: Any, a: str, b: str, label: Any, root: Path) -> dict:
    if not a or not b:
        raise LabelError("missing video path")
    p = preference_of(label)
    return dict(
        task="comparison",
        media_type="video",
        media=[_media(root, "videos", a), _media(root, "videos", b)],
        prompt=(str(prompt) if prompt is not None else None),
        preference=p,
        gt_choice={1: "A", -1: "B", 0: "tie"}[p],
        raw_label=str(label),
    )


def _parse_pairs(sink: RowSink, root: Path, pattern: str, split: str) -> None:
    for path in glob_one_or_more(root, pattern):
        for i, r in enumerate(
            read_parquet_rows(path, ("internal_id", "prompt", "standard_answer", "video1_path", "video2_path"))
        ):
            sink.add(
                path,
                i,
                split,
                str(r.get("internal_id") or ""),
                lambda r=r: _pair_rec(
                    r.get("prompt"),
                    str(r.get("video1_path") or ""),
                    str(r.get("video2_path") or ""),
                    r.get("standard_answer"),
                    root,
                ),
            )


def parse_visionreward(root: Path, scale: tuple[float, float]) -> Parsed:
    sink = RowSink("visionreward", root)
    qpath = root / "meta_qa_en.txt"
    if not qpath.is_file():
        raise ParseError(f"{qpath}: checklist question file not found")
    questions = [q.strip() for q in qpath.read_text(encoding="utf-8").splitlines() if q.strip()]
    for path in glob_one_or_more(root, "train/train-*.parquet"):
        rows = read_parquet_rows(path, ("internal_id", "video_path", "prompt", "meta_result", "meta_mask"))
        for i, r in enumerate(rows):
            res, mask = r.get("meta_result") or [], r.get("meta_mask") or []
            if len(res) != len(questions) or len(mask) != len(questions):
                sink.out.bad.append(
                    BadRow(
                        _rel(path, root),
                        i,
                        f"meta_result/meta_mask length {len(res)}/"
                        f"{len(mask)} != {len(questions)} questions in meta_qa_en.txt",
                    )
                )
                continue
            for q, (question, ans, m) in enumerate(zip(questions, res, mask, strict=True)):
                if not m:
                    sink.skip("meta_mask=0 (question not applicable)")
                    continue
                nid = f"{r.get('internal_id') or ''}#q{q:02d}" if r.get("internal_id") else ""

                def build(r=r, question=question, ans=ans) -> dict:
                    yes = to_float(ans, "checklist answer") > 0
                    if not r.get("video_path"):
                        raise LabelError("missing video path")
                    return dict(
                        task="vqa",
                        media_type="video",
                        media=[_media(root, "videos", str(r["video_path"]))],
                        prompt=r.get("prompt"),
                        question=question,
                        gt_choice="yes" if yes else "no",
                        raw_label=str(ans),
                    )

                sink.add(path, i, "train", nid, build)
    _parse_pairs(sink, root, "regression/train-*.parquet", "train")
    return sink.out


def parse_monetbench(root: Path, scale: tuple[float, float]) -> Parsed:
    sink = RowSink("monetbench", root)
    _parse_pairs(sink, root, "monetbench/test-*.parquet", "test")
    return sink.out


def parse_genaibench(root: Path, scale: tuple[float, float]) -> Parsed:
    sink = RowSink("genaibench", root)
    for path in glob_one_or_more(root, "video_generation/test_v1-*.parquet"):
        for i, r in enumerate(read_parquet_rows(path, ("prompt", "left_video", "right_video", "vote_type"))):
            a, b = (PurePosixPath(str(r.get(k) or "")).name for k in ("left_video", "right_video"))
            nid = f"{i:06d}"
            sink.add(
                path, i, "test", nid, lambda r=r, a=a, b=b: _pair_rec(r.get("prompt"), a, b, r.get("vote_type"), root)
            )
    return sink.out


def parse_vidprom(root: Path, scale: tuple[float, float]) -> Parsed:
    sink = RowSink("vidprom", root)
    path = root / "VidProM_unique.csv"
    for i, r in enumerate(read_csv(path, ("uuid", "prompt"))):

        def build(r=r) -> dict:
            text = (r.get("prompt") or "").strip()
            if not text:
                raise LabelError("empty prompt")
            return dict(task="prompt", media_type="none", media=[], prompt=text)

        sink.add(path, i, "train", (r.get("uuid") or "").strip(), build)
    return sink.out


PARSERS: dict[str, Callable[[Path, tuple[float, float]], Parsed]] = {
    "koniq": parse_koniq,
    "lsvq": parse_lsvq,
    "konvid": parse_konvid,
    "livevqc": parse_livevqc,
    "lgvq": parse_lgvq,
    "visionreward": parse_visionreward,
    "genaibench": parse_genaibench,
    "monetbench": parse_monetbench,
    "vidprom": parse_vidprom,
}
assert set(PARSERS) == set(REGISTRY), "every registered dataset needs a parser"
