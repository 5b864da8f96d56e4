"""GRPO reward functions of VQ-Insight, following TRL's reward contract ``f(completions, **columns) -> list``.

Conventions shared by every reward function:

* ``completions`` are plain strings or TRL conversational completions; dataset columns arrive as keyword lists
  aligned with them. Extra TRL keywords (``prompts``, ``completion_ids``, ``trainer_state``, ``log_metric``, ...)
  are accepted and ignored.
* An unparsable completion scores 0.0, never an exception.
* A row whose ground truth is missing (``None`` or NaN: another task in a mixed batch) gets ``None``, which TRL
  treats as "not applicable" for that reward function.
* Every returned float is finite; score-type rewards lie in [0, 1].
* Configuration errors (bad scale, bad weights, misaligned columns) raise ``ValueError``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from numbers import Real
from typing import Any

from vqinsight.parsing import (
    DIMENSIONS,
    completion_text,
    extract_answer,
    is_well_formed,
    is_well_formed_official,
    official_answer,
    official_dimensions,
    official_number,
    parse_choice,
    parse_dimensions,
    parse_score,
)

logger = logging.getLogger(__name__)

SCORE_VARIANTS: tuple[str, ...] = ("l1", "l1_span", "relative", "threshold")
FORMAT_VARIANTS: tuple[str, ...] = ("strict", "official")
CHOICE_VARIANTS: tuple[str, ...] = ("parsed", "official")
#: The official code's "correct" rollout, for its temporal bonus and length rule: accuracy reward > 0.1.
OFFICIAL_CORRECT_REWARD = 0.1
#: Q-Insight's threshold variant: full reward when |pred - gt| < this (scale units).
THRESHOLD = 0.35
_EPS = 1e-9
_DIM_ALIASES = {"spatial": "spatial", "temporal": "temporal", "alignment": "alignment", "consistency": "alignment"}
SCORE_TASKS: tuple[str, ...] = ("image_score", "video_score")
CHOICE_TASKS: tuple[str, ...] = ("comparison", "vqa")


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def _column(values: Any, n: int, name: str) -> list[Any]:
    """Per-row list of ``n`` values from a list / tuple / array of length ``n``; None or a scalar is broadcast."""
    if values is None or isinstance(values, str | bytes | Mapping):
        return [values] * n
    try:
        rows = list(values)
    except TypeError:
        return [values] * n
    if len(rows) != n:
        raise ValueError(f"column {name!r} has {len(rows)} values for {n} completions")
    return rows


def _gt_number(value: Any) -> float | None:
    """Ground-truth score as a finite float, or None (missing / NaN / not a number)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return None
    try:
        v = float(value)
    except (OverflowError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _gt_dims(value: Any) -> dict[str, float] | None:
    """Ground-truth dimension dict (``consistency`` aliased to ``alignment``), or None unless all are finite."""
    if not isinstance(value, Mapping):
        return None
    dims: dict[str, float] = {}
    for key, v in value.items():
        dim = _DIM_ALIASES.get(str(key).lower())
        number = _gt_number(v)
        if dim is not None and number is not None:
            dims.setdefault(dim, number)
    return dims if all(d in dims for d in DIMENSIONS) else None


def _answer(completion: Any) -> str | None:
    """The last ``<answer>`` block of a completion."""
    return extract_answer(completion_text(completion))


def _check_scale(score_min: float, score_max: float) -> None:
    """Reject an empty or non-finite score scale."""
    if not (math.isfinite(score_min) and math.isfinite(score_max) and score_max > score_min):
        raise ValueError(f"invalid score scale [{score_min}, {score_max}]")


def _check_variant(variant: str) -> None:
    """Reject an unknown score-reward variant."""
    if variant not in SCORE_VARIANTS:
        raise ValueError(f"unknown score variant {variant!r}; valid: {', '.join(SCORE_VARIANTS)}")


def _score_pred(completion: Any, variant: str, score_min: float, score_max: float) -> float | None:
    """The predicted score: the official code's (first answer block, ``float()`` of it, any number) for ``relative``;
    else the last answer block's first number, unparsed (None) off the task's scale."""
    if variant == "relative":
        return official_number(official_answer(completion_text(completion)))
    return parse_score(_answer(completion), (score_min, score_max))


def score_similarity(pred: float, gt: float, score_min: float, score_max: float, variant: str = "l1") -> float:
    """Similarity in [0, 1] between a predicted and a ground-truth score.

    * ``l1`` (default, Eq. 3 as printed in the paper): ``max(0, 1 - |p - g|)`` on the task scale. On the paper's 1-5
      scale an error >= 1 point earns 0, which is what the paper's formula gives.
    * ``l1_span``: ``1 - |p - g| / (score_max - score_min)``, normalised by the scale span so partial credit extends
      over the whole scale (on a 1-5 scale a 1-point error costs 0.25).
    * ``relative`` (official code): ``1 - min(1, (|p - g| + 1e-9) / (|g| + 1e-9))``, the prediction taken as it is.
    * ``threshold`` (Q-Insight): ``1`` if ``|p - g| < 0.35`` else ``0``.

    The project's own variants (all but ``relative``) give a prediction off ``[score_min, score_max]`` 0.0, the value
    of an unparsed answer (``parsing.parse_score`` with a scale rejects it the same way); ``relative`` keeps the
    official code's behaviour and scores it unclipped (gt 4.5, prediction 6.0: 0.667).
    """
    _check_variant(variant)
    if variant == "relative":
        r = 1.0 - min(1.0, max(0.0, (abs(pred - gt) + _EPS) / (abs(gt) + _EPS)))
        return min(1.0, max(0.0, r)) if math.isfinite(r) else 0.0
    if not score_min <= pred <= score_max:
        return 0.0
    err = abs(pred - gt)
    if variant == "l1":
        r = 1.0 - err
    elif variant == "l1_span":
        r = 1.0 - err / (score_max - score_min)
    else:  # "threshold"
        r = 1.0 if err < THRESHOLD else 0.0
    return min(1.0, max(0.0, r)) if math.isfinite(r) else 0.0


def _normalised_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    """Per-dimension weights λ_j summing to 1 (default 1/3 each); ``consistency`` aliases ``alignment``."""
    if weights is None:
        return {d: 1.0 / len(DIMENSIONS) for d in DIMENSIONS}
    raw = {d: 0.0 for d in DIMENSIONS}
    for key, w in weights.items():
        dim = _DIM_ALIASES.get(str(key).lower())
        if dim is None:
            raise ValueError(f"unknown dimension {key!r} in weights; valid: {', '.join(DIMENSIONS)}")
        if isinstance(w, bool) or not isinstance(w, Real) or not math.isfinite(w) or w < 0:
            raise ValueError(f"weight of {key!r} must be a finite number >= 0, got {w!r}")
        raw[dim] += float(w)
    total = sum(raw.values())
    if not total > 0:
        raise ValueError(f"weights must sum to > 0, got {weights!r}")
    return {d: w / total for d, w in raw.items()}


def _truthy(value: Any) -> bool:
    """A correctness flag: True, or a finite number > 0.5."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):  # exact: math.isfinite would overflow on ints beyond the float range
        return value > 0
    return isinstance(value, Real) and math.isfinite(value) and value > 0.5


# ---------------------------------------------------------------------------------------------------------------
# reward functions (TRL contract)
# ---------------------------------------------------------------------------------------------------------------
def format_reward(completions: Sequence[Any], variant: str = "strict", **kwargs: Any) -> list[float]:
    """1.0 for a well-formed completion, else 0.0.

    ``strict``: exactly one ``<think>`` block then one ``<answer>`` block, whitespace around allowed
    (``parsing.is_well_formed``). ``official``: the official code's check (``parsing.is_well_formed_official``: no
    surrounding whitespace, repeated or nested blocks pass).
    """
    # Format reward R_format of the paper (the DeepSeek-R1 / Q-Insight format check of the official code).
    if variant not in FORMAT_VARIANTS:
        raise ValueError(f"unknown format variant {variant!r}; valid: {', '.join(FORMAT_VARIANTS)}")
    check = is_well_formed_official if variant == "official" else is_well_formed
    return [1.0 if check(completion_text(c)) else 0.0 for c in completions]


def score_reward(
    completions: Sequence[Any],
    gt_score: Sequence[Any] | None = None,
    score_min: float = 1.0,
    score_max: float = 5.0,
    variant: str = "l1",
    **kwargs: Any,
) -> list[float | None]:
    """Score-accuracy reward in [0, 1] (see ``score_similarity`` for the variants); None where ``gt_score`` is None."""
    # Eq. 3: r = max(0, 1 - |s_pred - s_gt|) on the task scale (``l1``); other variants via ``variant``.
    _check_scale(score_min, score_max)
    _check_variant(variant)
    gts = _column(gt_score, len(completions), "gt_score")
    out: list[float | None] = []
    for completion, raw_gt in zip(completions, gts, strict=True):
        gt = _gt_number(raw_gt)
        pred = _score_pred(completion, variant, score_min, score_max) if gt is not None else None
        if gt is None:
            out.append(None)
        else:
            out.append(0.0 if pred is None else score_similarity(pred, gt, score_min, score_max, variant))
    return out


def multi_dim_reward(
    completions: Sequence[Any],
    gt_scores: Sequence[Any] | None = None,
    weights: Mapping[str, float] | None = None,
    score_min: float = 1.0,
    score_max: float = 5.0,
    variant: str = "l1",
    **kwargs: Any,
) -> list[float | None]:
    """Weighted per-dimension score reward in [0, 1]; 0.0 unless all three dimensions parse; None without a gt."""
    # Eq. 6: r = sum_j lambda_j * r_j over j in {spatial, temporal, alignment}, r_j as in Eq. 3, sum_j lambda_j = 1.
    _check_scale(score_min, score_max)
    _check_variant(variant)
    lam = _normalised_weights(weights)
    gts = _column(gt_scores, len(completions), "gt_scores")
    out: list[float | None] = []
    for completion, raw_gt in zip(completions, gts, strict=True):
        gt = _gt_dims(raw_gt)
        if gt is None:
            out.append(None)
            continue
        if variant == "relative":  # the official code: braces, fixed key order, first match in the completion
            pred = official_dimensions(completion_text(completion))
        else:
            pred = parse_dimensions(_answer(completion), (score_min, score_max))
        if pred is None:
            out.append(0.0)
            continue
        r = sum(lam[d] * score_similarity(pred[d], gt[d], score_min, score_max, variant) for d in DIMENSIONS)
        out.append(min(1.0, max(0.0, r)))
    return out


def choice_reward(
    completions: Sequence[Any],
    gt_choice: Sequence[Any] | None = None,
    variant: str = "parsed",
    gt_text: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """1.0 when the answer matches ``gt_choice``, else 0.0; None where ``gt_choice`` is missing.

    ``parsed``: the parsed verdict (``parsing.parse_choice``: "A"/"B"/"tie"/"yes"/"no") equals ``gt_choice``,
    case-insensitively. ``official``: the official code's exact, case-sensitive string equality of the first answer
    block with the ground truth's text, ``gt_text[gt_choice]`` when given (e.g. ``{"A": "Video A"}`` for prompts
    asking for "Video A"), else ``gt_choice`` itself.
    """
    # Eq. 7: r = 1 if the predicted preference / answer equals the ground truth, else 0.
    if variant not in CHOICE_VARIANTS:
        raise ValueError(f"unknown choice variant {variant!r}; valid: {', '.join(CHOICE_VARIANTS)}")
    gts = _column(gt_choice, len(completions), "gt_choice")
    out: list[float | None] = []
    for completion, gt in zip(completions, gts, strict=True):
        if not isinstance(gt, str) or not gt.strip():
            out.append(None)
        elif variant == "official":
            expected = (gt_text or {}).get(gt, gt)
            out.append(1.0 if official_answer(completion_text(completion)) == expected.strip() else 0.0)
        else:
            pred = parse_choice(_answer(completion))
            out.append(1.0 if pred is not None and pred.lower() == gt.strip().lower() else 0.0)
    return out


#: The length reward's constants (Eq. 5 of the paper): gamma for a completion of l_min < length < l_max tokens.
LENGTH_DEFAULTS: dict[str, Any] = {"gamma": 0.1, "l_min": 320, "l_max": 512}


def length_reward(
    completions: Sequence[Any],
    completion_ids: Sequence[Sequence[int]] | None = None,
    correct: Sequence[Any] | None = None,
    gamma: float = LENGTH_DEFAULTS["gamma"],
    l_min: int = LENGTH_DEFAULTS["l_min"],
    l_max: int = LENGTH_DEFAULTS["l_max"],
    inclusive: bool = False,
    require_multiple_correct: bool = False,
    **kwargs: Any,
) -> list[float]:
    """γ for completions whose length lies in (l_min, l_max) (``inclusive``: [l_min, l_max]), else 0.0.

    Length is in tokens, ``len(completion_ids[i])``; without ``completion_ids`` a whitespace-token count of the text
    is used as a proxy. With ``correct``, only correct completions are rewarded; ``require_multiple_correct`` (official
    code) also demands > 1 correct completion in the whole list passed in (TRL's local batch may hold several
    groups: call it per group for the exact official semantics); a no-op without ``correct``.
    """
    # Eq. 5: r_len = gamma if l_min < len(o_i) < l_max (and o_i is correct), else 0.
    n = len(completions)
    ids = _column(completion_ids, n, "completion_ids") if completion_ids is not None else None
    oks = [_truthy(c) for c in _column(correct, n, "correct")] if correct is not None else [True] * n
    if correct is not None and require_multiple_correct and sum(oks) <= 1:
        return [0.0] * n
    out: list[float] = []
    for i, c in enumerate(completions):
        length = len(ids[i]) if ids is not None and ids[i] is not None else len(completion_text(c).split())
        inside = l_min <= length <= l_max if inclusive else l_min < length < l_max
        out.append(float(gamma) if inside and oks[i] else 0.0)
    return out


def temporal_bonus(
    ordered_correct: Sequence[Any],
    shuffled_correct: Sequence[Any],
    alpha: float = 0.3,
    mu: float = 0.8,
    strict: bool = True,
    threshold: float | None = None,
) -> list[float]:
    """α for each correct ordered-frame rollout when the ordered accuracy beats μ × the shuffled accuracy, else 0.0.

    ``threshold=None``: flags, bools or numbers (> 0.5 counts as correct); the accuracies are the shares correct.
    A number: continuous accuracy rewards, as the official code gates (``OFFICIAL_CORRECT_REWARD``): the accuracies
    are the mean rewards and a rollout is correct when its reward exceeds ``threshold``. ``strict=False`` uses ≥ as
    the official code does.
    """
    # Eq. 4: r_t = alpha if p > mu * p~ (p, p~: accuracy of the ordered / shuffled-frame rollouts), else 0.
    if threshold is None:
        ordered = [float(_truthy(x)) for x in ordered_correct]
        shuffled = [float(_truthy(x)) for x in shuffled_correct]
        cut = 0.5
    else:
        ordered = [_reward_value(x) for x in ordered_correct]
        shuffled = [_reward_value(x) for x in shuffled_correct]
        cut = float(threshold)
    if not ordered:
        return []
    if not shuffled:
        return [0.0] * len(ordered)
    p, p_shuffled = sum(ordered) / len(ordered), sum(shuffled) / len(shuffled)
    gate = p > mu * p_shuffled if strict else p >= mu * p_shuffled
    return [float(alpha) if gate and v > cut else 0.0 for v in ordered]


def _reward_value(value: Any) -> float:
    """A continuous accuracy reward as a float; anything not a finite number is 0.0."""
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, Real):
        return 0.0
    try:
        v = float(value)
    except OverflowError:
        return 0.0
    return v if math.isfinite(v) else 0.0


def _row_correct(
    completion: Any, task: Any, i: int, columns: Mapping[str, Any], tol: float, scale: tuple[float, float] | None
) -> bool:
    """Correctness of one completion for its task (see ``is_correct``)."""
    answer = _answer(completion)
    tol += _EPS  # so that 3.6 vs 3.0 counts as within a 0.6 tolerance despite float rounding
    if task in SCORE_TASKS:
        gt, pred = _gt_number(columns["gt_score"][i]), parse_score(answer, scale)
        return gt is not None and pred is not None and abs(pred - gt) <= tol
    if task == "multidim_score":
        gts, preds = _gt_dims(columns["gt_scores"][i]), parse_dimensions(answer, scale)
        return gts is not None and preds is not None and all(abs(preds[d] - gts[d]) <= tol for d in DIMENSIONS)
    if task in CHOICE_TASKS:
        gt, pred = columns["gt_choice"][i], parse_choice(answer)
        return isinstance(gt, str) and pred is not None and pred.lower() == gt.strip().lower()
    return False


def is_correct(
    completions: Sequence[Any],
    task: str | Sequence[str],
    score_tolerance: float = 0.5,
    scale: tuple[float, float] | None = None,
    **columns: Any,
) -> list[bool]:
    """Per-completion correctness used by the temporal gate (Eq. 4) and the length reward (Eq. 5).

    Score tasks: ``|pred - gt| <= score_tolerance`` (scale units); ``multidim_score``: every dimension within the
    tolerance; ``comparison`` / ``vqa``: the parsed choice equals ``gt_choice``. ``task`` is one string or one per
    row (mixed batches). Missing ground truth or an unknown task counts as incorrect, and so does, with ``scale``, a
    score off the task's scale (unparsed, as in ``score_reward``).
    """
    n = len(completions)
    tasks = _column(task, n, "task")
    cols = {k: _column(columns.get(k), n, k) for k in ("gt_score", "gt_scores", "gt_choice")}
    return [
        _row_correct(c, t, i, cols, score_tolerance, scale)
        for i, (c, t) in enumerate(zip(completions, tasks, strict=True))
    ]


REWARD_FUNCS: dict[str, Callable[..., list[Any]]] = {
    "format": format_reward,
    "score": score_reward,
    "multi_dim": multi_dim_reward,
    "choice": choice_reward,
    "length": length_reward,
}
