"""The judge's prompt and answer formats: the chat of one row in each supported prompt format, the answer strings
behind the margin, and a completion parsed into a prediction.

Torch-free. Formats: ``vqinsight`` (this project's prompts, ``vqinsight.prompts``), ``release`` (the officially
released VQ-Insight checkpoints' prompts, on 0-100), ``q_insight`` (Q-Insight's score prompt) and
``unifiedreward_think`` (UnifiedReward-Think's pairwise convention).
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..answer_format import VIDEO_LABELS, VIDEO_NAMES
from ..parsing import completion_text, extract_answer, parse_choice, parse_dimensions, parse_score
from ..prompts import SYSTEM_PROMPT, build_messages

# Verdict -> the answer strings that express it. Their probabilities are summed per verdict (the strings start with
# different tokens, so the events are disjoint) and normalised over the two verdicts.
CANDIDATES: dict[str, dict[str, tuple[str, ...]]] = {
    "comparison": {"A": (VIDEO_NAMES["A"], "A"), "B": (VIDEO_NAMES["B"], "B")},
    "vqa": {"yes": ("yes", "Yes"), "no": ("no", "No")},
}
FORMATS = ("vqinsight", "release", "q_insight", "unifiedreward_think")
# Per-format answer strings where they differ from CANDIDATES (UnifiedReward-Think answers "Video 1 is better").
FORMAT_CANDIDATES: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "unifiedreward_think": {"comparison": {"A": ("Video 1",), "B": ("Video 2",)}},
}

# Prompts of the officially released VQ-Insight checkpoints (their demo scripts in xuanyuzhang21/VQ-Insight): used to
# evaluate those checkpoints as they were trained. Their scores are on 0-100 (multi-dimension keys spatial, temporal,
# consistency); a record keeps that answer (`pred_released`) and maps it linearly onto the run's scale (`pred`,
# `scale_map`): RELEASE_SCALE -> data.score_scale.
RELEASE_SCORE = "Please rate the quality of this video. The range of quality score is between 0 and 100."
RELEASE_MULTIDIM = (
    "This is an AIGC-generated video.Rate this video from three dimensions including spatial quality, temporal "
    "quality, and text-video alignment quality. Return the result in JSON format with the following keys: "
    '"spatial", "temporal", and "consistency". Each score should be a float between 0 and 100, rounded to two '
    "decimal places."
)
RELEASE_COMPARISON = (
    "Video A and Video B are results from two AIGC-generated methods.\nExplain and justify whether Video A or Video "
    "B is better.\nYou should consider the following aspects:\n(1) Visual quality,\n(2) Temporal consistency,\n"
    "(3) Dynamic degree,\n(4) Video authenticity.\nYour final answer should be either 'Video A' or 'Video B'.\n"
    "Please provide only the single option letter (e.g., A, B, C, D, etc.) within the <answer> </answer> tags."
)
RELEASE_SCALE = (0.0, 100.0)
# Q-Insight's score prompt (bytedance/Q-Insight, SCORE_QUESTION_PROMPT), with "picture" -> "video" for videos.
Q_INSIGHT_SCORE = (
    "What is your overall rating on the quality of this {media}? The rating should be a float between 1 and 5, "
    "rounded to two decimal places, with 1 representing very poor quality and 5 representing excellent quality. "
    'Return the final answer in JSON format with the following keys: "rating": The score.'
)

# UnifiedReward-Think's answer convention (CodeGoat24/UnifiedReward: reasoning in <think>, then "Video 1 is better" or
# "Video 2 is better" in <answer>); the instruction below is our wording of its pairwise video task.
UNIFIEDREWARD_COMPARISON = (
    'You are given a text caption and two videos generated from it. Caption: "{prompt}". Compare the two videos on '
    "semantic consistency with the caption, temporal coherence and authenticity: give each a score from 1 to 10 per "
    "dimension with a short rationale inside <think> and </think>. Then, after </think>, give the final judgment "
    "inside <answer> and </answer>: either 'Video 1 is better' or 'Video 2 is better'."
)


def messages(row: dict[str, Any], media: list, fmt: str, style: str, scale: tuple[float, float]) -> list[dict]:
    """The chat for one row in the given prompt format."""
    task = row["task"]
    kind = "image" if row["media_type"] == "image" else "video"
    if fmt == "vqinsight":
        return build_messages(
            task,
            media=media,
            prompt=row.get("prompt_text"),
            question=row.get("question"),
            scale=scale,
            media_type=kind,
            style=style,
        )
    system = [{"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]}]
    if fmt == "q_insight":
        if task not in ("image_score", "video_score"):
            raise ValueError(f"prompt format q_insight has no {task} prompt (score tasks only)")
        text = Q_INSIGHT_SCORE.format(media="picture" if kind == "image" else "video")
        content = [{"type": kind, kind: media[0]}, {"type": "text", "text": text}]
        return system + [{"role": "user", "content": content}]
    if fmt == "release":
        if task == "comparison":
            content = [
                {"type": "text", "text": VIDEO_LABELS[0]},
                {"type": "video", "video": media[0]},
                {"type": "text", "text": VIDEO_LABELS[1]},
                {"type": "video", "video": media[1]},
                {"type": "text", "text": RELEASE_COMPARISON},
            ]
        elif task in ("video_score", "multidim_score"):
            text = RELEASE_SCORE if task == "video_score" else RELEASE_MULTIDIM
            content = [{"type": "video", "video": media[0]}, {"type": "text", "text": text}]
        else:
            raise ValueError(f"prompt format release has no {task} prompt")
        return system + [{"role": "user", "content": content}]
    if fmt == "unifiedreward_think":
        if task != "comparison":
            raise ValueError(f"prompt format unifiedreward_think has no {task} prompt (comparison only)")
        text = UNIFIEDREWARD_COMPARISON.format(prompt=row.get("prompt_text") or "")
        content = [{"type": "video", "video": media[0]}, {"type": "video", "video": media[1]}]
        return [{"role": "user", "content": [*content, {"type": "text", "text": text}]}]
    raise ValueError(f"unknown prompt format {fmt!r}; valid: {', '.join(FORMATS)}")


def _rescale(x: float | None, src: tuple[float, float], dst: tuple[float, float]) -> float | None:
    if x is None:
        return None
    return dst[0] + (x - src[0]) * (dst[1] - dst[0]) / (src[1] - src[0])


def parse_prediction(task: str, completion: str, fmt: str, scale: tuple[float, float]) -> tuple[str | None, Any]:
    """(answer text, parsed prediction) of one completion; the prediction is None when unparsable, including a score
    off the scale its prompt asked for (``parsing.parse_score``)."""
    answer = extract_answer(completion_text(completion))
    if task in ("image_score", "video_score"):
        s = answer
        if fmt == "q_insight" and answer is not None:
            try:
                s = str(json.loads(answer).get("rating")) if answer.strip().startswith("{") else answer
            except (ValueError, AttributeError, RecursionError):  # RecursionError: deeply nested JSON
                s = answer
        # A number off the scale the prompt asked for is unparsed (the release's own 0-100, else the run's scale).
        pred = parse_score(s, RELEASE_SCALE if fmt == "release" else scale)
        if pred is not None and fmt == "release":
            pred = _rescale(pred, RELEASE_SCALE, scale)
        return answer, pred
    if task == "multidim_score":
        dims = parse_dimensions(answer, RELEASE_SCALE if fmt == "release" else scale)
        if dims is not None and fmt == "release":
            dims = {k: _rescale(v, RELEASE_SCALE, scale) for k, v in dims.items()}
        return answer, dims
    if fmt == "unifiedreward_think" and answer is not None:
        answer = re.sub(r"\bvideo\s*([12])\b", lambda m: "Video " + "AB"[int(m.group(1)) - 1], answer, flags=re.I)
    choice = parse_choice(answer)
    valid = ("A", "B") if task == "comparison" else ("yes", "no")
    return answer, choice if choice in valid else None


def released_prediction(task: str, completion: str) -> Any:
    """A ``release``-format prediction on the official checkpoints' own scale (0-100) with their own keys (multi-
    dimension: ``spatial``, ``temporal``, ``consistency``); None when unparsable or off that scale."""
    answer = extract_answer(completion_text(completion))
    if task in ("image_score", "video_score"):
        return parse_score(answer, RELEASE_SCALE)
    if task == "multidim_score":
        dims = parse_dimensions(answer, RELEASE_SCALE)
        return None if dims is None else {"spatial": dims["spatial"], "temporal": dims["temporal"],
                                          "consistency": dims["alignment"]}  # fmt: skip
    return None
