"""TRL reward-function list of a GRPO recipe: named, picklable wrappers around ``vqinsight.rewards``.

TRL 1.16 names a reward function with ``trl.trainer.utils.get_callable_name``, which *unwraps* ``functools.partial``
to the wrapped function's name, so a ``__name__`` set on a partial is ignored (the metric would read
``rewards/score_reward/mean``). ``NamedReward`` is a module-level callable class with its own ``__name__`` instead:
TRL logs ``rewards/<name>/mean`` and the object stays picklable.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from numbers import Real
from typing import Any

from vqinsight.rewards import REWARD_FUNCS, is_correct, length_reward

logger = logging.getLogger(__name__)

#: Recipe keys naming a reward function, in the order the functions are built.
REWARD_KEYS: tuple[str, ...] = ("format", "score", "multi_dim", "choice", "length")
#: Recipe keys holding options shared by several reward functions (and their defaults).
GLOBAL_OPTIONS: dict[str, Any] = {
    "score_variant": "l1",
    "score_min": 1.0,
    "score_max": 5.0,
    "score_tolerance": 0.5,
    "dim_weights": None,
}


class NamedReward:
    """A TRL reward function ``f(completions, **columns)`` calling ``func`` with fixed keyword options.

    ``__name__`` is what TRL logs (``rewards/<name>/mean``); the fixed options win over same-named columns.
    """

    def __init__(self, name: str, func: Callable[..., list[Any]], **options: Any) -> None:
        self.__name__ = name
        self.func = func
        self.options = options

    def __call__(self, completions: Sequence[Any], **columns: Any) -> list[Any]:
        """Score ``completions`` (TRL passes dataset columns, ``prompts`` and ``completion_ids`` as keywords)."""
        return self.func(completions, **{**columns, **self.options})

    def __repr__(self) -> str:
        return f"NamedReward({self.__name__!r}, {getattr(self.func, '__name__', self.func)!r}, {self.options!r})"


def length_if_correct(
    completions: Sequence[Any],
    completion_ids: Sequence[Sequence[int]] | None = None,
    task: Any = None,
    gamma: float = 0.1,
    l_min: int = 320,
    l_max: int = 512,
    inclusive: bool = False,
    score_tolerance: float = 0.5,
    score_min: float | None = None,
    score_max: float | None = None,
    **columns: Any,
) -> list[float]:
    """Length reward (Eq. 5) for the completions that are correct for their row's task (``rewards.is_correct``; a
    score off ``[score_min, score_max]`` is unparsed, hence incorrect)."""
    # Eq. 5: r_len = gamma if o_i is correct and l_min < len(o_i) < l_max (tokens), else 0.
    scale = None if score_min is None or score_max is None else (score_min, score_max)
    correct = is_correct(completions, task, score_tolerance=score_tolerance, scale=scale, **columns)
    return length_reward(
        completions,
        completion_ids=completion_ids,
        correct=correct,
        gamma=gamma,
        l_min=l_min,
        l_max=l_max,
        inclusive=inclusive,
    )


def make_length_reward(
    gamma: float,
    l_min: int,
    l_max: int,
    inclusive: bool = False,
    score_tolerance: float = 0.5,
    score_min: float | None = None,
    score_max: float | None = None,
) -> NamedReward:
    """TRL reward function named ``length``: γ for correct completions whose token length is in (l_min, l_max)."""
    if isinstance(gamma, bool) or not isinstance(gamma, Real) or not math.isfinite(gamma):
        raise ValueError(f"gamma must be a finite number, got {gamma!r}")
    if not (isinstance(l_min, int) and isinstance(l_max, int)) or l_min < 0 or l_max < l_min:
        raise ValueError(f"need integers 0 <= l_min <= l_max, got l_min={l_min!r}, l_max={l_max!r}")
    if not (isinstance(score_tolerance, Real) and math.isfinite(score_tolerance) and score_tolerance >= 0):
        raise ValueError(f"score_tolerance must be a finite number >= 0, got {score_tolerance!r}")
    return NamedReward(
        "length",
        length_if_correct,
        gamma=float(gamma),
        l_min=l_min,
        l_max=l_max,
        inclusive=bool(inclusive),
        score_tolerance=float(score_tolerance),
        score_min=score_min,
        score_max=score_max,
    )


def _weight_and_options(key: str, entry: Any) -> tuple[float, dict[str, Any]]:
    """Split a recipe entry (a weight, or a dict with ``weight`` plus function options) into (weight, options)."""
    if isinstance(entry, Mapping):
        options = dict(entry)
        weight = options.pop("weight", 1.0)
    else:
        weight, options = entry, {}
    if isinstance(weight, bool) or not isinstance(weight, Real) or not math.isfinite(weight):
        raise ValueError(f"weight of reward {key!r} must be a finite number, got {weight!r}")
    return float(weight), options


def _build_one(key: str, options: dict[str, Any], shared: Mapping[str, Any]) -> NamedReward:
    """The reward function of recipe key ``key`` with its own options over the shared ones."""
    scale = {"score_min": float(shared["score_min"]), "score_max": float(shared["score_max"])}
    if key == "format":
        defaults: dict[str, Any] = {}
    elif key == "score":
        defaults = {**scale, "variant": shared["score_variant"]}
    elif key == "multi_dim":
        defaults = {**scale, "variant": shared["score_variant"], "weights": shared["dim_weights"]}
    elif key == "choice":
        defaults = {}
    else:  # "length"
        kwargs = {"gamma": 0.1, "l_min": 320, "l_max": 512, "score_tolerance": shared["score_tolerance"], **options}
        unknown = set(kwargs) - {"gamma", "l_min", "l_max", "inclusive", "score_tolerance"}
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)} for reward 'length'")
        return make_length_reward(**kwargs, **scale)
    return NamedReward(key, REWARD_FUNCS[key], **{**defaults, **options})


def build_reward_funcs(spec: Mapping[str, Any]) -> tuple[list[NamedReward], list[float]]:
    """Reward functions and weights (``GRPOConfig.reward_weights``) of a recipe dict.

    ``spec`` maps reward names (``format``, ``score``, ``multi_dim``, ``choice``, ``length``) to a weight or to a dict
    ``{"weight": w, **options}`` (e.g. ``"length": {"weight": 1.0, "gamma": 0.1, "l_min": 320, "l_max": 512}``);
    ``None`` / ``False`` leaves a reward out. Shared options: ``score_variant`` (default ``l1``), ``score_min`` /
    ``score_max`` (1 / 5), ``score_tolerance`` (0.5, correctness for the length reward) and ``dim_weights``
    (multi-dimension λ_j). Functions come in the order of ``REWARD_KEYS``; unknown keys raise ``ValueError``.
    """
    unknown = set(spec) - set(REWARD_KEYS) - set(GLOBAL_OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown recipe key(s) {sorted(unknown)}; valid: {', '.join(REWARD_KEYS + tuple(GLOBAL_OPTIONS))}"
        )
    shared = {k: spec.get(k, default) for k, default in GLOBAL_OPTIONS.items()}
    funcs: list[NamedReward] = []
    weights: list[float] = []
    for key in REWARD_KEYS:
        entry = spec.get(key)
        if entry is None or entry is False:
            continue
        weight, options = _weight_and_options(key, entry)
        funcs.append(_build_one(key, options, shared))
        weights.append(weight)
    if not funcs:
        raise ValueError(f"recipe enables no reward function; keys: {', '.join(REWARD_KEYS)}")
    logger.info("reward functions: %s", ", ".join(f"{f.__name__}×{w:g}" for f, w in zip(funcs, weights, strict=True)))
    return funcs, weights
