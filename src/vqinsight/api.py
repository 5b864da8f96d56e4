"""Judge your own videos from Python: load a judge directory, score, compare, ask, with typed results.

    from vqinsight.api import Judge

    judge = Judge.load("results/demo/grpo/stage2/full/full/model")     # any judge directory (see `settings_for`)
    r = judge.score("clip.mp4")                   # ScoreResult(score=3.42, reasoning="...", ...)
    c = judge.compare("a.mp4", "b.mp4", prompt="a cat surfing")   # CompareResult(verdict="A", p_a=0.71, ...)
    judge.multidim("clip.mp4", prompt="a cat surfing")            # spatial / temporal / alignment
    judge.ask("clip.mp4", question="Is the cat surfing?")          # yes/no
    judge.score_many([...]); judge.compare_many([(a, b), ...])     # batched

Every call goes through ``vqinsight.judge.Judge`` (the engine behind the Snakemake rules' ``python -m
vqinsight.judge``), so a video judged here gets the prediction a manifest row with the same media would get.
Comparisons are judged in both orders; ``p_a`` is the mean over the two orders of P(first video better) in the
original frame, the verdict is the side with ``p_a`` above 0.5, and both orders' reasoning is kept.

**Media settings** default to what the model was trained with: ``settings_for`` reads the model directory's
``meta.json`` (written by this project's warm start, GRPO stages and tiny builder) for frames, pixel budgets,
score scale and prompt style. A directory without one (the official VQ-Insight release, Q-Insight, a base
Qwen2.5-VL) gets the official release's media settings (``RELEASE_MEDIA``); pass ``fmt="release"`` (VQ-Insight)
or ``fmt="q_insight"`` (Q-Insight, score only) to use those models' released prompts.
"""

from __future__ import annotations

import ast
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .judge.engine import MAX_NEW_TOKENS, open_judge
from .judge.formats import FORMATS
from .parsing import completion_text, extract_think
from .prompts import STYLES
from .records import Item, expand
from .video import MediaError

log = logging.getLogger("vqinsight.api")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".gif")
# The official VQ-Insight release's media settings (its code: 16 frames, VIDEO_MIN/MAX_PIXELS 128*28*28, image
# MAX_PIXELS 320*28*28, scores on 1-5 after its 0-100 answers are mapped): used for a model directory without a
# meta.json. They equal the paper config's data.* values.
RELEASE_MEDIA = {"nframes": 16, "max_pixels": 100352, "min_pixels": 100352, "image_max_pixels": 250880}
DEFAULT_SCALE = (1.0, 5.0)
TASK_NAMES = {"score": "video_score", "multidim": "multidim_score", "compare": "comparison", "vqa": "vqa"}


def default_cache_dir() -> Path:
    """Decoded frames of judged videos: ``$VQINSIGHT_CACHE`` or ``$XDG_CACHE_HOME/vqinsight/frames``."""
    if os.environ.get("VQINSIGHT_CACHE"):
        return Path(os.environ["VQINSIGHT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vqinsight" / "frames"


@dataclass(frozen=True)
class Settings:
    """How a judge sees media and which prompts it gets. ``source`` says where the values came from."""

    nframes: int
    max_pixels: int
    min_pixels: int
    image_max_pixels: int
    scale: tuple[float, float] = DEFAULT_SCALE
    fmt: str = "vqinsight"
    style: str = "full"
    source: str = "defaults"

    def __post_init__(self) -> None:
        if self.nframes < 1 or self.max_pixels < 1 or self.image_max_pixels < 1 or self.min_pixels < 0:
            raise ValueError(f"frames and pixel budgets must be positive: {self}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")
        if not self.scale[0] < self.scale[1]:
            raise ValueError(f"score scale must be (lo, hi) with lo < hi, got {self.scale}")
        if self.fmt not in FORMATS:
            raise ValueError(f"unknown prompt format {self.fmt!r}; valid: {', '.join(FORMATS)}")
        if self.style not in STYLES:
            raise ValueError(f"unknown prompt style {self.style!r}; valid: {', '.join(STYLES)}")


def _number(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _pair(v: Any) -> tuple[float, float] | None:
    if isinstance(v, str):  # GRPO's meta.json keeps its argparse values as strings: "(1.0, 5.0)", "[1.0, 5.0]"
        try:
            v = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            return None
    if isinstance(v, list | tuple) and len(v) == 2 and all(_number(x) is not None for x in v):
        return (float(v[0]), float(v[1]))
    return None


def settings_for(model_dir: str | os.PathLike, **overrides: Any) -> Settings:
    """Media and prompt settings of a judge directory from its ``meta.json``; ``overrides`` (not None) win.

    Reads the warm start's ``config`` (nframes, max_pixels, min_pixels, image_max_pixels, scale, style), a GRPO
    stage's ``config.args`` (the same, as strings) and ``config.recipe.prompt_style``, and the tiny builder's
    ``video_pixels`` / ``image_pixels``; anything missing comes from ``RELEASE_MEDIA``."""
    path = Path(model_dir)
    meta_path = path / "meta.json"
    found: dict[str, Any] = {}
    source = "official release defaults (no meta.json)"
    if meta_path.is_file():
        try:
            cfg = json.loads(meta_path.read_text()).get("config") or {}
        except (OSError, ValueError, AttributeError) as e:
            raise ValueError(f"{meta_path}: unreadable model metadata ({e})") from e
        args = cfg.get("args") if isinstance(cfg.get("args"), dict) else {}
        flat = {**args, **{k: v for k, v in cfg.items() if k != "args"}}
        for key in ("nframes", "max_pixels", "min_pixels", "image_max_pixels"):
            n = _number(flat.get(key))
            if n is not None:
                found[key] = int(n)
        vp, ip = _pair(flat.get("video_pixels")), _pair(flat.get("image_pixels"))
        if vp:
            found.setdefault("min_pixels", int(vp[0]))
            found.setdefault("max_pixels", int(vp[1]))
        if ip:
            found.setdefault("image_max_pixels", int(ip[1]))
        if _pair(flat.get("scale")):
            found["scale"] = _pair(flat.get("scale"))
        recipe = cfg.get("recipe") if isinstance(cfg.get("recipe"), dict) else {}
        style = recipe.get("prompt_style") or flat.get("style")
        if style in STYLES:
            found["style"] = style
        source = f"{meta_path}" + ("" if found else " (no media settings in it: official release defaults)")
    values: dict[str, Any] = {**RELEASE_MEDIA, **found, "source": source}
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "max_pixels" in found and "image_max_pixels" not in found and overrides.get("image_max_pixels") is None:
        values["image_max_pixels"] = values["max_pixels"]
    values["min_pixels"] = min(values["min_pixels"], values["max_pixels"])
    values["scale"] = tuple(float(x) for x in values.get("scale", DEFAULT_SCALE))
    return Settings(**values)


# ----------------------------------------------------------------------------------------------- typed results
@dataclass
class ScoreResult:
    """Overall quality of one video (or image) on ``scale``; ``score`` is None when the answer was unparsable."""

    video: str
    score: float | None
    scale: tuple[float, float]
    answer: str | None
    reasoning: str
    prompt: str | None = None
    task: str = "score"


@dataclass
class MultiDimResult:
    """Spatial, temporal and text-video alignment scores (None when the answer was unparsable)."""

    video: str
    scores: dict[str, float] | None
    scale: tuple[float, float]
    answer: str | None
    reasoning: str
    prompt: str | None = None
    task: str = "multidim"


@dataclass
class CompareResult:
    """Preference between ``a`` and ``b``: ``p_a`` = P(A better), mean of both orders in the original frame."""

    a: str
    b: str
    verdict: str | None  # "A", "B" or None (p_a exactly 0.5)
    p_a: float
    answers: dict[str, str | None]  # parsed answer per order, in the original frame ("AB": as given, "BA": swapped)
    reasoning: dict[str, str]  # per order
    prompt: str | None = None
    consistent: bool = field(default=False)  # both orders chose the same video
    task: str = "compare"


@dataclass
class AnswerResult:
    """Yes/no answer to a question about one video, with P(yes) from the answer-string probabilities."""

    video: str
    question: str
    answer: str | None
    p_yes: float
    reasoning: str
    prompt: str | None = None
    task: str = "vqa"


Result = ScoreResult | MultiDimResult | CompareResult | AnswerResult


def as_dict(result: Result) -> dict[str, Any]:
    """A JSON-ready dict of a result (tuples as lists)."""
    return json.loads(json.dumps(asdict(result)))


def media_type_of(path: str) -> str:
    """ "image" for image file names (IMAGE_SUFFIXES), else "video"."""
    return "image" if str(path).lower().endswith(IMAGE_SUFFIXES) else "video"


def _reasoning(completion: str) -> str:
    think = extract_think(completion_text(completion))
    return (think if think is not None else completion_text(completion)).strip()


class Judge:
    """A loaded judge. Build it with ``Judge.load``; every method takes file paths."""

    def __init__(self, engine: Any, settings: Settings, batch_size: int = 8, model_dir: str = "") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.engine, self.settings, self.batch_size, self.model_dir = engine, settings, int(batch_size), model_dir
        self._n = 0

    @classmethod
    def load(
        cls,
        model_dir: str | os.PathLike,
        *,
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 8,
        max_new_tokens: int = MAX_NEW_TOKENS,
        engine: str = "static",
        reader: str = "decord",
        dtype: str = "auto",
        vision_cache: int = 64,
        trust_remote_code: bool = False,
        compile: bool | None = None,
        **settings: Any,
    ) -> Judge:
        """Load a judge directory. ``settings`` override ``settings_for``'s values: nframes, max_pixels,
        min_pixels, image_max_pixels, scale, fmt, style. Frames are cached under ``cache_dir``
        (``default_cache_dir()``). Runs on the GPU when there is one (bfloat16), else on the CPU (float32).
        ``compile``: torch.compile the static engine's decode step (None: on CUDA only; it pays off over many
        batches, after about a minute of compiling on the 7B)."""
        from .media import MediaSpec

        path = Path(model_dir)
        if not path.exists():
            raise FileNotFoundError(f"{path}: model directory not found")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a model directory (no config.json)")
        s = settings_for(path, **settings)
        spec = MediaSpec(
            str(cache_dir or default_cache_dir()), s.nframes, s.max_pixels, s.min_pixels, reader, s.image_max_pixels
        )
        log.info(
            "judge %s: %d frames, %d-%d pixels, scale %s, prompts %s/%s (from %s)",
            path,
            s.nframes,
            s.min_pixels,
            s.max_pixels,
            s.scale,
            s.fmt,
            s.style,
            s.source,
        )
        try:
            eng = open_judge(
                str(path),
                spec,
                fmt=s.fmt,
                style=s.style,
                scale=s.scale,
                max_new_tokens=max_new_tokens,
                engine=engine,
                cache_items=vision_cache,
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                compile=compile,
            )
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"{path}: cannot load the judge: {e}") from e
        return cls(eng, s, batch_size, str(path))

    # -- media ---------------------------------------------------------------------------------------------
    def check(self, path: str | os.PathLike) -> str:
        """Decode ``path`` (frames go to the cache, so judging it later decodes nothing); MediaError naming the file
        and the reason when it is missing, not a video or image, or truncated."""
        p = str(path)
        self.engine.loader(p, media_type_of(p))
        return p

    # -- single --------------------------------------------------------------------------------------------
    def score(self, video: str | os.PathLike, prompt: str | None = None) -> ScoreResult:
        """Overall quality score with the reasoning."""
        return self.score_many([video], [prompt])[0]

    def multidim(self, video: str | os.PathLike, prompt: str | None = None) -> MultiDimResult:
        """Spatial / temporal / alignment scores; ``prompt`` is the text the video was generated from."""
        return self.multidim_many([video], [prompt])[0]

    def compare(self, a: str | os.PathLike, b: str | os.PathLike, prompt: str | None = None) -> CompareResult:
        """Which of two videos is better, judged in both orders."""
        return self.compare_many([(a, b)], [prompt])[0]

    def ask(self, video: str | os.PathLike, question: str, prompt: str | None = None) -> AnswerResult:
        """A yes/no question about a video (the VQA task)."""
        return self.ask_many([video], [question], [prompt])[0]

    # -- batched -------------------------------------------------------------------------------------------
    def score_many(self, videos: Sequence, prompts: Sequence[str | None] | None = None) -> list[ScoreResult]:
        return self._scores(ScoreResult, None, videos, prompts)

    def multidim_many(self, videos: Sequence, prompts: Sequence[str | None] | None = None) -> list[MultiDimResult]:
        return self._scores(MultiDimResult, "multidim_score", videos, prompts)

    def _scores(self, result: type, task: str | None, videos: Sequence, prompts: Sequence[str | None] | None) -> list:
        """One single-video judgment per video (score or multi-dimension), as ``result`` records."""
        rows = [self._row(task, [v], p) for v, p in zip(videos, _prompts(prompts, len(videos)), strict=True)]
        return [
            result(
                row["media"][0],
                rec["pred"],
                self.settings.scale,
                rec["answer"],
                _reasoning(rec["completion"]),
                row["prompt_text"],
            )
            for row, rec in zip(rows, self._run(rows), strict=True)
        ]

    def ask_many(
        self, videos: Sequence, questions: Sequence[str], prompts: Sequence[str | None] | None = None
    ) -> list[AnswerResult]:
        if len(questions) != len(videos) or any(not q for q in questions):
            raise ValueError("ask: one non-empty question per video")
        rows = [
            self._row("vqa", [v], p, question=q)
            for v, q, p in zip(videos, questions, _prompts(prompts, len(videos)), strict=True)
        ]
        out = []
        for row, rec in zip(rows, self._run(rows), strict=True):
            p_yes = float(rec["p"]["yes"])
            out.append(
                AnswerResult(
                    row["media"][0],
                    row["question"],
                    rec["pred"],
                    p_yes,
                    _reasoning(rec["completion"]),
                    row["prompt_text"],
                )
            )
        return out

    def compare_many(
        self, pairs: Sequence[tuple[Any, Any]], prompts: Sequence[str | None] | None = None
    ) -> list[CompareResult]:
        rows = [
            self._row("comparison", [a, b], p) for (a, b), p in zip(pairs, _prompts(prompts, len(pairs)), strict=True)
        ]
        recs = self._run(rows)  # per row: AB then BA
        out = []
        for i, row in enumerate(rows):
            ab, ba = recs[2 * i], recs[2 * i + 1]
            # P(original A better): A is the first video in AB, the second in BA
            p_a = 0.5 * (float(ab["p"]["A"]) + 1.0 - float(ba["p"]["A"]))
            answers = {"AB": ab["pred"], "BA": {"A": "B", "B": "A"}.get(ba["pred"])}
            verdict = "A" if p_a > 0.5 else "B" if p_a < 0.5 else None
            out.append(
                CompareResult(
                    row["media"][0],
                    row["media"][1],
                    verdict,
                    p_a,
                    answers,
                    {"AB": _reasoning(ab["completion"]), "BA": _reasoning(ba["completion"])},
                    row["prompt_text"],
                    answers["AB"] is not None and answers["AB"] == answers["BA"],
                )
            )
        return out

    def run(self, task: str, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Result dicts (``as_dict`` plus ``key``) for jobs ``{media: [paths], prompt, question}`` of one task
        (score, multidim, compare, vqa), in order; a file that cannot be judged gets ``error`` in its result."""
        if task not in TASK_NAMES:
            raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASK_NAMES)}")
        out: list[dict[str, Any] | None] = [None] * len(jobs)
        good = []
        for i, j in enumerate(jobs):
            try:
                for m in j["media"]:
                    self.check(m)
                good.append(i)
            except (MediaError, ValueError) as e:
                out[i] = {"key": job_key(task, j), "task": task, "media": j["media"], "error": str(e)}
        if good:
            g = [jobs[i] for i in good]
            if task == "score":
                res = self.score_many([j["media"][0] for j in g], [j["prompt"] for j in g])
            elif task == "multidim":
                res = self.multidim_many([j["media"][0] for j in g], [j["prompt"] for j in g])
            elif task == "vqa":
                res = self.ask_many([j["media"][0] for j in g], [j["question"] for j in g], [j["prompt"] for j in g])
            else:
                res = self.compare_many([tuple(j["media"]) for j in g], [j["prompt"] for j in g])
            for i, r in zip(good, res, strict=True):
                out[i] = {"key": job_key(task, jobs[i]), **as_dict(r)}
        return out  # type: ignore[return-value]

    # -- plumbing ------------------------------------------------------------------------------------------
    def _row(self, task: str | None, media: list, prompt: str | None, question: str | None = None) -> dict:
        paths = [str(m) for m in media]
        kinds = {media_type_of(p) for p in paths}
        if len(kinds) != 1:
            raise ValueError(f"mixed images and videos in one judgment: {paths}")
        kind = kinds.pop()
        if task is None:
            task = "image_score" if kind == "image" else "video_score"
        elif kind == "image":
            raise ValueError(f"task {task} takes videos, got image(s) {paths}")
        self._n += 1
        return {
            "sample_id": f"q{self._n}",
            "task": task,
            "media_type": kind,
            "media": paths,
            "prompt_text": prompt,
            "question": question,
            "gt_score": None,
            "gt_scores": None,
            "gt_choice": None,
        }

    def _run(self, rows: list[dict]) -> list[dict]:
        """Engine records for rows (comparisons: AB then BA per row), batched per task, in input order."""
        for r in rows:
            for m in r["media"]:
                self.check(m)
        items = expand(rows)
        out: dict[str, dict] = {}
        by_task: dict[str, list[Item]] = {}
        for it in items:
            by_task.setdefault(it.row["task"], []).append(it)
        for task_items in by_task.values():
            for s in range(0, len(task_items), self.batch_size):
                for rec in self.engine.judge(task_items[s : s + self.batch_size]):
                    out[rec["key"]] = rec
        return [out[it.key] for it in items]


def job_key(task: str, job: dict[str, Any]) -> str:
    """The identity of one judgment in a results file: task, media, prompt, question."""
    return "|".join([task, *job["media"], job.get("prompt") or "", job.get("question") or ""])


def _prompts(prompts: Sequence[str | None] | None, n: int) -> list[str | None]:
    if prompts is None:
        return [None] * n
    prompts = list(prompts)
    if len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompts for {n} items")
    return prompts


__all__ = [
    "AnswerResult",
    "CompareResult",
    "Judge",
    "MediaError",
    "MultiDimResult",
    "RELEASE_MEDIA",
    "Result",
    "ScoreResult",
    "Settings",
    "as_dict",
    "default_cache_dir",
    "media_type_of",
    "settings_for",
]
