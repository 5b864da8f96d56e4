"""``vqinsight``: judge your own videos from the shell, or serve the judge over HTTP.

    vqinsight judge clip.mp4 --model DIR                          # quality score with the reasoning
    vqinsight judge clip.mp4 --task multidim --prompt TEXT        # spatial / temporal / alignment
    vqinsight judge a.mp4 b.mp4 --prompt TEXT                     # preference: verdict, P(A) from both orders
    vqinsight judge clip.mp4 --question "Is the cat surfing?"     # yes/no
    vqinsight judge videos/ --out scores.csv                      # a folder, a glob or a CSV of pairs -> CSV/JSONL
    vqinsight serve --model DIR [--port 8377]                     # batch HTTP JSON API (vqinsight.serve)

Batch runs append one result per line to ``--out`` (``.csv`` or ``.jsonl``) and skip the inputs already there
when started again, so a killed run resumes; a bad file is recorded with its error and the run goes on.
Exit status: 0 done, 1 some inputs failed, 2 bad arguments, missing files or an unusable model directory.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .api import IMAGE_SUFFIXES, TASK_NAMES, VIDEO_SUFFIXES, Judge, MediaError, job_key
from .judge.engine import MAX_NEW_TOKENS
from .progress import progress
from .serve import add_server_args, serve_command

log = logging.getLogger("vqinsight.cli")
MEDIA_SUFFIXES = VIDEO_SUFFIXES + IMAGE_SUFFIXES
CSV_FIELDS = [
    "key",
    "task",
    "video",
    "a",
    "b",
    "prompt",
    "question",
    "score",
    "spatial",
    "temporal",
    "alignment",
    "verdict",
    "p_a",
    "answer",
    "p_yes",
    "error",
    "reasoning",
]


class UsageError(ValueError):
    """Bad command-line input: reported as one line, exit status 2."""


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (defaults: the model directory's meta.json)")
    g.add_argument("--model", required=True, help="judge directory: a stage-1/2/3 checkpoint, a release, a base VLM")
    g.add_argument(
        "--format",
        dest="fmt",
        default=None,
        choices=("vqinsight", "release", "q_insight"),
        help="prompts: this project's (default), the official VQ-Insight release's, Q-Insight's",
    )
    g.add_argument("--style", default=None, choices=("full", "short"), help="vqinsight prompt style")
    g.add_argument("--nframes", type=int, default=None)
    g.add_argument("--max-pixels", type=int, default=None, help="per video frame")
    g.add_argument("--min-pixels", type=int, default=None)
    g.add_argument("--image-max-pixels", type=int, default=None)
    g.add_argument("--scale", nargs=2, type=float, default=None, metavar=("LO", "HI"))
    g.add_argument("--cache-dir", type=Path, default=None, help="decoded frames (default ~/.cache/vqinsight/frames)")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    g.add_argument("--engine", choices=("static", "hf"), default="static", help="static: the fast engine")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    g.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the fast engine's decode step (default: serve on CUDA only, judge off)",
    )


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="vqinsight",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    sub = ap.add_subparsers(dest="command", required=True)
    j = sub.add_parser("judge", help="score, compare or ask about videos")
    j.add_argument("inputs", nargs="+", help="video(s), two videos to compare, a folder, a glob or a CSV")
    j.add_argument(
        "--task",
        choices=tuple(TASK_NAMES),
        default=None,
        help="default: compare for two videos or a CSV of pairs, vqa with --question, else score",
    )
    j.add_argument("--prompt", default=None, help="the text the video(s) were generated from")
    j.add_argument("--question", default=None, help="a yes/no question (task vqa)")
    j.add_argument("--out", type=Path, default=None, help="batch results file (.csv or .jsonl); resumable")
    j.add_argument("--json", action="store_true", help="JSON output (one object per line) instead of text")
    _add_model_args(j)
    s = sub.add_parser("serve", help="serve the judge over HTTP (JSON); see vqinsight.serve")
    _add_model_args(s)

    add_server_args(s)
    return ap


def load_judge(a: argparse.Namespace) -> Judge:
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the judge's output, not the loader's progress bars and notices
    hf_logging.disable_progress_bar()
    return Judge.load(
        a.model,
        cache_dir=a.cache_dir,
        batch_size=a.batch_size,
        max_new_tokens=a.max_new_tokens,
        engine=a.engine,
        fmt=a.fmt,
        style=a.style,
        nframes=a.nframes,
        max_pixels=a.max_pixels,
        min_pixels=a.min_pixels,
        image_max_pixels=a.image_max_pixels,
        scale=tuple(a.scale) if a.scale else None,
        compile=a.compile,
    )


# ----------------------------------------------------------------------------------------------- inputs
def _media_in(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES)


def _pairs_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV with columns ``a,b[,prompt]`` (pairs) or ``video[,prompt][,question]``; relative paths are
    relative to the CSV's folder."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    cols = set(rows[0]) if rows else set()
    if not ({"a", "b"} <= cols or "video" in cols):
        raise UsageError(f"{path}: a CSV needs columns a,b (pairs) or video; found {sorted(cols) or 'no rows'}")

    def where(p: str) -> str:
        return p if os.path.isabs(p) else str(path.parent / p)

    out = []
    for r in rows:
        media = [where(r["a"]), where(r["b"])] if {"a", "b"} <= cols else [where(r["video"])]
        out.append({"media": media, "prompt": r.get("prompt") or None, "question": r.get("question") or None})
    return out


def collect(inputs: Sequence[str], task: str | None, prompt: str | None, question: str | None):
    """(task, jobs, batch?) from the command line: each job is {media: [...], prompt, question}."""
    jobs: list[dict[str, Any]] = []
    batch = False
    for x in inputs:
        p = Path(x)
        if p.is_dir():
            found = _media_in(p)
            if not found:
                raise UsageError(f"{p}: no videos or images in this folder ({', '.join(MEDIA_SUFFIXES)})")
            jobs += [{"media": [m]} for m in found]
            batch = True
        elif p.suffix.lower() == ".csv" and p.is_file():
            jobs += _pairs_csv(p)
            batch = True
        elif any(c in x for c in "*?[") and not p.exists():
            found = sorted(m for m in glob.glob(x) if m.lower().endswith(MEDIA_SUFFIXES))
            if not found:
                raise UsageError(f"{x}: the pattern matches no videos or images")
            jobs += [{"media": [m]} for m in found]
            batch = True
        elif not p.exists():
            raise UsageError(f"{x}: file not found")
        else:
            jobs.append({"media": [x]})
    if task is None:
        if question:
            task = "vqa"
        elif any(len(j["media"]) == 2 for j in jobs) or (len(jobs) == 2 and not batch):
            task = "compare"
        else:
            task = "score"
    if task == "compare" and all(len(j["media"]) == 1 for j in jobs):
        if len(jobs) != 2 or batch:
            raise UsageError("compare: give two videos, or a CSV with columns a,b")
        jobs = [{"media": [jobs[0]["media"][0], jobs[1]["media"][0]]}]
    if task != "compare" and any(len(j["media"]) != 1 for j in jobs):
        raise UsageError(f"task {task} takes one video per judgment; a CSV of pairs is for compare")
    if len(jobs) > 1:
        batch = True
    for j in jobs:
        j["prompt"] = j.get("prompt") or prompt
        j["question"] = j.get("question") or question
    if task == "vqa" and any(not j["question"] for j in jobs):
        raise UsageError("task vqa needs --question (or a question column in the CSV)")
    return task, jobs, batch


# ----------------------------------------------------------------------------------------------- output
def human(r: dict[str, Any]) -> str:
    """A result as a few lines of text."""
    if r.get("error"):
        return f"{' vs '.join(r['media'])}: error: {r['error']}"
    lo, hi = (f"{x:g}" for x in r.get("scale") or (0, 0))
    if r["task"] == "score":
        s = "unparsed answer" if r["score"] is None else f"{r['score']:.2f} on {lo}-{hi}"
        head = f"{r['video']}: score {s}"
    elif r["task"] == "multidim":
        d = r["scores"]
        s = "unparsed answer" if d is None else ", ".join(f"{k} {v:.2f}" for k, v in d.items()) + f" (on {lo}-{hi})"
        head = f"{r['video']}: {s}"
    elif r["task"] == "vqa":
        head = f"{r['video']}: {r['question']} -> {r['answer'] or 'unparsed answer'} (P(yes) = {r['p_yes']:.3f})"
    else:
        ans = r["answers"]
        better = {"A": r["a"], "B": r["b"]}.get(r["verdict"], "neither (P(A) = 0.5)")
        head = (
            f"A = {r['a']}\nB = {r['b']}\nverdict: {r['verdict'] or 'tie'} ({better}), P(A better) = {r['p_a']:.3f} "
            f"from both orders; answers A-first: {ans['AB'] or 'unparsed'}, B-first: {ans['BA'] or 'unparsed'}"
        )
        return head + f"\nreasoning (A first): {r['reasoning']['AB']}\nreasoning (B first): {r['reasoning']['BA']}"
    return head + f"\nreasoning: {r['reasoning']}"


def csv_row(r: dict[str, Any]) -> dict[str, Any]:
    row = {k: r.get(k) for k in CSV_FIELDS}
    if r.get("error"):
        row["video"] = r["media"][0] if len(r["media"]) == 1 else None
        if len(r["media"]) == 2:
            row["a"], row["b"] = r["media"]
    for k, v in (r.get("scores") or {}).items():
        row[k] = v
    if isinstance(r.get("reasoning"), dict):
        row["reasoning"] = json.dumps(r["reasoning"], ensure_ascii=False)
    if isinstance(r.get("answers"), dict):
        row["answer"] = json.dumps(r["answers"])
    return row


def read_done(out: Path) -> set[str]:
    """Keys already in a results file; an unfinished last line (a killed run) is cut off."""
    if not out.exists():
        return set()
    raw = out.read_bytes()
    end = raw.rfind(b"\n") + 1
    if end < len(raw):
        log.warning("%s: dropping an unfinished last line (%d bytes) from an interrupted run", out, len(raw) - end)
        with open(out, "r+b") as f:
            f.truncate(end)
        raw = raw[:end]
    text = raw.decode("utf-8")
    if out.suffix.lower() == ".csv":
        return {r["key"] for r in csv.DictReader(io.StringIO(text)) if r.get("key")}
    done = set()
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                done.add(json.loads(line)["key"])
            except (ValueError, KeyError, TypeError) as e:
                raise UsageError(f"{out}: line {i} is not a result of this command; use another --out") from e
    return done


def append(out: Path, results: list[dict[str, Any]]) -> None:
    new = not out.exists() or out.stat().st_size == 0
    with open(out, "a", encoding="utf-8", newline="") as f:
        if out.suffix.lower() == ".csv":
            w = csv.DictWriter(f, CSV_FIELDS, lineterminator="\n")
            if new:
                w.writeheader()
            for r in results:
                w.writerow(csv_row(r))
        else:
            for r in results:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def judge_command(a: argparse.Namespace) -> int:
    task, jobs, batch = collect(a.inputs, a.task, a.prompt, a.question)
    if a.out is not None and a.out.suffix.lower() not in (".csv", ".jsonl"):
        raise UsageError(f"--out {a.out}: use a .csv or .jsonl file")
    done: set[str] = set()
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        done = read_done(a.out)
    todo = [j for j in jobs if job_key(task, j) not in done]
    if done:
        log.info("%s: %d of %d already judged; %d to go", a.out, len(jobs) - len(todo), len(jobs), len(todo))
    failed = 0
    if todo:
        if a.compile is None:
            a.compile = False  # a one-off run would wait longer for the compile than it saves
        judge = load_judge(a)
        step = max(1, a.batch_size if task != "compare" else max(1, a.batch_size // 2))
        # a bar on a terminal, log lines (start, every minute, end) in a log file
        with progress(
            total=len(jobs), initial=len(jobs) - len(todo), desc=f"judge ({task})", unit=task, disable=not batch
        ) as bar:
            for s in range(0, len(todo), step):
                results = judge.run(task, todo[s : s + step])
                failed += sum(1 for r in results if r.get("error"))
                if a.out is not None:
                    append(a.out, results)
                if a.out is None or not batch:
                    for r in results:
                        text = json.dumps(r, ensure_ascii=False) if a.json else human(r) + ("\n" if batch else "")
                        sys.stdout.write(text + "\n")
                        sys.stdout.flush()
                bar.update(len(results))
    if a.out is not None:
        log.info("results: %s (%d judged now, %d failed)", a.out, len(todo), failed)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    a = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("transformers", "vqinsight.models", "vqinsight.fastdecode", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if a.command == "judge":
            return judge_command(a)

        return serve_command(a, load_judge)
    except (UsageError, FileNotFoundError) as e:
        log.error("%s", e)
        return 2
    except (MediaError, ValueError) as e:
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
