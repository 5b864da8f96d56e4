"""Evaluation metrics: correlation with MOS (PLCC / SRCC / KRCC) and pairwise-preference accuracies.

Correlations follow the IQA/VQA convention of DeQA-Score's ``cal_plcc_srcc.py`` (optional VQEG 4-parameter logistic
mapping before PLCC). Pairwise accuracies follow the paper's "diff" (accuracy without ties, identical to
VideoAlign's ``calc_accuracy_without_ties``) and "tau" (tie-calibrated accuracy ``acc23`` of Deutsch, Foster &
Freitag 2023, as in mt-metrics-eval, with the tie threshold optimised exactly over all candidate values).

Degenerate inputs: a constant array makes a correlation undefined; the functions then return ``float("nan")``
instead of raising (scipy returns nan too, but with a warning per call).
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Literal

import numpy as np
import scipy.optimize
import scipy.special
import scipy.stats

logger = logging.getLogger(__name__)

__all__ = [
    "accuracy_without_ties",
    "krcc",
    "logistic4",
    "logistic4_starts",
    "pairwise_accuracy_table",
    "tie_accuracy_curve",
    "plcc",
    "srcc",
    "tie_calibrated_accuracy",
]

_TINY = 1e-12  # floor for |b4| in the logistic (sign kept), so the slope parameter can never divide by zero
_MIN_FIT_POINTS = 4  # the 4-parameter logistic needs at least as many points as parameters


def _validate_pair(a: object, b: object, names: tuple[str, str], min_n: int) -> tuple[np.ndarray, np.ndarray]:
    """Convert two inputs to equal-length 1-D finite float arrays.

    Args:
        a: First array-like.
        b: Second array-like.
        names: Names of the two inputs, used in error messages.
        min_n: Minimum number of elements.

    Returns:
        The two inputs as float64 arrays.

    Raises:
        ValueError: If an input is not 1-D, the lengths differ, there are fewer than ``min_n`` elements, or an
            input contains NaN or infinity.
    """
    arrays = []
    for x, name in zip((a, b), names, strict=True):
        try:
            arr = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} must be a 1-D array of numbers: {e}") from e
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
        arrays.append(arr)
    x, y = arrays
    if x.shape != y.shape:
        raise ValueError(f"length mismatch: {names[0]} has {x.size} elements, {names[1]} has {y.size}")
    if x.size < min_n:
        raise ValueError(f"too few elements: need at least {min_n}, got {x.size}")
    for arr, name in zip(arrays, names, strict=True):
        bad = ~np.isfinite(arr)
        if bad.any():
            kind = "NaN" if np.isnan(arr).any() else "infinite value"
            raise ValueError(f"{name} contains {kind} at index {int(np.flatnonzero(bad)[0])} ({int(bad.sum())} bad)")
    return x, y


def _is_constant(x: np.ndarray) -> bool:
    return bool(np.all(x == x[0]))


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of validated arrays; nan if either is constant (no warning)."""
    if _is_constant(x) or _is_constant(y):
        logger.debug("constant input to a correlation; returning nan")
        return float("nan")
    xc = x - x.mean()
    yc = y - y.mean()
    denom = np.sqrt(np.dot(xc, xc) * np.dot(yc, yc))
    if not np.isfinite(denom) or denom == 0.0:
        return float("nan")
    return float(np.clip(np.dot(xc, yc) / denom, -1.0, 1.0))


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """VQEG 4-parameter logistic ``(b1 - b2) / (1 + exp(-(x - b3) / b4)) + b2`` (overflow-safe).

    The form of DeQA-Score's ``src/evaluate/cal_plcc_srcc.py`` (``logistic_4params``), with a signed ``b4``: a
    negative ``b4`` makes the curve decreasing.

    Args:
        x: Input values (model predictions).
        b1: The asymptote as ``(x - b3) / b4`` grows.
        b2: The other asymptote.
        b3: Midpoint.
        b4: Slope scale; its magnitude is floored at a tiny positive number (sign kept), never divided by zero.

    Returns:
        The mapped values.
    """
    scale = math.copysign(max(abs(float(b4)), _TINY), float(b4))
    return (b1 - b2) * scipy.special.expit((np.asarray(x, dtype=np.float64) - b3) / scale) + b2


def logistic4_starts(pred: np.ndarray, mos: np.ndarray) -> list[list[float]]:
    """Starting points of the fit: DeQA-Score's ``[max(mos), min(mos), mean(pred), std(pred) / 4]`` first, then the
    midpoint at the 25th / 75th percentile of ``pred``, the slope scale ``std(pred)`` and each slope's negative."""
    spread = float(np.std(pred)) or 1e-6
    mids = [float(np.mean(pred)), *(float(q) for q in np.percentile(pred, [25.0, 75.0]))]
    hi, lo = float(np.max(mos)), float(np.min(mos))
    return [[hi, lo, mid, sign * spread * k] for sign in (1.0, -1.0) for k in (0.25, 1.0) for mid in mids]


def _fit_logistic4(pred: np.ndarray, mos: np.ndarray) -> np.ndarray | None:
    """Fit :func:`logistic4` mapping ``pred`` to ``mos`` from every start of :func:`logistic4_starts` and keep the
    fit with the lowest squared error; None if no fit succeeds with finite values."""
    best: tuple[float, np.ndarray] | None = None
    errors = []
    for p0 in logistic4_starts(pred, mos):
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore", scipy.optimize.OptimizeWarning)
                popt, _ = scipy.optimize.curve_fit(logistic4, pred, mos, p0=p0, maxfev=10000)
        except (RuntimeError, ValueError) as e:
            errors.append(str(e))
            continue
        fitted = logistic4(pred, *popt)
        if not (np.all(np.isfinite(popt)) and np.all(np.isfinite(fitted))):
            continue
        sse = float(np.sum((fitted - mos) ** 2))
        if best is None or sse < best[0]:
            best = (sse, fitted)
    if best is None:
        logger.warning("logistic4 fit failed from every start (%s); falling back to linear PLCC", "; ".join(errors))
        return None
    return best[1]


def plcc(pred: object, mos: object, fit: Literal["none", "logistic4"] = "none") -> float:
    """Pearson linear correlation coefficient between predictions and MOS.

    Args:
        pred: Model scores, 1-D.
        mos: Mean opinion scores, 1-D, same length.
        fit: ``"none"`` for raw PLCC; ``"logistic4"`` to first map ``pred`` to ``mos`` with the VQEG 4-parameter
            logistic (:func:`logistic4`, DeQA-Score's form and ``maxfev=10000``), fitted from the 12 starts of
            :func:`logistic4_starts`, the least-squares best kept: one start (DeQA's) can stop in a poor local
            optimum on ill-conditioned data. The fitted curve may be decreasing. With fewer than 4 points, or if
            the fit fails or the fitted values are constant, a warning is logged and the linear PLCC is returned.

    Returns:
        The correlation, or nan if either input is constant.

    Raises:
        ValueError: On invalid input (see module docstring) or an unknown ``fit``.
    """
    if fit not in ("none", "logistic4"):
        raise ValueError(f"fit must be 'none' or 'logistic4', got {fit!r}")
    x, y = _validate_pair(pred, mos, ("pred", "mos"), 2)
    linear = _pearson(x, y)
    if fit == "none" or np.isnan(linear):
        return linear
    if x.size < _MIN_FIT_POINTS:
        logger.warning("logistic4 fit needs >= %d points, got %d; using linear PLCC", _MIN_FIT_POINTS, x.size)
        return linear
    fitted = _fit_logistic4(x, y)
    if fitted is None:
        return linear
    if _is_constant(fitted):
        logger.warning("logistic4 fit collapsed to a constant; falling back to linear PLCC")
        return linear
    return _pearson(fitted, y)


def srcc(pred: object, mos: object) -> float:
    """Spearman rank correlation (Pearson on average ranks, as ``scipy.stats.spearmanr``).

    Args:
        pred: Model scores, 1-D.
        mos: Mean opinion scores, 1-D, same length.

    Returns:
        The correlation, or nan if either input is constant.

    Raises:
        ValueError: On invalid input.
    """
    x, y = _validate_pair(pred, mos, ("pred", "mos"), 2)
    return _pearson(scipy.stats.rankdata(x), scipy.stats.rankdata(y))


def krcc(pred: object, mos: object) -> float:
    """Kendall rank correlation, tau-b (``scipy.stats.kendalltau`` default).

    Args:
        pred: Model scores, 1-D.
        mos: Mean opinion scores, 1-D, same length.

    Returns:
        The correlation, or nan if either input is constant.

    Raises:
        ValueError: On invalid input.
    """
    x, y = _validate_pair(pred, mos, ("pred", "mos"), 2)
    if _is_constant(x) or _is_constant(y):
        logger.debug("constant input to krcc; returning nan")
        return float("nan")
    return float(scipy.stats.kendalltau(x, y).statistic)


def _validate_pairwise(human: object, margin: object) -> tuple[np.ndarray, np.ndarray]:
    """Validate pairwise inputs: human in {-1, 0, 1}, finite margins, equal non-zero length."""
    h, m = _validate_pair(human, margin, ("human", "margin"), 1)
    bad = ~np.isin(h, (-1.0, 0.0, 1.0))
    if bad.any():
        raise ValueError(f"human must be in {{-1, 0, 1}}, got {h[bad][0]!r} at index {int(np.flatnonzero(bad)[0])}")
    return h.astype(np.int64), m


def accuracy_without_ties(human: object, margin: object) -> float:
    """Pairwise accuracy over pairs the human did not tie (the paper's "diff").

    A model margin of exactly 0 on a non-tied pair counts as wrong, so this equals VideoAlign's
    ``calc_accuracy_without_ties`` = C / (C + D + T_m).

    Args:
        human: Per-pair human preference in {-1, 0, +1} (+1: first preferred, 0: tie).
        margin: Per-pair model margin (> 0 favours the first item).

    Returns:
        The accuracy, or nan if every pair is a human tie.

    Raises:
        ValueError: On invalid input.
    """
    h, m = _validate_pairwise(human, margin)
    keep = h != 0
    if not keep.any():
        return float("nan")
    return float(np.mean(np.sign(m[keep]) == h[keep]))


def tie_calibrated_accuracy(human: object, margin: object) -> tuple[float, float]:
    """Tie-calibrated pairwise accuracy ``acc23`` (Deutsch, Foster & Freitag 2023), the paper's "tau".

    The model predicts a tie when ``|margin| <= epsilon``, else ``sign(margin)``. A pair is correct when both
    human and model tie, or neither ties and the signs agree; accuracy is over all pairs, i.e.
    ``(C + T_hm) / (C + D + T_h + T_m + T_hm)``. ``epsilon`` is optimised exactly over the candidates 0 and every
    distinct ``|margin|`` (equal values grouped under one threshold, as mt-metrics-eval's ``tau_optimization``)
    with an O(n log n) sort-and-sweep. The smallest maximising ``epsilon`` is returned.

    Args:
        human: Per-pair human preference in {-1, 0, +1} (+1: first preferred, 0: tie).
        margin: Per-pair model margin (> 0 favours the first item).

    Returns:
        ``(accuracy, epsilon)``.

    Raises:
        ValueError: On invalid input.
    """
    h, m = _validate_pairwise(human, margin)
    a = np.abs(m)
    order = np.argsort(a, kind="stable")
    a_sorted = a[order]
    tie_hit = (h == 0)[order].astype(np.int64)  # correct iff the model ties this pair
    sign_hit = ((h != 0) & (np.sign(m) == h))[order].astype(np.int64)  # correct iff the model does not tie
    cum_tie = np.concatenate(([0], np.cumsum(tie_hit)))
    cum_sign = np.concatenate(([0], np.cumsum(sign_hit)))
    candidates = np.unique(np.concatenate(([0.0], a_sorted)))  # sorted ascending, distinct
    k = np.searchsorted(a_sorted, candidates, side="right")  # number of pairs with |margin| <= candidate
    correct = cum_tie[k] + (cum_sign[-1] - cum_sign[k])  # integer counts: exact comparison
    best = int(np.argmax(correct))  # first maximum = smallest epsilon
    return float(correct[best] / h.size), float(candidates[best])


def tie_accuracy_curve(human: object, margin: object) -> tuple[np.ndarray, np.ndarray]:
    """Tie-calibrated accuracy at every candidate threshold: ``(epsilons, accuracies)``, both ascending in epsilon.

    The same sweep as :func:`tie_calibrated_accuracy` (whose result is the curve's first maximum), for plotting
    how the accuracy depends on the tie threshold.
    """
    h, m = _validate_pairwise(human, margin)
    a = np.abs(m)
    order = np.argsort(a, kind="stable")
    a_sorted = a[order]
    cum_tie = np.concatenate(([0], np.cumsum((h == 0)[order])))
    cum_sign = np.concatenate(([0], np.cumsum(((h != 0) & (np.sign(m) == h))[order])))
    candidates = np.unique(np.concatenate(([0.0], a_sorted)))
    k = np.searchsorted(a_sorted, candidates, side="right")
    return candidates, (cum_tie[k] + (cum_sign[-1] - cum_sign[k])) / h.size


def pairwise_accuracy_table(human: object, margin: object) -> dict[str, float | int]:
    """Pairwise summary for the report.

    Args:
        human: Per-pair human preference in {-1, 0, +1}.
        margin: Per-pair model margin.

    Returns:
        ``{"tau": acc23, "epsilon": eps, "diff": accuracy_without_ties, "n_pairs": n, "n_human_ties": k}``.

    Raises:
        ValueError: On invalid input.
    """
    h, m = _validate_pairwise(human, margin)
    tau, eps = tie_calibrated_accuracy(h, m)
    return {
        "tau": tau,
        "epsilon": eps,
        "diff": accuracy_without_ties(h, m),
        "n_pairs": int(h.size),
        "n_human_ties": int(np.sum(h == 0)),
    }
