"""Prompt templates for every VQ-Insight task, adapted from the official VQ-Insight / Q-Insight prompts.

Every template is a module constant so the exact wording can be reviewed in one place. ``build_messages`` turns a
task plus its media into a chat in the HF / Qwen2-VL conversational format, e.g.::

    [{"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
     {"role": "user", "content": [{"type": "video", "video": "a.mp4"}, {"type": "text", "text": "..."}]}]
"""

from __future__ import annotations

from typing import Any

from .answer_format import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    DIMENSIONS,
    THINK_CLOSE,
    THINK_OPEN,
    VIDEO_LABELS,
    VIDEO_NAMES,
    YES_NO,
)

TASKS: tuple[str, ...] = ("image_score", "video_score", "multidim_score", "comparison", "vqa")

SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the answer. "
    f"The reasoning process and answer are enclosed within {THINK_OPEN}{THINK_CLOSE} and {ANSWER_OPEN}{ANSWER_CLOSE} "
    "tags."
)
# the answer format as the instructions spell it (answer_format holds the strings)
_THINK_TAGS, _ANSWER_TAGS = f"{THINK_OPEN} {THINK_CLOSE}", f"{ANSWER_OPEN} {ANSWER_CLOSE}"
_DIM_KEYS = ", ".join(f'"{d}"' for d in DIMENSIONS[:-1]) + f' and "{DIMENSIONS[-1]}"'

# -- single-score quality rating (Q-Insight wording) -------------------------------------------------------------
SCORE_TEMPLATE = (
    "What is your overall rating on the quality of this {media}? The rating should be a float between {lo} and "
    "{hi}, rounded to two decimal places, with {lo} representing very poor quality and {hi} representing "
    "excellent quality."
)
SCORE_ANSWER = (
    f"Provide your reasoning between {_THINK_TAGS} tags and the final score (only the number) between "
    f"{_ANSWER_TAGS} tags."
)

# -- multi-dimensional rating (stage 1/3: spatial, temporal, text-video alignment) ----------------------------
MULTIDIM_PROMPT_TEMPLATE = 'This is an AI-generated video made from the prompt: "{prompt}". '
MULTIDIM_TEMPLATE = (
    "Rate it on three dimensions: spatial quality, temporal quality, and text-video alignment. Each score is a "
    "float between {lo} and {hi}, rounded to two decimal places."
)
MULTIDIM_ANSWER = (
    f"Provide your reasoning between {_THINK_TAGS} tags and give the final answer between {_ANSWER_TAGS} "
    f"tags as a JSON object with the keys {_DIM_KEYS}."
)

# -- pairwise comparison (stage 2) --------------------------------------------------------------------------------
COMPARISON_PROMPT_TEMPLATE = (
    f'{VIDEO_NAMES["A"]} and {VIDEO_NAMES["B"]} were generated from the prompt: "{{prompt}}".\n'
)
COMPARISON_QUESTION = (
    "Which video is better? Consider (1) visual quality, (2) temporal consistency, (3) dynamic degree, "
    "(4) text-video alignment and authenticity."
)
COMPARISON_ANSWER = (
    f"Provide your reasoning between {_THINK_TAGS} tags. Your final answer between {_ANSWER_TAGS} tags "
    f"must be either '{VIDEO_NAMES['A']}' or '{VIDEO_NAMES['B']}'."
)

# -- yes/no question answering (stage 2, VisionReward checklist) --------------------------------------------------
VQA_TEMPLATE = 'This is an AI-generated video made from the prompt: "{prompt}".\nQuestion: {question}'
VQA_ANSWER = (
    f"Provide your reasoning between {_THINK_TAGS} tags and answer '{YES_NO[0]}' or '{YES_NO[1]}' between "
    f"{_ANSWER_TAGS} tags."
)


# -- short style (the embedded demo) -------------------------------------------------------------------------------
# A tiny randomly initialised VLM learns from the pixels only when the prompt is a handful of tokens: long
# instructions drown the few visual tokens (a measured CPU feasibility run). The short style keeps a
# task tag so mixed-task batches stay distinguishable, and no system prompt. The answer format is the same.
STYLES: tuple[str, ...] = ("full", "short")
SHORT_TEXT: dict[str, str] = {
    "image_score": "",
    "video_score": "score",
    "multidim_score": "dims",
    "comparison": "better?",
    "vqa": "{question}",
}
SHORT_LABELS: tuple[str, str] = ("A:", "B:")


def _fmt(x: float) -> str:
    """Format a scale bound without a spurious '.0' (1.0 -> '1', 2.5 -> '2.5')."""
    return f"{float(x):g}"


def score_prompt(scale: tuple[float, float] = (1, 5), media_type: str = "video") -> str:
    """User text of the ``image_score`` / ``video_score`` tasks."""
    media = "picture" if media_type == "image" else "video"
    body = SCORE_TEMPLATE.format(media=media, lo=_fmt(scale[0]), hi=_fmt(scale[1]))
    return f"{body} {SCORE_ANSWER}"


def multidim_prompt(prompt: str | None, scale: tuple[float, float] = (1, 5)) -> str:
    """User text of the ``multidim_score`` task (the prompt sentence is omitted when ``prompt`` is None)."""
    head = MULTIDIM_PROMPT_TEMPLATE.format(prompt=prompt) if prompt is not None else ""
    body = MULTIDIM_TEMPLATE.format(lo=_fmt(scale[0]), hi=_fmt(scale[1]))
    return f"{head}{body} {MULTIDIM_ANSWER}"


def comparison_prompt(prompt: str | None) -> str:
    """User text of the ``comparison`` task (the prompt sentence is omitted when ``prompt`` is None)."""
    head = COMPARISON_PROMPT_TEMPLATE.format(prompt=prompt) if prompt is not None else ""
    return f"{head}{COMPARISON_QUESTION} {COMPARISON_ANSWER}"


def vqa_prompt(prompt: str | None, question: str | None) -> str:
    """User text of the ``vqa`` task."""
    if question is None:
        raise ValueError("task 'vqa' needs a question")
    if prompt is None:
        body = f"Question: {question}"
    else:
        body = VQA_TEMPLATE.format(prompt=prompt, question=question)
    return f"{body} {VQA_ANSWER}"


def user_text(
    task: str,
    *,
    prompt: str | None = None,
    question: str | None = None,
    scale: tuple[float, float] = (1, 5),
) -> str:
    """The instruction text of ``task`` (without media parts)."""
    if task == "image_score":
        return score_prompt(scale, "image")
    if task == "video_score":
        return score_prompt(scale, "video")
    if task == "multidim_score":
        return multidim_prompt(prompt, scale)
    if task == "comparison":
        return comparison_prompt(prompt)
    if task == "vqa":
        return vqa_prompt(prompt, question)
    raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")


def _media_part(item: Any, media_type: str) -> dict[str, Any]:
    """One ``{"type": "video", "video": item}`` (or image) content part."""
    return {"type": media_type, media_type: item}


def build_messages(
    task: str,
    *,
    media: list,
    prompt: str | None = None,
    question: str | None = None,
    scale: tuple[float, float] = (1, 5),
    system: bool = True,
    media_type: str = "video",
    style: str = "full",
) -> list[dict]:
    """Chat for ``task`` in the HF / Qwen2-VL conversational format.

    Media parts come first, then the instruction. For ``comparison`` the layout follows the official code:
    ``[text "Video A:", video, text "Video B:", video, text question]``. ``image_score`` always uses image parts.
    ``style="short"`` (the demo) replaces the instruction by a task tag and never adds the system prompt.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    if media_type not in ("image", "video"):
        raise ValueError(f"media_type must be 'image' or 'video', got {media_type!r}")
    if style not in STYLES:
        raise ValueError(f"unknown prompt style {style!r}; valid: {', '.join(STYLES)}")
    kind = "image" if task == "image_score" else media_type
    if style == "short":
        if task == "vqa" and question is None:
            raise ValueError("task 'vqa' needs a question")
        text, labels, system = SHORT_TEXT[task].format(question=question), SHORT_LABELS, False
    else:
        text, labels = user_text(task, prompt=prompt, question=question, scale=scale), VIDEO_LABELS
    items = list(media)
    content: list[dict[str, Any]] = []
    if task == "comparison":
        if len(items) != 2:
            raise ValueError(f"task 'comparison' needs exactly 2 media items, got {len(items)}")
        for label, item in zip(labels, items, strict=True):
            content.append({"type": "text", "text": label})
            content.append(_media_part(item, kind))
    else:
        content.extend(_media_part(item, kind) for item in items)
    if text:
        content.append({"type": "text", "text": text})
    messages: list[dict] = []
    if system:
        messages.append({"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]})
    messages.append({"role": "user", "content": content})
    return messages
