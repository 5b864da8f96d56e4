"""Parsing of model completions: ``<think>``/``<answer>`` blocks, scores, multi-dimension scores and choices.

Every public function is total: it never raises, whatever it is given. ``None`` and non-string inputs are treated
as the empty string, and "nothing usable" is reported as ``None`` (or ``False`` / ``""``).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from typing import Any

from .answer_format import ANSWER_CLOSE, ANSWER_OPEN, DIMENSIONS, TAGS, THINK_CLOSE, THINK_OPEN

logger = logging.getLogger(__name__)

#: Parsed numbers with a larger magnitude are rejected as garbage.
MAX_ABS_VALUE = 1e6
#: Accepted spellings of each dimension (the official release calls alignment "consistency").
_DIM_ALIASES = {"spatial": "spatial", "temporal": "temporal", "alignment": "alignment", "consistency": "alignment"}

# Innermost blocks only: the body may not contain another opening or closing tag of the same name.
_T0, _T1, _A0, _A1 = (re.escape(t) for t in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE))
_BLOCK = {
    name: re.compile(rf"{o}((?:(?!{o}|{c}).)*){c}", re.IGNORECASE | re.DOTALL)
    for name, o, c in (("think", _T0, _T1), ("answer", _A0, _A1))
}
_TAG_COUNT = {t: re.compile(re.escape(t), re.IGNORECASE) for t in TAGS}
_WELL_FORMED = re.compile(rf"\s*{_T0}.*?{_T1}\s*{_A0}.*?{_A1}\s*", re.DOTALL)
_NUMBER = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_DIM_LOOSE = re.compile(
    r"""["']?\b(spatial|temporal|alignment|consistency)(?:[ _-]?(?:quality|score))?["']?\s*[:=]\s*["']?"""
    rf"({_NUMBER.pattern})",
    re.IGNORECASE,
)
_BRACES = re.compile(r"\{.*\}", re.DOTALL)

# Choice parsing. Letters count only in an unambiguous verdict form ("Video A", "option a", "(a)"), never as the
# article "a" inside a sentence.
_STRIP_CHARS = " \t\r\n.,;:!?\"'`*_()[]{}<>"
_PREFIX = re.compile(
    r"^(?:(?:the|my)\s+)?(?:final\s+)?(?:answer|choice|verdict|winner|preference|prediction)\b\s*(?:is|:|-|=)?\s*"
)
_EXACT = {
    "a": "A",
    "b": "B",
    "video a": "A",
    "video b": "B",
    "videoa": "A",
    "videob": "B",
    "option a": "A",
    "option b": "B",
    "video 1": "A",
    "video 2": "B",
    "first video": "A",
    "second video": "B",
    "the first video": "A",
    "the second video": "B",
    "yes": "yes",
    "no": "no",
    "y": "yes",
    "n": "no",
    "true": "yes",
    "false": "no",
}
_LETTER = re.compile(r"\bvideo\s*([ab])\b|\boption\s*([ab])\b|\(([ab])\)")
_BETTER = re.compile(
    r"\bvideo\s*([ab])\s+(?:is|was|looks|seems)?\s*(?:clearly\s+|slightly\s+|much\s+)?"
    r"(?:better|superior|preferred|preferable|wins)\b"
)
_TIE = re.compile(r"\b(?:tie|tied|same|equal|equally|similar|draw)\b")
_YES = re.compile(r"\byes\b")
_NO = re.compile(r"\bno\b")
_LEADING_YES_NO = re.compile(r"^(yes|no)\b")


# The official VQ-Insight code's own parsing (xuanyuzhang21/VQ-Insight, grpo_md_aigc.py), reproduced for the
# rewards' official variants: case-sensitive tags, the FIRST answer block, Python's float() of the whole answer,
# braces and a fixed key order for the three dimensions.
_OFFICIAL_FORMAT = re.compile(rf"{_T0}.*?{_T1}\s*{_A0}.*?{_A1}", re.DOTALL)  # fullmatch, no strip
_OFFICIAL_ANSWER = re.compile(rf"{_A0}\s*(.*?)\s*{_A1}", re.DOTALL)
_OFFICIAL_DIMS = re.compile(
    rf"{_A0}\s*\{{"
    + r"\s*,".join(rf'\s*"{key}"\s*:\s*([\d.]+)' for key in ("spatial", "temporal", "consistency"))
    + rf"\s*\}}\s*{_A1}",
    re.DOTALL,
)


def _as_str(text: Any) -> str:
    """``text`` if it is a string, else ``""``."""
    return text if isinstance(text, str) else ""


def completion_text(completion: Any) -> str:
    """Text of a plain-string or TRL conversational completion (``[{"role": "assistant", "content": ...}]``)."""
    if isinstance(completion, str):
        return completion
    if not isinstance(completion, list | tuple):
        return ""
    chunks: list[str] = []
    for message in completion:
        if not isinstance(message, Mapping) or message.get("role", "assistant") != "assistant":
            continue
        content = message.get("content")
        if isinstance(content, str):
            chunks.append(content)
        elif isinstance(content, list | tuple):
            for part in content:
                if (
                    isinstance(part, Mapping)
                    and part.get("type", "text") == "text"
                    and isinstance(part.get("text"), str)
                ):
                    chunks.append(part["text"])
    return "".join(chunks)


def _last_block(text: Any, tag: str) -> str | None:
    """Stripped body of the last innermost ``<tag>...</tag>`` block."""
    bodies = _BLOCK[tag].findall(_as_str(text))
    return bodies[-1].strip() if bodies else None


def extract_think(text: Any) -> str | None:
    """Content of the last ``<think>...</think>`` block (case-insensitive), stripped; None when absent."""
    return _last_block(text, "think")


def extract_answer(text: Any) -> str | None:
    """Content of the last ``<answer>...</answer>`` block (case-insensitive), stripped; None when absent."""
    return _last_block(text, "answer")


def is_well_formed(text: Any) -> bool:
    """Official format check: one ``<think>`` block then one ``<answer>`` block, nothing else around them."""
    s = _as_str(text)
    if any(len(rx.findall(s)) != 1 for rx in _TAG_COUNT.values()):
        return False  # repeated, nested, unclosed or differently-cased tags
    return _WELL_FORMED.fullmatch(s) is not None


def is_well_formed_official(text: Any) -> bool:
    """The official format check: the whole text is ``<think>...</think>``, optional whitespace, then
    ``<answer>...</answer>`` (case-sensitive; no whitespace around; repeated or nested blocks pass when the whole
    text still fits)."""
    return _OFFICIAL_FORMAT.fullmatch(_as_str(text)) is not None


def official_answer(text: Any) -> str:
    """The official code's answer: the body of the FIRST ``<answer>...</answer>`` (case-sensitive), stripped; "" if
    there is none."""
    match = _OFFICIAL_ANSWER.search(_as_str(text))
    return match.group(1).strip() if match else ""


def official_number(answer: Any) -> float | None:
    """The official code's number: Python's ``float()`` of the whole answer with commas removed ("4.5", " 1e0",
    "1,5" -> 15.0; "Score: 3.5" -> None). NaN and infinities are None (officially NaN earns full credit: a bug)."""
    try:
        value = float(_as_str(answer).replace(",", ""))
    except (ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def official_dimensions(text: Any) -> dict[str, float] | None:
    """The official multi-dimension answer: the first ``<answer>{"spatial": x, "temporal": y, "consistency": z}
    </answer>`` anywhere in the completion, keys in that order, braces required, unsigned decimals; as
    ``{"spatial", "temporal", "alignment"}``. None when absent or a value is not a number ("1.2.3")."""
    match = _OFFICIAL_DIMS.search(_as_str(text))
    if match is None:
        return None
    values = [official_number(v) for v in match.groups()]
    if any(v is None for v in values):
        return None
    return dict(zip(DIMENSIONS, values, strict=True))  # type: ignore[arg-type]


def _finite(value: float) -> float | None:
    """``value`` when finite and not absurdly large, else None."""
    return value if math.isfinite(value) and abs(value) <= MAX_ABS_VALUE else None


def on_scale(value: float | None, scale: tuple[float, float] | None) -> float | None:
    """``value`` when it lies on ``scale`` (``[lo, hi]``, inclusive) or no scale is given, else None."""
    if value is None or scale is None:
        return value
    return value if scale[0] <= value <= scale[1] else None


def parse_score(answer: Any, scale: tuple[float, float] | None = None) -> float | None:
    """First number in ``answer`` ("3.5", "Score: 3.50", '{"rating": 4.2}', "1e2").

    Only ASCII digits count. If that first number is not finite or exceeds ``MAX_ABS_VALUE`` in magnitude, the answer
    is rejected (None) rather than searched further: a garbage leading number makes the whole answer untrustworthy.
    With ``scale`` (the task's ``(lo, hi)``), a number off the scale ("3333333" or "6.0" on 1-5) is rejected too: an
    answer the task cannot mean is unparsed, never a point that dominates a correlation or earns clipped credit.
    """
    match = _NUMBER.search(_as_str(answer))
    if match is None:
        return None
    try:
        return on_scale(_finite(float(match.group())), scale)
    except (ValueError, OverflowError):
        return None


def _number(value: Any) -> float | None:
    """A finite float from a JSON value (number or numeric string; bools are rejected)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return _finite(float(value))
        except OverflowError:
            return None
    if isinstance(value, str):
        return parse_score(value)
    return None


def _canonical_dim(key: Any) -> str | None:
    """Canonical dimension name of a key such as "Spatial", "spatial_quality" or "consistency"."""
    if not isinstance(key, str):
        return None
    k = re.sub(r"[ _-]?(?:quality|score)$", "", key.strip().lower())
    return _DIM_ALIASES.get(k)


def _dims_from_json(s: str) -> dict[str, float]:
    """Dimension scores of the JSON object in ``s`` (possibly partial, possibly empty)."""
    match = _BRACES.search(s)
    if match is None:
        return {}
    try:
        obj = json.loads(match.group())
    except (ValueError, RecursionError):
        return {}
    if not isinstance(obj, dict):
        return {}
    out: dict[str, float] = {}
    for key, value in obj.items():
        dim = _canonical_dim(key)
        if dim is not None and (dim not in out or key.strip().lower().startswith("alignment")):
            number = _number(value)
            if number is not None:
                out[dim] = number
    return out


def _dims_from_text(s: str) -> dict[str, float]:
    """Dimension scores of loose ``"spatial": x, temporal = y`` text (first occurrence of each key wins)."""
    out: dict[str, float] = {}
    for key, value in _DIM_LOOSE.findall(s):
        dim = _DIM_ALIASES[key.lower()]
        if dim not in out:
            number = parse_score(value)
            if number is not None:
                out[dim] = number
    return out


_THREE_NUMBERS = re.compile(r"\s*(-?\d+(?:\.\d+)?)[\s,;/]+(-?\d+(?:\.\d+)?)[\s,;/]+(-?\d+(?:\.\d+)?)\s*")


def _dims_positional(s: str) -> dict[str, float]:
    """The compact answer of the short prompt style: exactly three numbers, spatial, temporal, alignment."""
    m = _THREE_NUMBERS.fullmatch(s)
    if m is None:
        return {}
    values = [_finite(float(x)) for x in m.groups()]
    return {d: v for d, v in zip(DIMENSIONS, values, strict=True) if v is not None}


def parse_dimensions(answer: Any, scale: tuple[float, float] | None = None) -> dict[str, float] | None:
    """``{"spatial", "temporal", "alignment"}`` scores from a JSON object or loose ``key: value`` text.

    Keys are case-insensitive, "consistency" is an alias of "alignment" (official release) and a "_quality"/"_score"
    suffix is tolerated. An answer that is exactly three numbers ("3 4.5 2") is read positionally as spatial,
    temporal, alignment: the compact form of the short prompt style, which a byte-level tiny model can emit within a
    few tokens. Returns None unless all three dimensions are present and finite, and, with ``scale`` (the task's
    ``(lo, hi)``), all three on it: one dimension off the scale makes the whole answer unparsed (see ``parse_score``).
    """
    s = _as_str(answer)
    for parser in (_dims_from_json, _dims_from_text, _dims_positional):
        dims = parser(s)
        if all(d in dims for d in DIMENSIONS):
            if any(on_scale(dims[d], scale) is None for d in DIMENSIONS):
                return None
            return {d: dims[d] for d in DIMENSIONS}
    return None


def _letter_verdict(s: str) -> str | None:
    """Verdict ("A", "B", "tie" or None) of a lower-cased sentence naming videos A/B in verdict form."""
    letters = {a or b or c for a, b, c in _LETTER.findall(s)}
    if len(letters) == 1:
        return letters.pop().upper()
    if len(letters) == 2:
        better = set(_BETTER.findall(s))
        if len(better) == 1:
            return better.pop().upper()
        return "tie" if _TIE.search(s) else None
    return None


def parse_choice(answer: Any) -> str | None:
    """Verdict of a choice answer: "A", "B", "tie", "yes", "no", or None when ambiguous / unrecognisable.

    "A"/"B" come from the whole answer ("A", "(b)", "Video A.", "Answer: B") or from verdict phrases inside a sentence
    ("video a", "option b", "(a)"); the article "a" never counts. If both videos are named, a single "video X is
    better" phrase decides, a tie word ("same", "equal", ...) gives "tie", anything else is ambiguous (None).
    Yes/no: a leading "yes"/"no" decides; in free text exactly one of {tie word, "yes", "no"} must occur.
    """
    s = " ".join(_as_str(answer).lower().split())
    core = _PREFIX.sub("", s.strip(_STRIP_CHARS)).strip(_STRIP_CHARS)
    if core in _EXACT:
        return _EXACT[core]
    if _TIE.fullmatch(core) or core in ("both are equal", "they are the same", "both are the same"):
        return "tie"
    if _LETTER.search(s):
        return _letter_verdict(s)
    leading = _LEADING_YES_NO.match(core)
    if leading:
        return leading.group(1)
    # In free text, exactly one of the three signals (tie word, "yes", "no") must be present.
    signals = [v for v, rx in (("tie", _TIE), ("yes", _YES), ("no", _NO)) if rx.search(s)]
    return signals[0] if len(signals) == 1 else None
