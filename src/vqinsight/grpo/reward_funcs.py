"""TRL reward-function list of a GRPO recipe: named, picklable wrappers around ``vqinsight.rewards``.

TRL 1.16 names a reward function with ``trl.trainer.utils.get_callable_name``, which *unwraps* ``functools.partial``
to the wrapped function's name, so a ``__name__`` set on a partial is ignored (the metric would read
``rewards/score_reward/mean``). ``NamedReward`` is a module-level callable class with its own ``__name__`` instead:
TRL logs ``rewards/<name>/mean`` and the object stays picklable.

"Correct" (the temporal gate of Eq. 4 and the length reward of Eq. 5) has three rules (``Correctness``):
``tolerance`` (the project's: a score within ``score_tolerance`` of the ground truth, the right verdict),
``reward`` (the official code's: the task's accuracy reward, ``TaskAccuracy``, exceeds 0.1, and the temporal gate
compares mean accuracy rewards) and, for the length reward only, ``any`` (Eq. 5 as printed: no correctness
condition).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from numbers import Real
from typing import Any

from vqinsight.rewards import (
    CHOICE_TASKS,
    LENGTH_DEFAULTS,
    OFFICIAL_CORRECT_REWARD,
    REWARD_FUNCS,
    SCORE_TASKS,
    is_correct,
    length_reward,
)

logger = logging.getLogger(__name__)

#: Recipe keys naming a reward function, in the order the functions are built.
REWARD_KEYS: tuple[str, ...] = ("format", "score", "multi_dim", "choice", "length")
#: Recipe keys holding options shared by several reward functions (and their defaults). ``group_size`` is the GRPO
#: group (the trainer's num_generations), set by the training entry point for the length rule's groups.
GLOBAL_OPTIONS: dict[str, Any] = {
    "score_variant": "l1",
    "score_min": 1.0,
    "score_max": 5.0,
    "score_tolerance": 0.5,
    "dim_weights": None,
    "group_size": None,
}
#: Options each reward function takes from its recipe entry (besides ``weight``).
OPTIONS: dict[str, set[str]] = {
    "format": {"variant"},
    "score": {"variant"},
    "multi_dim": {"variant", "weights"},
    "choice": {"variant", "gt_text"},
    "length": {"gamma", "l_min", "l_max", "inclusive", "score_tolerance", "correct", "require_multiple_correct"},
}
CORRECT_RULES: tuple[str, ...] = ("tolerance", "reward", "any")


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


class TaskAccuracy:
    """Each completion's accuracy reward for its row's task: the recipe's ``score`` (image/video score),
    ``multi_dim`` or ``choice`` (comparison, yes/no) function; 0.0 for a row of another task. The official code's
    ``rewards_per_func[:, 0]``, which its temporal gate and length rule read."""

    def __init__(self, funcs: Mapping[str, NamedReward]) -> None:
        self.funcs = dict(funcs)

    def __call__(self, completions: Sequence[Any], task: Any = None, **columns: Any) -> list[float]:
        n = len(completions)
        tasks = list(task) if isinstance(task, list | tuple) else [task] * n
        key_of = {**dict.fromkeys(SCORE_TASKS, "score"), "multidim_score": "multi_dim"}
        key_of.update(dict.fromkeys(CHOICE_TASKS, "choice"))
        out = [0.0] * n
        for key, func in self.funcs.items():
            rows = [i for i, t in enumerate(tasks) if key_of.get(t) == key]
            if rows:
                sub = {k: [v[i] for i in rows] if isinstance(v, list | tuple) and len(v) == n else v
                       for k, v in columns.items()}  # fmt: skip
                for i, value in zip(rows, func([completions[i] for i in rows], **sub), strict=True):
                    out[i] = 0.0 if value is None else float(value)
        return out


class Correctness:
    """Per-completion correctness values for Eq. 4 and Eq. 5, and the value above which a completion is correct.

    ``tolerance``: 1.0 / 0.0 from ``rewards.is_correct`` (scores within ``score_tolerance``, off-scale scores
    unparsed), threshold 0.5. ``reward``: the accuracy reward itself (``TaskAccuracy``), threshold 0.1 (official).
    ``any``: every completion counts as correct (1.0).
    """

    def __init__(
        self,
        rule: str = "tolerance",
        accuracy: TaskAccuracy | None = None,
        score_tolerance: float = 0.5,
        scale: tuple[float, float] | None = None,
    ) -> None:
        if rule not in CORRECT_RULES:
            raise ValueError(f"unknown correctness rule {rule!r}; valid: {', '.join(CORRECT_RULES)}")
        if rule == "reward" and accuracy is None:
            raise ValueError("the 'reward' correctness rule needs the task accuracy functions")
        if not (isinstance(score_tolerance, Real) and math.isfinite(score_tolerance) and score_tolerance >= 0):
            raise ValueError(f"score_tolerance must be a finite number >= 0, got {score_tolerance!r}")
        self.rule, self.accuracy, self.scale = rule, accuracy, scale
        self.score_tolerance = float(score_tolerance)
        self.threshold = OFFICIAL_CORRECT_REWARD if rule == "reward" else 0.5

    def __call__(self, completions: Sequence[Any], task: Any = None, **columns: Any) -> list[float]:
        if self.rule == "reward":
            return self.accuracy(completions, task=task, **columns)  # type: ignore[misc]
        if self.rule == "any":
            return [1.0] * len(completions)
        flags = is_correct(completions, task, score_tolerance=self.score_tolerance, scale=self.scale, **columns)
        return [float(ok) for ok in flags]

    def __repr__(self) -> str:
        return f"Correctness({self.rule!r}, threshold={self.threshold})"


def length_if_correct(
    completions: Sequence[Any],
    completion_ids: Sequence[Sequence[int]] | None = None,
    task: Any = None,
    gamma: float = LENGTH_DEFAULTS["gamma"],
    l_min: int = LENGTH_DEFAULTS["l_min"],
    l_max: int = LENGTH_DEFAULTS["l_max"],
    inclusive: bool = False,
    correctness: Correctness | None = None,
    require_multiple_correct: bool = False,
    group_size: int | None = None,
    **columns: Any,
) -> list[float]:
    """Length reward (Eq. 5) for the completions that are correct for their row's task (``correctness``; default
    the tolerance rule). ``require_multiple_correct`` (official): only in groups of ``group_size`` consecutive
    completions (a GRPO group; None = the whole list) holding more than one correct completion."""
    # Eq. 5: r_len = gamma if o_i is correct and l_min < len(o_i) < l_max (tokens), else 0.
    correctness = correctness or Correctness()
    correct = [v > correctness.threshold for v in correctness(completions, task=task, **columns)]
    n = len(completions)
    size = group_size or n
    if require_multiple_correct and size and n % size:
        raise ValueError(f"{n} completions are not whole groups of {size}: the length rule needs whole groups")
    ids = list(completion_ids) if completion_ids is not None else None
    out: list[float] = []
    for start in range(0, n, size or 1):
        sl = slice(start, start + size)
        out += length_reward(
            completions[sl],
            completion_ids=ids[sl] if ids is not None else None,
            correct=correct[sl],
            gamma=gamma,
            l_min=l_min,
            l_max=l_max,
            inclusive=inclusive,
            require_multiple_correct=require_multiple_correct,
        )
    return out


def make_length_reward(
    gamma: float,
    l_min: int,
    l_max: int,
    inclusive: bool = False,
    score_tolerance: float = 0.5,
    score_min: float | None = None,
    score_max: float | None = None,
    correct: str = "tolerance",
    accuracy: TaskAccuracy | None = None,
    require_multiple_correct: bool = False,
    group_size: int | None = None,
) -> NamedReward:
    """TRL reward function named ``length``: γ for correct completions whose token length is in (l_min, l_max)."""
    if isinstance(gamma, bool) or not isinstance(gamma, Real) or not math.isfinite(gamma):
        raise ValueError(f"gamma must be a finite number, got {gamma!r}")
    if not (isinstance(l_min, int) and isinstance(l_max, int)) or l_min < 0 or l_max < l_min:
        raise ValueError(f"need integers 0 <= l_min <= l_max, got l_min={l_min!r}, l_max={l_max!r}")
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1):
        raise ValueError(f"group_size must be an integer >= 1, got {group_size!r}")
    scale = None if score_min is None or score_max is None else (float(score_min), float(score_max))
    return NamedReward(
        "length",
        length_if_correct,
        gamma=float(gamma),
        l_min=l_min,
        l_max=l_max,
        inclusive=bool(inclusive),
        correctness=Correctness(correct, accuracy, score_tolerance, scale),
        require_multiple_correct=bool(require_multiple_correct),
        group_size=group_size,
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
    unknown = set(options) - OPTIONS[key]
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for reward {key!r}; valid: {sorted(OPTIONS[key])}")
    return float(weight), options


def _shared(spec: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(spec) - set(REWARD_KEYS) - set(GLOBAL_OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown recipe key(s) {sorted(unknown)}; valid: {', '.join(REWARD_KEYS + tuple(GLOBAL_OPTIONS))}"
        )
    return {k: spec.get(k, default) for k, default in GLOBAL_OPTIONS.items()}


def _accuracy_func(key: str, options: dict[str, Any], shared: Mapping[str, Any]) -> NamedReward:
    """The accuracy reward function of ``score`` / ``multi_dim`` / ``choice`` with its options over the shared ones."""
    scale = {"score_min": float(shared["score_min"]), "score_max": float(shared["score_max"])}
    if key == "score":
        defaults: dict[str, Any] = {**scale, "variant": shared["score_variant"]}
    elif key == "multi_dim":
        defaults = {**scale, "variant": shared["score_variant"], "weights": shared["dim_weights"]}
    else:
        defaults = {}
    return NamedReward(key, REWARD_FUNCS[key], **{**defaults, **options})


def build_accuracy(spec: Mapping[str, Any]) -> TaskAccuracy:
    """The recipe's task accuracy functions (its ``score``, ``multi_dim`` and ``choice`` options, also for a task
    whose reward is switched off)."""
    shared = _shared(spec)
    funcs = {}
    for key in ("score", "multi_dim", "choice"):
        entry = spec.get(key)
        options = _weight_and_options(key, entry)[1] if entry not in (None, False) else {}
        funcs[key] = _accuracy_func(key, options, shared)
    return TaskAccuracy(funcs)


def build_correctness(spec: Mapping[str, Any], rule: str = "tolerance", score_tolerance: float = 0.5) -> Correctness:
    """The correctness of the temporal gate (recipe ``temporal.correct``: ``tolerance`` or ``reward``) over the
    recipe's rewards and scale."""
    if rule not in ("tolerance", "reward"):
        raise ValueError(f"temporal.correct must be 'tolerance' or 'reward', got {rule!r}")
    shared = _shared(spec)
    scale = (float(shared["score_min"]), float(shared["score_max"]))
    return Correctness(rule, build_accuracy(spec) if rule == "reward" else None, score_tolerance, scale)


def _build_one(key: str, options: dict[str, Any], spec: Mapping[str, Any], shared: Mapping[str, Any]) -> NamedReward:
    """The reward function of recipe key ``key`` with its own options over the shared ones."""
    if key == "format":
        return NamedReward(key, REWARD_FUNCS[key], **options)
    if key != "length":
        return _accuracy_func(key, options, shared)
    kwargs = {**LENGTH_DEFAULTS, "score_tolerance": shared["score_tolerance"], **options}
    if kwargs.get("correct", "tolerance") == "reward":
        kwargs["accuracy"] = build_accuracy(spec)
    return make_length_reward(
        **kwargs, score_min=shared["score_min"], score_max=shared["score_max"], group_size=shared["group_size"]
    )


def build_reward_funcs(spec: Mapping[str, Any]) -> tuple[list[NamedReward], list[float]]:
    """Reward functions and weights (``GRPOConfig.reward_weights``) of a recipe dict.

    ``spec`` maps reward names (``format``, ``score``, ``multi_dim``, ``choice``, ``length``) to a weight or to a dict
    ``{"weight": w, **options}`` (``OPTIONS``; e.g. ``"length": {"weight": 1.0, "gamma": 0.1, "l_min": 320,
    "l_max": 512}``, ``"format": {"weight": 1.0, "variant": "official"}``); ``None`` / ``False`` leaves a reward out.
    Shared options: ``score_variant`` (default ``l1``), ``score_min`` / ``score_max`` (1 / 5), ``score_tolerance``
    (0.5, correctness for the length reward), ``dim_weights`` (multi-dimension λ_j) and ``group_size``. Functions come
    in the order of ``REWARD_KEYS``; unknown keys or options raise ``ValueError``.
    """
    shared = _shared(spec)
    funcs: list[NamedReward] = []
    weights: list[float] = []
    for key in REWARD_KEYS:
        entry = spec.get(key)
        if entry is None or entry is False:
            continue
        weight, options = _weight_and_options(key, entry)
        funcs.append(_build_one(key, options, spec, shared))
        weights.append(weight)
    if not funcs:
        raise ValueError(f"recipe enables no reward function; keys: {', '.join(REWARD_KEYS)}")
    logger.info("reward functions: %s", ", ".join(f"{f.__name__}×{w:g}" for f, w in zip(funcs, weights, strict=True)))
    return funcs, weights
