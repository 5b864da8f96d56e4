"""Tests for vqinsight.metrics: correlations vs scipy, pairwise accuracies vs brute force and reference vectors."""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from vqinsight.metrics import (
    accuracy_without_ties,
    krcc,
    logistic4,
    logistic4_starts,
    pairwise_accuracy_table,
    plcc,
    srcc,
    tie_calibrated_accuracy,
)

# ---------------------------------------------------------------- helpers


def acc_at_epsilon(human, margin, eps: float) -> float:
    """acc23 at a fixed epsilon, computed directly pair by pair."""
    correct = 0
    for h, m in zip(human, margin, strict=True):
        model = 0 if abs(m) <= eps else (1 if m > 0 else -1)
        correct += (h == 0 and model == 0) or (h != 0 and model == h)
    return correct / len(human)


def brute_force_tau(human, margin) -> tuple[float, float]:
    """O(n^2) reference: every candidate epsilon (0 and each distinct |margin|), smallest maximiser."""
    best = (-1.0, math.inf)
    for eps in sorted({0.0} | {abs(m) for m in margin}):
        acc = acc_at_epsilon(human, margin, eps)
        if acc > best[0]:
            best = (acc, eps)
    return best


def item_pairs(gold, metric) -> tuple[list[int], list[float]]:
    """All item pairs (i < j): h = sign(g_i - g_j), m = m_i - m_j."""
    h, m = [], []
    for i, j in itertools.combinations(range(len(gold)), 2):
        h.append(int(np.sign(gold[i] - gold[j])))
        m.append(metric[i] - metric[j])
    return h, m


# ---------------------------------------------------------------- correlations


@pytest.mark.parametrize("seed", range(3))
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=50)
    y = 0.5 * x + rng.normal(size=50)
    x[:5] = x[5]  # some ties for the rank correlations
    assert plcc(x, y) == pytest.approx(scipy.stats.pearsonr(x, y).statistic, abs=1e-12)
    assert srcc(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    assert krcc(x, y) == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-12)


def test_correlations_accept_lists_and_return_float():
    for f in (plcc, srcc, krcc):
        r = f([1, 2, 3], [1, 3, 2])
        assert isinstance(r, float)


def test_logistic4_improves_on_monotone_nonlinear():
    rng = np.random.default_rng(0)
    pred = rng.uniform(-6, 6, size=200)
    mos = 1.0 / (1.0 + np.exp(-pred)) + rng.normal(scale=0.02, size=200)
    linear = plcc(pred, mos)
    fitted = plcc(pred, mos, fit="logistic4")
    assert fitted > linear
    assert fitted > 0.99


def test_logistic4_exact_relation_gives_one():
    pred = np.linspace(0.0, 10.0, 60)
    mos = logistic4(pred, 5.0, 1.0, 4.0, 1.3)
    assert plcc(pred, mos, fit="logistic4") == pytest.approx(1.0, abs=1e-6)


ILL_PRED = [-1.6, -5.3, -4.8, -4.9, -2.1]
ILL_MOS = [1.6, 4.5, 4.3, 4.1, 2.8]


def test_logistic4_is_robust_to_its_starting_point():
    # ill-conditioned data: from DeQA-Score's single start the least squares stop at a flat curve (squared error
    # 6.09, PLCC -0.889); the best of the starts reaches squared error 0.071 (PLCC 0.994)
    import scipy.optimize

    pred, mos = np.array(ILL_PRED), np.array(ILL_MOS)
    deqa = logistic4_starts(pred, mos)[0]
    assert deqa == pytest.approx([4.5, 1.6, float(np.mean(pred)), float(np.std(pred)) / 4])
    popt, _ = scipy.optimize.curve_fit(logistic4, pred, mos, p0=deqa, maxfev=10000)
    one_start = logistic4(pred, *popt)
    assert float(np.sum((one_start - mos) ** 2)) > 6.0
    assert np.corrcoef(one_start, mos)[0, 1] == pytest.approx(-0.889, abs=1e-3)
    assert plcc(pred, mos, fit="logistic4") == pytest.approx(0.9942, abs=1e-3)
    # the starts follow the data, so an affine change of the predictions leaves the result alone
    for a, b in ((100.0, 1000.0), (-1.0, 0.0), (0.01, -3.0)):
        assert plcc(a * pred + b, mos, fit="logistic4") == pytest.approx(0.9942, abs=1e-3)


def test_logistic4_signed_slope_is_decreasing():
    x = np.linspace(-3.0, 3.0, 7)
    up, down = logistic4(x, 5.0, 1.0, 0.0, 1.0), logistic4(x, 5.0, 1.0, 0.0, -1.0)
    assert np.all(np.diff(up) > 0) and np.all(np.diff(down) < 0)
    assert np.all(np.isfinite(logistic4(x, 5.0, 1.0, 0.0, 0.0)))  # b4 = 0 never divides by zero


def test_logistic4_too_few_points_falls_back(caplog):
    with caplog.at_level(logging.WARNING, logger="vqinsight.metrics"):
        r = plcc([1.0, 2.0, 4.0], [1.0, 3.0, 2.0], fit="logistic4")
    assert r == pytest.approx(plcc([1.0, 2.0, 4.0], [1.0, 3.0, 2.0]))
    assert "linear PLCC" in caplog.text


def test_logistic4_fit_failure_falls_back(monkeypatch, caplog):
    import scipy.optimize

    def boom(*args, **kwargs):
        raise RuntimeError("Optimal parameters not found")

    monkeypatch.setattr(scipy.optimize, "curve_fit", boom)
    x, y = [1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 1.0, 4.0, 3.0, 5.0]
    with caplog.at_level(logging.WARNING, logger="vqinsight.metrics"):
        assert plcc(x, y, fit="logistic4") == pytest.approx(plcc(x, y))
    assert "fit failed" in caplog.text


def test_unknown_fit_raises():
    with pytest.raises(ValueError, match="fit must be"):
        plcc([1, 2, 3], [1, 2, 3], fit="cubic")


@pytest.mark.parametrize("f", [plcc, srcc, krcc])
@pytest.mark.parametrize(
    ("a", "b", "msg"),
    [
        ([1.0, 2.0, 3.0], [1.0, 2.0], "length mismatch"),
        ([1.0, float("nan"), 3.0], [1.0, 2.0, 3.0], "pred contains NaN"),
        ([1.0, 2.0, 3.0], [1.0, 2.0, float("inf")], "mos contains infinite"),
        ([1.0], [2.0], "too few"),
        ([[1.0, 2.0], [3.0, 4.0]], [1.0, 2.0], "1-D"),
    ],
)
def test_correlation_validation(f, a, b, msg):
    with pytest.raises(ValueError, match=msg):
        f(a, b)


@pytest.mark.parametrize("f", [plcc, srcc, krcc])
@pytest.mark.parametrize("fit", ["none", "logistic4"])
def test_constant_input_gives_nan(f, fit, recwarn):
    kwargs = {"fit": fit} if f is plcc else {}
    assert math.isnan(f([2.0, 2.0, 2.0, 2.0, 2.0], [1.0, 2.0, 3.0, 4.0, 5.0], **kwargs))
    assert math.isnan(f([1.0, 2.0, 3.0, 4.0, 5.0], [3.0] * 5, **kwargs))
    assert len(recwarn) == 0


# ---------------------------------------------------------------- accuracy without ties


@pytest.mark.parametrize(
    ("human", "margin", "expected"),
    [
        ([1, -1, 1, -1], [0.3, -2.0, 1.0, -0.1], 1.0),
        ([1, -1, 1, -1], [-0.3, 2.0, -1.0, 0.1], 0.0),
        ([1, 1, 0, 0], [1.0, -1.0, 5.0, -5.0], 0.5),  # human ties excluded
        ([1, -1, 1], [0.0, -1.0, 2.0], 2 / 3),  # margin exactly 0 on a non-tie is wrong
        ([1, -1, 0, 1, -1, 0, 1, 1, -1, 0], [1, -1, 1, -1, -1, -1, 1, 1, 1, 1], 5 / 7),
        ([0, 0, 0], [1.0, 0.0, -1.0], float("nan")),
    ],
)
def test_accuracy_without_ties(human, margin, expected):
    got = accuracy_without_ties(human, margin)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    ("human", "margin", "msg"),
    [
        ([1, 2], [0.1, 0.2], r"\{-1, 0, 1\}"),
        ([1, 0.5], [0.1, 0.2], r"\{-1, 0, 1\}"),
        ([1, float("nan")], [0.1, 0.2], "human contains NaN"),
        ([1, -1], [0.1, float("nan")], "margin contains NaN"),
        ([1, -1], [0.1], "length mismatch"),
        ([], [], "too few"),
    ],
)
def test_pairwise_validation(human, margin, msg):
    for f in (accuracy_without_ties, tie_calibrated_accuracy, pairwise_accuracy_table):
        with pytest.raises(ValueError, match=msg):
            f(human, margin)


# ---------------------------------------------------------------- tie-calibrated accuracy (acc23)

H_BIN = [1, -1, 0, 1, -1, 0, 1, 1, -1, 0]
M_BIN = [1, -1, 1, -1, -1, -1, 1, 1, 1, 1]


def test_acc23_binary_margins_mt_metrics_eval_semantics():
    acc, eps = tie_calibrated_accuracy(H_BIN, M_BIN)
    assert acc == pytest.approx(0.5)  # VideoAlign's implementation gives 0.4; we follow mt-metrics-eval
    assert eps == 0.0
    assert brute_force_tau(H_BIN, M_BIN) == pytest.approx((0.5, 0.0))


def test_acc23_stats_test_vectors():
    h, m = item_pairs([1, 2, 2, 3, 4], [2, 1, 1.5, 5, 3])
    assert len(h) == 10
    assert acc_at_epsilon(h, m, 0.0) == pytest.approx(0.6)
    assert acc_at_epsilon(h, m, 2.0) == pytest.approx(0.4)
    acc, eps = tie_calibrated_accuracy(h, m)
    assert acc == pytest.approx(0.7)
    assert eps == pytest.approx(0.5)  # smallest threshold reaching 0.7
    assert (acc, eps) == pytest.approx(brute_force_tau(h, m))


def test_zero_margin_is_tie_at_epsilon_zero():
    acc, eps = tie_calibrated_accuracy([0, 1], [0.0, 1.0])
    assert (acc, eps) == (1.0, 0.0)


def test_pairwise_accuracy_table():
    table = pairwise_accuracy_table(H_BIN, M_BIN)
    assert table == pytest.approx({"tau": 0.5, "epsilon": 0.0, "diff": 5 / 7, "n_pairs": 10, "n_human_ties": 3})
    assert isinstance(table["n_pairs"], int) and isinstance(table["n_human_ties"], int)


_DISCRETE = st.sampled_from([0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0, 3.0])
_CONTINUOUS = st.floats(min_value=-10.0, max_value=10.0, allow_nan=False, allow_infinity=False)
_PAIRS = st.lists(st.tuples(st.sampled_from([-1, 0, 1]), st.one_of(_DISCRETE, _CONTINUOUS)), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(pairs=_PAIRS, seed=st.integers(0, 2**32 - 1))
def test_tau_properties(pairs, seed):
    h = [p[0] for p in pairs]
    m = [p[1] for p in pairs]
    acc, eps = tie_calibrated_accuracy(h, m)
    ref_acc, ref_eps = brute_force_tau(h, m)
    assert acc == pytest.approx(ref_acc, abs=1e-12)
    assert eps == ref_eps
    assert acc == pytest.approx(acc_at_epsilon(h, m, eps), abs=1e-12)  # the returned epsilon achieves it
    assert acc >= acc_at_epsilon(h, m, 0.0) - 1e-12
    perm = np.random.default_rng(seed).permutation(len(h))
    assert tie_calibrated_accuracy([h[i] for i in perm], [m[i] for i in perm]) == (acc, eps)
    assert tie_calibrated_accuracy([-x for x in h], [-x for x in m]) == (acc, eps)
    diff = accuracy_without_ties(h, m)
    if all(x == 0 for x in h):
        assert math.isnan(diff)
    else:
        assert diff == pytest.approx(
            acc_at_epsilon([x for x in h if x], [y for x, y in zip(h, m, strict=True) if x], 0.0)
        )
