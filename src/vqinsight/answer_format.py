"""The judge's answer format, in one place: the reasoning inside ``<think>…</think>``, then the answer inside
``<answer>…</answer>``; a comparison introduces its videos as "Video A:" and "Video B:" and is answered "Video A" or
"Video B", a yes/no question "yes" or "no", a score with a number, a multi-dimension score with a JSON object of
``DIMENSIONS`` (or, in the demo's short style, the three numbers).

The prompts (``prompts``), the parsers (``parsing``), the judge's margin candidates (``judge.formats``), the SFT
targets (``baselines.sft``), the GRPO trainer's answer mask and the tiny model's vocabulary read the strings from
here. Prompt formats of other judges (the official release's, Q-Insight's, UnifiedReward-Think's) are quoted
verbatim in ``judge.formats``.
"""

from __future__ import annotations

from collections.abc import Mapping

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TAGS: tuple[str, ...] = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

#: comparison verdict -> the answer that names it, and the label that introduces each video in the prompt
VIDEO_NAMES: dict[str, str] = {"A": "Video A", "B": "Video B"}
VIDEO_LABELS: tuple[str, str] = (f"{VIDEO_NAMES['A']}:", f"{VIDEO_NAMES['B']}:")
YES_NO: tuple[str, str] = ("yes", "no")
#: canonical dimension names of the multi-dimension task, in answer order
DIMENSIONS: tuple[str, ...] = ("spatial", "temporal", "alignment")


def completion(think: str, answer: str) -> str:
    """A completion in the answer format: ``<think>{think}</think><answer>{answer}</answer>``."""
    return f"{THINK_OPEN}{think}{THINK_CLOSE}{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"


def score_answer(value: float, decimals: int = 2) -> str:
    """A score as the judge answers it (two decimals by default)."""
    return f"{float(value):.{decimals}f}"


def dimensions_answer(scores: Mapping[str, float], style: str = "full", decimals: int = 2) -> str:
    """Multi-dimension scores as the judge answers them: a JSON object of ``DIMENSIONS``, or in the short style the
    three numbers in that order."""
    values = [f"{float(scores[k]):.{decimals}f}" for k in DIMENSIONS]
    if style == "short":
        return " ".join(values)
    return "{" + ", ".join(f'"{k}": {v}' for k, v in zip(DIMENSIONS, values, strict=True)) + "}"


def answer_prefix(text: str) -> str:
    """The completion up to and including ``<answer>`` (appended if the judge never opened the tag)."""
    i = text.find(ANSWER_OPEN)
    if i >= 0:
        return text[: i + len(ANSWER_OPEN)]
    j = text.find(ANSWER_CLOSE)
    head = text[:j] if j >= 0 else text
    return head + ANSWER_OPEN
