"""Tests of the GRPO reward functions (TRL contract, paper Eqs. 3-7)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqinsight.rewards import (
    REWARD_FUNCS,
    SCORE_VARIANTS,
    choice_reward,
    format_reward,
    is_correct,
    length_reward,
    multi_dim_reward,
    score_reward,
    score_similarity,
    temporal_bonus,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TRL_EXTRAS = {"prompts": ["p"], "trainer_state": object(), "log_metric": lambda *a, **k: None}


def ok(answer: str, think: str = "reasoning") -> str:
    """A well-formed completion."""
    return f"<think>{think}</think><answer>{answer}</answer>"


def conv(text: str) -> list[dict]:
    """A TRL conversational completion."""
    return [{"role": "assistant", "content": text}]


# --- format_reward -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (ok("3"), 1.0),
        (conv(ok("3")), 1.0),
        ([{"role": "assistant", "content": [{"type": "text", "text": ok("A")}]}], 1.0),
        ("<answer>3</answer>", 0.0),
        (ok("3") + "<answer>4</answer>", 0.0),
        ("<think><think>x</think></think><answer>3</answer>", 0.0),
        ("", 0.0),
        (None, 0.0),
        (17, 0.0),
    ],
)
def test_format_reward(completion: Any, expected: float) -> None:
    assert format_reward([completion], **TRL_EXTRAS) == [expected]


# --- score_reward (Eq. 3) --------------------------------------------------------------------------------------------
SPAN = {"variant": "l1_span"}


@pytest.mark.parametrize(
    ("completion", "gt", "kwargs", "expected"),
    [
        # default "l1": Eq. 3 literally on the task scale, max(0, 1 - |p - g|)
        (ok("4"), 3.0, {}, 0.0),  # a 1-point error earns nothing
        (ok("3"), 3.0, {}, 1.0),
        (ok("5"), 1.0, {}, 0.0),
        (ok("3.5"), 3.0, {}, 0.5),
        (ok("3.7"), 3.2, {}, 0.5),
        (ok("1.75"), 2.0, {}, 0.75),
        (ok("4"), 4.9, {}, 0.1),
        (ok("2.9"), 3.0, {"variant": "l1"}, 0.9),
        (conv(ok("Score: 3.25")), 3.0, {}, 0.75),
        # off the task's scale: unparsed (0.0), never clipped into credit
        (ok("9"), 3.0, {}, 0.0),
        (ok("9"), 4.5, {}, 0.0),  # clipped to 5 it would earn 0.5
        (ok("5.2"), 5.0, {}, 0.0),  # 0.8 if it counted
        (ok("3333333"), 3.0, {}, 0.0),
        (ok("-100"), 1.5, {}, 0.0),
        (ok("0.9"), 1.0, {}, 0.0),
        (ok("5"), 5.0, {}, 1.0),  # the scale's ends are on it
        (ok("1"), 1.0, {}, 1.0),
        (ok("7"), 5.0, {"score_min": 0.0, "score_max": 10.0}, 0.0),  # no span normalisation
        (ok("5.4"), 5.0, {"score_min": 0.0, "score_max": 10.0}, 0.6),
        # "l1_span": 1 - |p - g| / (score_max - score_min)
        (ok("4"), 3.0, SPAN, 0.75),
        (ok("3"), 3.0, SPAN, 1.0),
        (ok("5"), 1.0, SPAN, 0.0),
        (ok("3.5"), 3.0, SPAN, 0.875),
        (conv(ok("Score: 4.00")), 3.0, SPAN, 0.75),
        (ok("9"), 3.0, SPAN, 0.0),  # off the scale: unparsed
        (ok("-100"), 2.0, SPAN, 0.0),
        (ok("7"), 5.0, {"score_min": 0.0, "score_max": 10.0, **SPAN}, 0.8),
        (ok("6"), 5.0, {"variant": "threshold"}, 0.0),
        (ok("four"), 3.0, SPAN, 0.0),
        (ok("4"), 3.0, {"variant": "relative"}, 1 - 1 / 3),
        (ok("1"), 3.0, {"variant": "relative"}, 1 / 3),
        (ok("5"), 1.0, {"variant": "relative"}, 0.0),  # min(1, 4/1) caps the error
        (ok("6.0"), 4.5, {"variant": "relative"}, 1 - 1.5 / 4.5),  # official: no scale check, no clipping
        (ok("3.3"), 3.0, {"variant": "threshold"}, 1.0),
        (ok("3.4"), 3.0, {"variant": "threshold"}, 0.0),
        ("<answer>3.5</answer>", 3.0, {}, 0.5),  # format is not score_reward's business
        (ok("four"), 3.0, {}, 0.0),
        (ok("nan"), 3.0, {}, 0.0),
        (ok("1e400"), 3.0, {}, 0.0),
        ("4", 3.0, {}, 0.0),  # no answer tags
        ("", 3.0, {}, 0.0),
        (None, 3.0, {}, 0.0),
        (ok("4"), None, {}, None),  # other task in a mixed batch
        (ok("4"), float("nan"), {}, None),  # parquet null read as NaN
        (ok("4"), "3", {}, None),
        (ok("3.5"), 3, {}, 0.5),  # integer gt
        (ok("4"), 3, SPAN, 0.75),
    ],
)
def test_score_reward(completion: Any, gt: Any, kwargs: dict, expected: float | None) -> None:
    out = score_reward([completion], gt_score=[gt], **kwargs, **TRL_EXTRAS)
    if expected is None:
        assert out == [None]
    else:
        assert out[0] == pytest.approx(expected)


def test_score_reward_relative_zero_gt_is_finite() -> None:
    # the official (|p - g| + 1e-9) / (|g| + 1e-9): at gt 0 every answer, the exact one included, earns 0
    out = score_reward([ok("0"), ok("1")], gt_score=[0.0, 0.0], score_min=0.0, score_max=5.0, variant="relative")
    assert out == [0.0, 0.0]


def test_score_reward_mixed_batch() -> None:
    completions = [ok("4"), ok("Video A"), conv(ok("2")), "garbage", ok("3.5")]
    gts = [3.0, None, 2.0, 5.0, 3.0]
    assert score_reward(completions, gt_score=gts) == [0.0, None, 1.0, 0.0, 0.5]
    assert score_reward(completions, gt_score=gts, variant="l1_span") == [0.75, None, 1.0, 0.0, 0.875]


def test_score_variants_and_default() -> None:
    assert SCORE_VARIANTS == ("l1", "l1_span", "relative", "threshold")
    assert score_similarity(3.7, 3.2, 1.0, 5.0) == pytest.approx(0.5)
    assert score_similarity(4.0, 3.0, 1.0, 5.0) == 0.0
    assert score_similarity(4.0, 3.0, 1.0, 5.0, "l1_span") == 0.75
    completions, gts = [ok("4"), ok("3.5"), ok("2.2")], [3.0, 3.0, 2.0]
    assert score_reward(completions, gt_score=gts) == score_reward(completions, gt_score=gts, variant="l1")
    with pytest.raises(ValueError, match="variant"):
        score_similarity(3.0, 3.0, 1.0, 5.0, "span")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"score_min": 5.0, "score_max": 1.0}, "scale"),
        ({"score_min": 1.0, "score_max": 1.0}, "scale"),
        ({"score_max": float("inf")}, "scale"),
        ({"variant": "l2"}, "variant"),
        ({"variant": "L1"}, "variant"),
    ],
)
def test_score_reward_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        score_reward([ok("3")], gt_score=[3.0], **kwargs)


def test_misaligned_column_raises() -> None:
    with pytest.raises(ValueError, match="gt_score"):
        score_reward([ok("3"), ok("4")], gt_score=[3.0])


# --- multi_dim_reward (Eq. 6) ----------------------------------------------------------------------------------------
GT = {"spatial": 3.0, "temporal": 4.0, "alignment": 5.0}


@pytest.mark.parametrize(
    ("completion", "gt", "weights", "expected"),
    [
        (ok('{"spatial": 3, "temporal": 4, "alignment": 5}'), GT, None, 1.0),
        (ok('{"spatial": 4, "temporal": 4, "alignment": 5}'), GT, None, 2 / 3),  # 1-point error: r_j = 0
        (ok('{"spatial": 4, "temporal": 3, "alignment": 1}'), GT, None, 0.0),
        (ok('{"spatial": 3.5, "temporal": 3.75, "alignment": 4.5}'), GT, None, (0.5 + 0.75 + 0.5) / 3),
        (
            ok('{"spatial": 3.5, "temporal": 4, "consistency": 5}'),
            GT,
            {"spatial": 2, "temporal": 1, "alignment": 1},
            0.75,
        ),
        (ok('{"spatial": 4, "temporal": 4, "alignment": 5}'), GT, {"temporal": 1}, 1.0),  # only temporal counts
        (ok('{"spatial": 4, "temporal": 4, "alignment": 5}'), GT, {"consistency": 1}, 1.0),
        (ok("spatial: 3, temporal: 4, alignment: 5"), GT, None, 1.0),
        (conv(ok('{"spatial": 3, "temporal": 4, "alignment": 5}')), GT, None, 1.0),
        (
            ok('{"spatial": 3, "temporal": 4, "alignment": 5}'),
            {"spatial": 3, "temporal": 4, "consistency": 5},
            None,
            1.0,
        ),
        (ok('{"spatial": 3, "temporal": 4}'), GT, None, 0.0),  # missing dimension: no partial credit
        (ok('{"spatial": NaN, "temporal": 4, "alignment": 5}'), GT, None, 0.0),
        (ok("3.5"), GT, None, 0.0),
        (None, GT, None, 0.0),
        (ok('{"spatial": 3, "temporal": 4, "alignment": 5}'), None, None, None),
        (ok('{"spatial": 3, "temporal": 4, "alignment": 5}'), {"spatial": 3, "temporal": 4}, None, None),
        (
            ok('{"spatial": 3, "temporal": 4, "alignment": 5}'),
            {"spatial": 3, "temporal": None, "alignment": 5},
            None,
            None,
        ),
        (ok('{"spatial": 3, "temporal": 4, "alignment": 5}'), 3.0, None, None),
    ],
)
def test_multi_dim_reward(completion: Any, gt: Any, weights: dict | None, expected: float | None) -> None:
    out = multi_dim_reward([completion], gt_scores=[gt], weights=weights, **TRL_EXTRAS)
    if expected is None:
        assert out == [None]
    else:
        assert out[0] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("answer", "weights", "variant", "expected"),
    [
        ('{"spatial": 4, "temporal": 4, "alignment": 5}', None, "l1", 2 / 3),
        ('{"spatial": 4, "temporal": 4, "alignment": 5}', None, "l1_span", 1 - 0.25 / 3),
        ('{"spatial": 4, "temporal": 3, "alignment": 1}', None, "l1", 0.0),
        ('{"spatial": 4, "temporal": 3, "alignment": 1}', None, "l1_span", (0.75 + 0.75 + 0.0) / 3),
        ('{"spatial": 4, "temporal": 4, "consistency": 5}', {"spatial": 2, "temporal": 1, "alignment": 1}, "l1", 0.5),
        (
            '{"spatial": 4, "temporal": 4, "consistency": 5}',
            {"spatial": 2, "temporal": 1, "alignment": 1},
            "l1_span",
            0.875,
        ),
        ('{"spatial": 3.2, "temporal": 4, "alignment": 5}', None, "threshold", 1.0),
        ('{"spatial": 4, "temporal": 4, "consistency": 5}', None, "relative", 1 - 1 / 9),  # official keys, order
        ('{"spatial": 4, "temporal": 4, "alignment": 5}', None, "relative", 0.0),
    ],
)
def test_multi_dim_reward_variants(answer: str, weights: dict | None, variant: str, expected: float) -> None:
    out = multi_dim_reward([ok(answer)], gt_scores=[GT], weights=weights, variant=variant)
    assert out[0] == pytest.approx(expected)


@pytest.mark.parametrize("variant", ["l1", "l1_span", "threshold"])
def test_multi_dim_reward_off_scale_is_unparsed(variant: str) -> None:
    # one dimension off the 1-5 scale makes the whole answer unparsed (0.0), not two dimensions' partial credit
    answers = ['{"spatial": 3, "temporal": 4, "alignment": 6}', '{"spatial": 3, "temporal": 4, "alignment": 5}']
    out = multi_dim_reward([ok(a) for a in answers], gt_scores=[GT, GT], variant=variant)
    assert out == [0.0, 1.0]


def test_multi_dim_reward_unknown_variant() -> None:
    with pytest.raises(ValueError, match="variant"):
        multi_dim_reward(["garbage"], gt_scores=[GT], variant="l2")


@pytest.mark.parametrize(
    "weights",
    [{}, {"spatial": 0, "temporal": 0}, {"spatial": -1, "temporal": 2}, {"aesthetic": 1}, {"spatial": float("nan")}],
)
def test_multi_dim_reward_bad_weights(weights: dict) -> None:
    with pytest.raises(ValueError, match="weight|dimension"):
        multi_dim_reward([ok("x")], gt_scores=[GT], weights=weights)


# --- choice_reward (Eq. 7) -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("completion", "gt", "expected"),
    [
        (ok("Video A"), "A", 1.0),
        (ok("Video A"), "a", 1.0),
        (ok("Video A"), "B", 0.0),
        (ok("(B)"), "B", 1.0),
        (conv(ok("video b.")), "B", 1.0),
        (ok("a video"), "A", 0.0),
        (ok("Video A or Video B"), "A", 0.0),
        (ok("tie"), "tie", 1.0),
        (ok("Yes"), "yes", 1.0),
        (ok("no"), "No", 1.0),
        (ok("no"), "yes", 0.0),
        ("Video A", "A", 0.0),  # no answer tags
        (ok(""), "A", 0.0),
        (None, "A", 0.0),
        (ok("Video A"), None, None),
        (ok("Video A"), "", None),
        (ok("Video A"), 1, None),
    ],
)
def test_choice_reward(completion: Any, gt: Any, expected: float | None) -> None:
    assert choice_reward([completion], gt_choice=[gt], **TRL_EXTRAS) == [expected]


def test_mixed_task_batch() -> None:
    completions = [ok("4"), ok('{"spatial": 3, "temporal": 4, "alignment": 5}'), ok("Video B"), ok("yes")]
    gt_score = [3.0, None, None, None]
    gt_scores = [None, GT, None, None]
    gt_choice = [None, None, "B", "no"]
    assert score_reward(completions, gt_score=gt_score) == [0.0, None, None, None]
    assert score_reward(completions, gt_score=gt_score, variant="l1_span") == [0.75, None, None, None]
    assert multi_dim_reward(completions, gt_scores=gt_scores) == [None, 1.0, None, None]
    assert choice_reward(completions, gt_choice=gt_choice) == [None, None, 1.0, 0.0]
    assert format_reward(completions) == [1.0] * 4
    tasks = ["video_score", "multidim_score", "comparison", "vqa"]
    columns = {"gt_score": gt_score, "gt_scores": gt_scores, "gt_choice": gt_choice}
    assert is_correct(completions, tasks, **columns) == [False, True, True, False]
    assert is_correct(completions, tasks, score_tolerance=1.0, **columns) == [True, True, True, False]


# --- length_reward (Eq. 5) -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n_tokens", "inclusive", "expected"),
    [(320, False, 0.0), (321, False, 0.1), (511, False, 0.1), (512, False, 0.0), (320, True, 0.1), (512, True, 0.1),
     (319, True, 0.0), (513, True, 0.0), (0, False, 0.0)],
)  # fmt: skip
def test_length_reward_tokens(n_tokens: int, inclusive: bool, expected: float) -> None:
    out = length_reward(["x"], completion_ids=[list(range(n_tokens))], inclusive=inclusive, **TRL_EXTRAS)
    assert out == [expected]


def test_length_reward_whitespace_fallback() -> None:
    assert length_reward(["w " * 400, "w " * 10, None], l_min=320, l_max=512) == [0.1, 0.0, 0.0]
    assert length_reward([conv("w " * 400)]) == [0.1]


@pytest.mark.parametrize(
    ("correct", "require_multiple", "expected"),
    [
        ([True, False, True], False, [0.2, 0.0, 0.2]),
        ([True, False, True], True, [0.2, 0.0, 0.2]),
        ([True, False, False], False, [0.2, 0.0, 0.0]),
        ([True, False, False], True, [0.0, 0.0, 0.0]),  # only one correct rollout
        ([1.0, 0.0, 0.9], False, [0.2, 0.0, 0.2]),
        ([None, "yes", 0.5], False, [0.0, 0.0, 0.0]),
        (None, True, [0.2, 0.2, 0.2]),  # no correctness info: option is a no-op
    ],
)
def test_length_reward_correct_gate(correct: list | None, require_multiple: bool, expected: list[float]) -> None:
    ids = [[0] * 400] * 3
    out = length_reward(
        ["", "", ""], completion_ids=ids, correct=correct, gamma=0.2, require_multiple_correct=require_multiple
    )
    assert out == expected


# --- temporal_bonus (Eq. 4) ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ordered", "shuffled", "kwargs", "expected"),
    [
        ([True, True, False], [False, False], {}, [0.3, 0.3, 0.0]),
        ([True, False], [True, True], {}, [0.0, 0.0]),  # 0.5 <= 0.8 * 1.0
        ([1, 1, 1, 1, 0], [1, 1], {}, [0.0] * 5),  # boundary 0.8 == 0.8 * 1.0: strict gives nothing
        ([1, 1, 1, 1, 0], [1, 1], {"strict": False}, [0.3, 0.3, 0.3, 0.3, 0.0]),  # >= (official)
        ([True, False, False, False], [True, False], {"mu": 0.5}, [0.0] * 4),  # 0.25 == 0.5 * 0.5
        ([True, False, False, False], [True, False], {"mu": 0.5, "strict": False}, [0.3, 0.0, 0.0, 0.0]),
        ([False, False], [False], {"strict": False}, [0.0, 0.0]),  # gate open but nobody correct
        ([0.9, 0.2], [0.0], {"alpha": 0.5}, [0.5, 0.0]),
        ([True], [], {}, [0.0]),  # no shuffled rollouts: no bonus
        ([], [True], {}, []),
        ([None, "x", float("nan")], [False], {}, [0.0, 0.0, 0.0]),
    ],
)
def test_temporal_bonus(ordered: list, shuffled: list, kwargs: dict, expected: list[float]) -> None:
    assert temporal_bonus(ordered, shuffled, **kwargs) == pytest.approx(expected)


# --- is_correct ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("completion", "task", "columns", "expected"),
    [
        (ok("3.5"), "video_score", {"gt_score": [3.0]}, True),
        (ok("3.6"), "image_score", {"gt_score": [3.0]}, False),
        (ok("3.6"), "image_score", {"gt_score": [3.0], "score_tolerance": 0.6}, True),
        (ok("3"), "video_score", {"gt_score": [None]}, False),
        (ok("3"), "video_score", {}, False),
        (ok('{"spatial": 3.4, "temporal": 4, "alignment": 4.5}'), "multidim_score", {"gt_scores": [GT]}, True),
        (ok('{"spatial": 3.4, "temporal": 4, "alignment": 4.4}'), "multidim_score", {"gt_scores": [GT]}, False),
        (ok("Video A"), "comparison", {"gt_choice": ["A"]}, True),
        (ok("no"), "vqa", {"gt_choice": ["yes"]}, False),
        (ok("Video A"), "prompt", {"gt_choice": ["A"]}, False),  # unknown task
        (None, "vqa", {"gt_choice": ["yes"]}, False),
    ],
)
def test_is_correct(completion: Any, task: str, columns: dict, expected: bool) -> None:
    assert is_correct([completion], task, **columns) == [expected]


def test_is_correct_off_scale_is_unparsed() -> None:
    completions = [ok("5.2"), ok("5"), ok('{"spatial": 3, "temporal": 4, "alignment": 5.3}')]
    tasks = ["video_score", "video_score", "multidim_score"]
    cols = {"gt_score": [5.0, 5.0, None], "gt_scores": [None, None, GT]}
    assert is_correct(completions, tasks, **cols) == [True, True, True]  # no scale: within the 0.5 tolerance
    assert is_correct(completions, tasks, scale=(1.0, 5.0), **cols) == [False, True, False]


def test_registry() -> None:
    assert REWARD_FUNCS == {
        "format": format_reward,
        "score": score_reward,
        "multi_dim": multi_dim_reward,
        "choice": choice_reward,
        "length": length_reward,
    }
    assert all(f.__name__ == f"{k}_reward" for k, f in REWARD_FUNCS.items())


# --- fuzz: rewards never raise and stay in their documented range ---------------------------------------------------
_ANSWERS = st.one_of(
    st.text(max_size=40),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["Video A", "video b", "(a)", "tie", "yes", "no", '{"spatial": 1e400}', "nan", "9" * 400]),
    st.dictionaries(
        st.sampled_from(["spatial", "temporal", "alignment", "consistency", "x"]),
        st.one_of(st.floats(), st.text(max_size=4)),
    ).map(lambda d: str(d).replace("'", '"')),
)
_COMPLETIONS = st.one_of(
    st.text(max_size=80),
    _ANSWERS.map(ok),
    _ANSWERS.map(lambda a: conv(ok(a))),
    st.none(),
    st.integers(),
    st.lists(st.dictionaries(st.sampled_from(["role", "content"]), st.one_of(st.text(max_size=10), st.none()))),
)
_GT_SCORE = st.one_of(st.none(), st.floats(min_value=1, max_value=5), st.floats(), st.text(max_size=2))
_GT_DIMS = st.one_of(
    st.none(), st.dictionaries(st.sampled_from(["spatial", "temporal", "alignment"]), st.floats(1, 5))
)
_GT_CHOICE = st.one_of(st.none(), st.sampled_from(["A", "B", "tie", "yes", "no", "a", ""]), st.integers())


def _in_unit(values: list[float | None]) -> bool:
    return all(v is None or (math.isfinite(v) and 0.0 <= v <= 1.0) for v in values)


@FUZZ
@given(
    st.lists(st.tuples(_COMPLETIONS, _GT_SCORE, _GT_DIMS, _GT_CHOICE), max_size=6),
    st.sampled_from(SCORE_VARIANTS),
)
def test_fuzz_rewards_in_range(rows: list[tuple], variant: str) -> None:
    completions = [r[0] for r in rows]
    gt_score, gt_scores, gt_choice = [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows]
    assert set(format_reward(completions, **TRL_EXTRAS)) <= {0.0, 1.0}
    assert _in_unit(score_reward(completions, gt_score=gt_score, variant=variant, **TRL_EXTRAS))
    assert _in_unit(multi_dim_reward(completions, gt_scores=gt_scores, variant=variant, **TRL_EXTRAS))
    assert _in_unit(choice_reward(completions, gt_choice=gt_choice, **TRL_EXTRAS))
    assert set(choice_reward(completions, gt_choice=gt_choice)) <= {None, 0.0, 1.0}
    tasks = ["video_score", "multidim_score", "comparison", "vqa", "prompt"] * 2
    flags = is_correct(completions, tasks[: len(rows)], gt_score=gt_score, gt_scores=gt_scores, gt_choice=gt_choice)
    assert all(isinstance(f, bool) for f in flags)


@FUZZ
@given(
    st.lists(st.tuples(_COMPLETIONS, st.integers(0, 700), st.booleans()), max_size=6),
    st.floats(0.01, 1.0),
    st.booleans(),
    st.booleans(),
)
def test_fuzz_length_reward_values(rows: list[tuple], gamma: float, inclusive: bool, multiple: bool) -> None:
    completions, ids, correct = [r[0] for r in rows], [[0] * r[1] for r in rows], [r[2] for r in rows]
    for kwargs in ({"completion_ids": ids, "correct": correct}, {}):
        out = length_reward(completions, gamma=gamma, inclusive=inclusive, require_multiple_correct=multiple, **kwargs)
        assert len(out) == len(rows) and set(out) <= {0.0, gamma}


@FUZZ
@given(
    st.lists(st.one_of(st.booleans(), st.floats(), st.none()), max_size=10),
    st.lists(st.one_of(st.booleans(), st.floats(0, 1)), max_size=10),
    st.floats(0.01, 1.0),
    st.floats(0.0, 2.0),
    st.booleans(),
)
def test_fuzz_temporal_bonus_values(ordered: list, shuffled: list, alpha: float, mu: float, strict: bool) -> None:
    out = temporal_bonus(ordered, shuffled, alpha=alpha, mu=mu, strict=strict)
    assert len(out) == len(ordered) and set(out) <= {0.0, alpha}


@FUZZ
@given(st.floats(-10, 10), st.floats(1, 5))
def test_fuzz_l1_is_eq3_on_task_scale(pred: float, gt: float) -> None:
    r = score_similarity(pred, gt, 1.0, 5.0)
    expected = max(0.0, 1.0 - abs(pred - gt)) if 1.0 <= pred <= 5.0 else 0.0  # off the scale: unparsed
    assert r == pytest.approx(expected)
    assert r <= score_similarity(pred, gt, 1.0, 5.0, "l1_span") + 1e-12  # span 4 > 1: l1 is the stricter one
