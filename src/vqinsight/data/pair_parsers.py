"""Parsers of the preference, checklist and prompt datasets (VisionRewardDB-Video, GenAI-Bench, MonetBench,
VidProM). Layouts and the releases checked: docs/DATASETS.md."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from .rows import (
    LabelError,
    Parsed,
    ParseError,
    RowSink,
    first_existing,
    glob_one_or_more,
    media,
    read_csv,
    read_parquet_rows,
    to_float,
)

_FIRST = {"1", "video1", "video 1", "a", "video a", "left", "leftvote", "first"}
_SECOND = {"2", "video2", "video 2", "b", "video b", "right", "rightvote", "second"}
_TIE = {"0", "same", "tie", "equal", "tievote", "bothbad_vote", "both bad", "similar"}
PROMPT_PLACEHOLDER = "[[prompt]]"  # VisionReward's checklist questions quote the generation prompt here
QUESTION_FILES = ("meta_qa_en.txt", "VisionReward_video_qa.txt")  # HF dataset, GitHub repository
PAIR_COLUMNS = ("standard_answer", "video1_path", "video2_path")  # what the public evaluators read


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


def substitute_prompt(question: str, prompt: Any) -> str:
    """The question with every `[[prompt]]` replaced by the generation prompt verbatim, as VisionReward's
    inference-video.py does (`question.replace('[[prompt]]', prompt)`)."""
    if PROMPT_PLACEHOLDER not in question:
        return question
    if prompt is None or not str(prompt).strip():
        raise LabelError(f"question quotes the prompt ({PROMPT_PLACEHOLDER}) but the row has no prompt")
    return question.replace(PROMPT_PLACEHOLDER, str(prompt))


def _pair_rec(prompt: Any, a: str, b: str, label: Any, root: Path) -> dict:
    if not a or not b:
        raise LabelError("missing video path")
    p = preference_of(label)
    return dict(
        task="comparison",
        media_type="video",
        media=[media(root, "videos", a), media(root, "videos", b)],
        prompt=(str(prompt) if prompt is not None else None),
        preference=p,
        gt_choice={1: "A", -1: "B", 0: "tie"}[p],
        raw_label=str(label),
    )


def _parse_pairs(sink: RowSink, root: Path, pattern: str, split: str) -> None:
    """Pair tables: `video1_path, video2_path, standard_answer`, with `internal_id` and `prompt` where the release
    has them. Without `internal_id` the id is the table's file stem and row number."""
    files = glob_one_or_more(root, pattern)
    for path in files:
        sink.source(path)
        rows = read_parquet_rows(path, PAIR_COLUMNS)
        has_id = bool(rows) and "internal_id" in rows[0]
        for i, r in enumerate(rows):
            nid = str(r.get("internal_id") or "") if has_id else f"{path.stem}:{i:06d}"
            sink.add(
                path,
                i,
                split,
                nid,
                lambda r=r: _pair_rec(
                    r.get("prompt"),
                    str(r.get("video1_path") or ""),
                    str(r.get("video2_path") or ""),
                    r.get("standard_answer"),
                    root,
                ),
            )


def _questions(root: Path) -> list[str]:
    qpath = first_existing(root, QUESTION_FILES)
    if qpath is None or not qpath.is_file():
        raise ParseError(f"{root / QUESTION_FILES[0]}: checklist question file not found (or {QUESTION_FILES[1]})")
    try:
        return [q.strip() for q in qpath.read_text(encoding="utf-8").splitlines() if q.strip()]
    except UnicodeDecodeError as e:
        raise ParseError(f"{qpath}: cannot read question file: {e}") from None


def parse_visionreward(root: Path, scale: tuple[float, float]) -> Parsed:
    sink = RowSink("visionreward", root)
    questions = _questions(root)
    for path in glob_one_or_more(root, "train/train-*.parquet"):
        sink.source(path)
        rows = read_parquet_rows(path, ("internal_id", "video_path", "prompt", "meta_result", "meta_mask"))
        for i, r in enumerate(rows):
            res, mask = r.get("meta_result") or [], r.get("meta_mask") or []
            if len(res) != len(questions) or len(mask) != len(questions):
                sink.bad(path, i, f"meta_result/meta_mask length {len(res)}/{len(mask)} != {len(questions)} questions")
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
                        media=[media(root, "videos", str(r["video_path"]))],
                        prompt=r.get("prompt"),
                        question=substitute_prompt(question, r.get("prompt")),
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
    """`left_video` / `right_video` are hub URLs (`.../blob/main/dir/<hash>.mp4`); the download step stores each as
    `videos/<URL basename>`."""
    sink = RowSink("genaibench", root)
    for path in glob_one_or_more(root, "video_generation/test_v1-*.parquet"):
        sink.source(path)
        for i, r in enumerate(read_parquet_rows(path, ("prompt", "left_video", "right_video", "vote_type"))):
            a, b = (PurePosixPath(str(r.get(k) or "").split("?")[0]).name for k in ("left_video", "right_video"))
            sink.add(
                path,
                i,
                "test",
                f"{i:06d}",
                lambda r=r, a=a, b=b: _pair_rec(r.get("prompt"), a, b, r.get("vote_type"), root),
            )
    return sink.out


def parse_vidprom(root: Path, scale: tuple[float, float]) -> Parsed:
    sink = RowSink("vidprom", root)
    path = root / "VidProM_unique.csv"
    sink.source(path)
    for i, r in enumerate(read_csv(path, ("uuid", "prompt"))):

        def build(r=r) -> dict:
            text = (r.get("prompt") or "").strip()
            if not text:
                raise LabelError("empty prompt")
            return dict(task="prompt", media_type="none", media=[], prompt=text)

        sink.add(path, i, "train", (r.get("uuid") or "").strip(), build)
    return sink.out
