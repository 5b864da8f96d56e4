"""The rewards' official variants against the official VQ-Insight code, input by input.

Every expected value below is what the official functions returned on that input, run unmodified in a scratch
folder (xuanyuzhang21/VQ-Insight: ``src/r1-v/src/open_r1/grpo_md_aigc.py`` ``format_reward`` and
``accuracy_reward`` with problem types "regression", "multi-dimension" and "multiple choice";
``trainer/grpo_trainer_score_aigc.py``, the temporal and length block of ``compute_loss``, fed the reward columns
[accuracy, format] in the code's default order). The one deliberate deviation (NaN) is in ``DEVIATIONS`` with both
values, as in docs/EVALUATION.md.
"""

from __future__ import annotations

import pytest

from vqinsight.grpo.reward_funcs import Correctness, build_correctness, build_reward_funcs, length_if_correct
from vqinsight.rewards import (
    OFFICIAL_CORRECT_REWARD,
    choice_reward,
    format_reward,
    multi_dim_reward,
    score_reward,
    temporal_bonus,
)

T = "<think>a</think>"
GT = {"spatial": 3.0, "temporal": 4.0, "consistency": 5.0}

# (completion, official format_reward)
FORMAT = [
    (T + "<answer>3</answer>", 1.0),
    (" " + T + "<answer>3</answer>", 0.0),  # surrounding whitespace
    (T + "<answer>3</answer>\n", 0.0),
    ("\n" + T + "<answer>3</answer>", 0.0),
    (T + "\n<answer>3</answer>", 1.0),
    (T + "<answer>3</answer><answer>4</answer>", 1.0),  # two answer blocks
    ("<think>a<think>b</think></think><answer>3</answer>", 1.0),  # nested tags
    (T + "<answer><answer>3</answer></answer>", 1.0),
    ("<THINK>a</THINK><answer>3</answer>", 0.0),  # case-sensitive
    (T + "text<answer>3</answer>", 0.0),
    (T + "<answer>3</answer>trailing", 0.0),
    ("<think>a\nb</think><answer>3</answer>", 1.0),
    ("<answer>3</answer>", 0.0),
    (T + "<answer>3</answer>" + T + "<answer>4</answer>", 1.0),
    ("", 0.0),
]
# (completion, ground truth, official accuracy_reward "regression")
SCORE = [
    (T + "<answer>6.0</answer>", 4.5, 0.6666666665185186),  # no clipping to the scale
    (T + "<answer>4.5</answer>", 4.5, 0.9999999997777778),  # (|p - g| + 1e-9) / (|g| + 1e-9)
    (T + "<answer>Score: 3.5</answer>", 3.5, 0.0),  # float() of the whole answer
    (T + "<answer>3.0</answer><answer>4.5</answer>", 4.5, 0.6666666665185186),  # the FIRST answer block
    ("<think>maybe <answer>1</answer></think><answer>4.5</answer>", 4.5, 0.2222222221728395),
    (T + "<answer> 4.0 </answer>", 4.5, 0.8888888886913581),
    (T + "<answer>4,5</answer>", 4.5, 0.0),  # commas removed: 45
    (T + "<answer>1e0</answer>", 2.0, 0.49999999975),
    (T + "<answer>-4.5</answer>", 4.5, 0.0),
    (T + "<answer>inf</answer>", 4.5, 0.0),
    (T + "<answer>3333333</answer>", 4.5, 0.0),
    (T + "<answer>3</answer>", 0.0, 0.0),  # gt 0: every answer earns 0
    (T + "<ANSWER>4.5</ANSWER>", 4.5, 0.0),  # case-sensitive tags
    (T + "4.5", 4.5, 0.0),
    (T + "<answer>3_5</answer>", 3.5, 0.0),  # float("3_5") is 35
]
# (completion, official accuracy_reward "multi-dimension" against GT)
MULTI_DIM = [
    (T + '<answer>"spatial": 3, "temporal": 4, "consistency": 5</answer>', 0.0),  # its own prompt's example form
    (T + '<answer>{"spatial": 3, "temporal": 4, "consistency": 5}</answer>', 0.9999999997388889),
    (T + '<answer>{ "spatial" : 2.5 ,"temporal":4.5, "consistency" : 4 }</answer>', 0.8361111108922685),
    (T + '<answer>{"temporal": 4, "spatial": 3, "consistency": 5}</answer>', 0.0),  # fixed key order
    (T + '<answer>{"spatial": 3, "temporal": 4, "alignment": 5}</answer>', 0.0),
    (T + '<answer>{"spatial": -3, "temporal": 4, "consistency": 5}</answer>', 0.0),
    (T + '<answer>{"spatial": 3.5.1, "temporal": 4, "consistency": 5}</answer>', 0.0),
    (T + '<answer>{"spatial": 6, "temporal": 4, "consistency": 5}</answer>', 0.6666666665166666),
    (
        T + '<answer>spatial: 3</answer><answer>{"spatial": 3, "temporal": 4, "consistency": 4}</answer>',
        0.9333333330855554,
    ),
    (T + '<answer>{"Spatial": 3, "Temporal": 4, "Consistency": 5}</answer>', 0.0),
]
# (completion, ground truth, official accuracy_reward "multiple choice")
CHOICE = [
    (T + "<answer>A</answer>", "A", 1.0),
    (T + "<answer>a</answer>", "A", 0.0),  # case-sensitive
    (T + "<answer>Video A</answer>", "A", 0.0),  # exact string
    (T + "<answer> B </answer>", "B", 1.0),
    (T + "<answer>(A)</answer>", "A", 0.0),
    (T + "<answer>B</answer><answer>A</answer>", "A", 0.0),  # the first answer block
    (T + "<answer>yes</answer>", "yes", 1.0),
    (T + "<answer>Yes</answer>", "yes", 0.0),
    (T + "<answer>no.</answer>", "no", 0.0),
    (T + "A", "A", 0.0),
]
# (accuracy rewards of the G ordered rollouts, of the shuffled rollouts, token lengths, official total reward per
# rollout = accuracy + format (1.0 each) + the temporal bonus (+0.3) + the length bonus (+0.2))
TEMPORAL_LENGTH = [
    ([0.15] * 4, [0.9, 0.9], [400] * 4, [1.35] * 4),  # gate on the MEAN reward: 0.15 < 0.8 x 0.9, no bonus
    ([0.15] * 4, [0.1, 0.1], [400] * 4, [1.65] * 4),  # 0.15 >= 0.08: every rollout with reward > 0.1 gets 0.3
    ([0.9, 0.05, 0.9, 0.05], [0.9, 0.9], [400] * 4, [2.1, 1.05, 2.1, 1.05]),
    ([0.4] * 4, [0.5, 0.5], [400] * 4, [1.9] * 4),  # equality: >= fires
    ([0.9, 0.0, 0.0, 0.0], [0.0, 0.0], [400] * 4, [2.2, 1.0, 1.0, 1.0]),  # one correct: no length bonus
    ([0.9] * 4, [0.9, 0.9], [319, 320, 512, 513], [2.2, 2.4, 2.4, 2.2]),  # 0.2 over an inclusive [320, 512]
    ([0.1, 0.1, 0.9, 0.9], [0.0, 0.0], [400] * 4, [1.1, 1.1, 2.4, 2.4]),  # correct is > 0.1
    (
        [0.6, 0.7, 0.2, 0.0, 0.95, 0.3, 0.05, 0.8],
        [0.5, 0.6, 0.9, 0.1],
        [300, 330, 400, 500, 512, 600, 450, 320],
        [1.9, 2.2, 1.7, 1.0, 2.45, 1.6, 1.05, 2.3],
    ),
]
# Deliberate deviations: (reward, completion, ground truth, official value, ours)
DEVIATIONS = [("score", T + "<answer>nan</answer>", 4.5, 1.0, 0.0)]


@pytest.mark.parametrize(("completion", "official"), FORMAT)
def test_format_official(completion: str, official: float) -> None:
    assert format_reward([completion], variant="official") == [official]
    conversational = [[{"role": "assistant", "content": completion}]]
    assert format_reward(conversational, variant="official") == [official]


@pytest.mark.parametrize(("completion", "gt", "official"), SCORE)
def test_score_relative_is_official(completion: str, gt: float, official: float) -> None:
    assert score_reward([completion], gt_score=[gt], variant="relative") == [pytest.approx(official, abs=1e-12)]


@pytest.mark.parametrize(("completion", "official"), MULTI_DIM)
def test_multi_dim_relative_is_official(completion: str, official: float) -> None:
    out = multi_dim_reward([completion], gt_scores=[GT], variant="relative")
    assert out == [pytest.approx(official, abs=1e-10)]


@pytest.mark.parametrize(("completion", "gt", "official"), CHOICE)
def test_choice_official(completion: str, gt: str, official: float) -> None:
    assert choice_reward([completion], gt_choice=[gt], variant="official") == [official]


def test_choice_official_with_the_prompts_answer_text() -> None:
    # our prompts ask for "Video A": the official exact match then needs the ground truth's text, not its letter
    comps = [T + "<answer>Video A</answer>", T + "<answer>A</answer>", T + "<answer>video a</answer>"]
    out = choice_reward(comps, gt_choice=["A"] * 3, variant="official", gt_text={"A": "Video A", "B": "Video B"})
    assert out == [1.0, 0.0, 0.0]


@pytest.mark.parametrize(("acc", "shuffled", "lengths", "official"), TEMPORAL_LENGTH)
def test_temporal_and_length_official(acc: list, shuffled: list, lengths: list, official: list) -> None:
    bonus = temporal_bonus(acc, shuffled, alpha=0.3, mu=0.8, strict=False, threshold=OFFICIAL_CORRECT_REWARD)
    # the case's accuracy rewards, through the official correctness rule (reward > 0.1)
    given = Correctness("reward", accuracy=lambda completions, **columns: list(acc))  # type: ignore[arg-type]
    length = length_if_correct(
        ["x"] * len(acc),
        completion_ids=[[0] * n for n in lengths],
        gamma=0.2,
        l_min=320,
        l_max=512,
        inclusive=True,
        correctness=given,
        require_multiple_correct=True,
        group_size=len(acc),
    )
    total = [1.0 + a + b + c for a, b, c in zip(acc, bonus, length, strict=True)]
    assert total == pytest.approx(official, abs=1e-6)


def _score_answer(reward: float, gt: float = 1.0) -> str:
    """A completion whose official relative score reward against ``gt`` is ``reward`` (up to the 1e-9 terms)."""
    return f"{T}<answer>{gt + (1.0 - reward) * gt!r}</answer>"


OFFICIAL_RECIPE = {
    "format": {"weight": 1.0, "variant": "official"},
    "score": 1.0,
    "score_variant": "relative",
    "length": {
        "weight": 1.0,
        "gamma": 0.2,
        "l_min": 320,
        "l_max": 512,
        "inclusive": True,
        "correct": "reward",
        "require_multiple_correct": True,
    },
    "group_size": 4,
}


@pytest.mark.parametrize(
    ("acc", "shuffled", "official"), [([0.15] * 4, [0.9, 0.9], 1.35), ([0.15] * 4, [0.1] * 2, 1.65)]
)
def test_official_recipe_end_to_end(acc: list, shuffled: list, official: float) -> None:
    """The official variants as a recipe selects them: reward functions, weights and the temporal correctness."""
    funcs, weights = build_reward_funcs(OFFICIAL_RECIPE)
    correctness = build_correctness(OFFICIAL_RECIPE, "reward")
    comps = [_score_answer(a) for a in acc]
    cols = {"task": ["video_score"] * 4, "gt_score": [1.0] * 4, "completion_ids": [[0] * 400] * 4}
    parts = [f(comps, **cols) for f in funcs]
    shuffled_values = correctness([_score_answer(a) for a in shuffled], task=["video_score"] * 2, gt_score=[1.0] * 2)
    ordered_values = correctness(comps, **cols)
    bonus = temporal_bonus(ordered_values, shuffled_values, 0.3, 0.8, strict=False, threshold=correctness.threshold)
    total = [sum(w * p[i] for w, p in zip(weights, parts, strict=True)) + bonus[i] for i in range(4)]
    assert total == pytest.approx([official] * 4, abs=1e-6)


def test_length_correct_rules() -> None:
    # a correct (3.0) and a wrong (1.0) score answer of 400 tokens: Eq. 5 as printed rewards both
    comps = [f"{T}<answer>3.0</answer>", f"{T}<answer>1.0</answer>"]
    cols = {"task": ["video_score"] * 2, "gt_score": [3.0] * 2, "completion_ids": [[0] * 400] * 2}
    for rule, expected in (("any", [0.1, 0.1]), ("tolerance", [0.1, 0.0]), ("reward", [0.1, 0.1])):  # 1/3 > 0.1
        spec = {"score_variant": "relative", "length": {"correct": rule}, "group_size": 2}
        (length,) = build_reward_funcs(spec)[0]
        assert length(comps, **cols) == expected, rule
    with pytest.raises(ValueError, match="correctness rule"):
        build_reward_funcs({"length": {"correct": "maybe"}})
    with pytest.raises(ValueError, match="temporal.correct"):
        build_correctness({}, "any")


def test_require_multiple_correct_counts_per_group() -> None:
    # two groups of 2: the first holds two correct completions, the second one; only the first earns the bonus
    spec = {**OFFICIAL_RECIPE, "group_size": 2}
    (length,) = [f for f in build_reward_funcs(spec)[0] if f.__name__ == "length"]
    comps = [_score_answer(a) for a in (0.9, 0.9, 0.9, 0.0)]
    out = length(comps, task=["video_score"] * 4, gt_score=[1.0] * 4, completion_ids=[[0] * 400] * 4)
    assert out == [0.2, 0.2, 0.0, 0.0]
    with pytest.raises(ValueError, match="whole groups"):
        length(comps[:3], task=["video_score"] * 3, gt_score=[1.0] * 3, completion_ids=[[0] * 400] * 3)


@pytest.mark.parametrize(("reward", "completion", "gt", "official", "ours"), DEVIATIONS)
def test_deliberate_deviations(reward: str, completion: str, gt: float, official: float, ours: float) -> None:
    assert official != ours
    assert score_reward([completion], gt_score=[gt], variant="relative") == [ours]


def test_deviation_each_row_is_scored_by_its_own_task() -> None:
    # officially [0.889, 0.0]: the whole batch is scored as the first row's task (regression)
    accuracy = build_correctness(OFFICIAL_RECIPE, "reward").accuracy
    comps = [f"{T}<answer>4.0</answer>", f"{T}<answer>A</answer>"]
    out = accuracy(comps, task=["video_score", "comparison"], gt_score=[4.5, None], gt_choice=[None, "A"])
    assert out == [pytest.approx(0.8888888886913581, abs=1e-12), 1.0]


def test_deviation_gate_in_float64() -> None:
    # officially +0.3 each: 0.3 >= 0.8 * 0.375 holds in float32, not in float64 (0.30000000000000004)
    assert (
        temporal_bonus([0.3] * 4, [0.375] * 2, 0.3, 0.8, strict=False, threshold=OFFICIAL_CORRECT_REWARD) == [0.0] * 4
    )
