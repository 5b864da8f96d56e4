"""Tests of ``VideoGRPOTrainer`` (TRL 1.16 private hooks) and of the GRPO reward-function recipe.

Each training test runs one or two real GRPO steps of a tiny random Qwen2.5-VL on CPU. The trainer relies on private
TRL hooks, so the vision-tower tests are the regression guard against TRL silently going video-blind again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image
from transformers import AutoProcessor
from trl import GRPOConfig
from trl.trainer.utils import get_callable_name

from vqinsight.grpo.batch import (
    assign_media_keys,
    count_media,
    fold_column_images,
    shuffle_video_frames,
    split_media_per_row,
)
from vqinsight.grpo.reward_funcs import NamedReward, build_correctness, build_reward_funcs, make_length_reward
from vqinsight.grpo.trainer import VideoGRPOTrainer
from vqinsight.models.tiny import build_tiny
from vqinsight.parsing import completion_text

logger = logging.getLogger(__name__)

FRAMES, HEIGHT, WIDTH = 4, 56, 84
DIMS = {"spatial": 3.0, "temporal": 2.0, "alignment": 4.0}
# (task, number of videos, number of images, gt_score, gt_scores, gt_choice)
ROWS: list[tuple[str, int, int, float | None, dict | None, str | None]] = [
    ("video_score", 1, 0, 3.0, None, None),
    ("comparison", 2, 0, None, None, "A"),
    ("image_score", 0, 1, 4.0, None, None),
    ("vqa", 1, 0, None, None, "yes"),
    ("multidim_score", 1, 0, None, DIMS, None),
    ("comparison", 2, 0, None, None, "B"),
    ("vqa", 0, 0, None, None, "no"),  # text-only row
    ("video_score", 1, 0, 2.0, None, None),
]


# ---------------------------------------------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny tensors: one thread is faster, and two threads on a shared 2-core box slow down ~100x (spin-waits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Qwen2.5-VL (model + processor); loading from a directory makes beta > 0 possible."""
    return build_tiny(tmp_path_factory.mktemp("tiny") / "model")


def video(seed: int, offset: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8 noise video whose frame t also carries its index in pixel (0, 0)."""
    frames = np.random.default_rng(seed).integers(0, 255, (FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
    frames[:, 0, 0, 0] = np.arange(FRAMES) + offset
    return frames


def prompt_for(n_videos: int, n_images: int, seed: int) -> list[dict[str, Any]]:
    """A one-turn conversational prompt with the given media."""
    parts: list[dict[str, Any]] = [{"type": "video", "video": video(seed, 10 * k)} for k in range(n_videos)]
    rng = np.random.default_rng(100 + seed)
    parts += [
        {"type": "image", "image": Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8))}
        for _ in range(n_images)
    ]
    parts.append({"type": "text", "text": "Rate it."})
    return [{"role": "user", "content": parts}]


def _insert_media(batch: dict[str, list]) -> dict[str, list]:
    """``Dataset.with_transform`` hook: build the prompts (with decoded media) on access."""
    prompts = [
        prompt_for(v, i, s) for v, i, s in zip(batch["n_videos"], batch["n_images"], batch["seed"], strict=True)
    ]
    return {**batch, "prompt": prompts}


def make_dataset(indices: list[int]) -> Dataset:
    """Rows of ``ROWS`` with the columns the rewards read (None where not applicable)."""
    rows = [ROWS[i] for i in indices]
    data = {
        "task": [r[0] for r in rows],
        "n_videos": [r[1] for r in rows],
        "n_images": [r[2] for r in rows],
        "gt_score": [r[3] for r in rows],
        "gt_scores": [r[4] for r in rows],
        "gt_choice": [r[5] for r in rows],
        "seed": indices,
    }
    return Dataset.from_dict(data).with_transform(_insert_media)


def text_length_reward(completions: list, **kwargs: Any) -> list[float]:
    """A reward that differs between the rollouts of a group, so advantages (and gradients) are non-zero."""
    return [float(len(completion_text(c))) for c in completions]


def make_trainer(
    tiny_dir: Path, tmp_path: Path, indices: list[int], reward_funcs: list | None = None, **kw: Any
) -> VideoGRPOTrainer:
    """A VideoGRPOTrainer on rows ``indices``; GRPOConfig overrides and trainer kwargs both come in ``kw``."""
    trainer_keys = (
        "temporal",
        "temporal_rollouts",
        "alpha",
        "mu",
        "strict",
        "score_tolerance",
        "outside_answer_weight",
        "rollout_engine",
        "merge_shuffled_rollouts",
        "share_vision",
        "checkpoint_layers",
        "correctness",
    )
    trainer_kw = {k: kw.pop(k) for k in trainer_keys if k in kw}
    cfg = {
        "output_dir": str(tmp_path / "out"),
        "use_cpu": True,
        "report_to": "none",
        "save_strategy": "no",
        "per_device_train_batch_size": 4,
        "num_generations": 4,
        "max_completion_length": 8,
        "max_steps": 1,
        "beta": 0.001,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "seed": 0,
        **kw,
    }
    return VideoGRPOTrainer(
        model=str(tiny_dir),
        reward_funcs=reward_funcs or [text_length_reward],
        args=GRPOConfig(**cfg),
        train_dataset=make_dataset(indices),
        processing_class=AutoProcessor.from_pretrained(tiny_dir),
        **trainer_kw,
    )


def train_and_count_changed(trainer: VideoGRPOTrainer) -> tuple[int, int, dict[str, float]]:
    """Train; return (vision-tower params changed, vision-tower params, logs of the first step)."""
    before = {n: p.detach().clone() for n, p in trainer.model.model.visual.named_parameters()}
    t0 = time.perf_counter()
    trainer.train()
    logger.info("%d step(s) in %.2f s", trainer.state.global_step, time.perf_counter() - t0)
    after = dict(trainer.model.model.visual.named_parameters())
    changed = sum(not torch.equal(before[n], after[n].detach()) for n in before)
    return changed, len(before), trainer.state.log_history[0]


# ---------------------------------------------------------------------------------------------------------------
# (a) the vision tower trains on video
# ---------------------------------------------------------------------------------------------------------------
def test_vision_tower_trains_on_video(tiny_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(tiny_dir, tmp_path, [0, 7])  # single-video score rows, beta > 0 (ref forward too)
    changed, total, logs = train_and_count_changed(trainer)
    assert changed >= total - 1, f"only {changed}/{total} vision params changed: forwards are video-blind"
    assert logs["kl"] == pytest.approx(0.0, abs=1e-6)  # ref and policy forwards saw the same (video) inputs


def test_vision_tower_trains_on_comparison_next_to_score_row(tiny_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(tiny_dir, tmp_path, [1, 0], per_device_train_batch_size=8, beta=0.0)
    changed, total, _ = train_and_count_changed(trainer)
    assert changed >= total - 1


@pytest.mark.slow
def test_fully_mixed_batch_with_temporal_reward(tiny_dir: Path, tmp_path: Path) -> None:
    """Image, 1-video, 2-video and text-only rows in one generation batch, split into 2 micro-batches, 2 iterations."""
    trainer = make_trainer(
        tiny_dir,
        tmp_path,
        list(range(len(ROWS))),
        per_device_train_batch_size=8,
        num_generations=2,
        gradient_accumulation_steps=2,
        num_iterations=2,
        temporal=True,
    )
    calls = {"generate": 0}
    original = trainer._generate

    def counting_generate(prompts: list) -> Any:
        calls["generate"] += 1
        return original(prompts)

    trainer._generate = counting_generate  # type: ignore[method-assign]
    changed, total, logs = train_and_count_changed(trainer)
    assert changed >= total - 1
    assert calls["generate"] == 1  # shuffled rollouts bypass _generate, so TRL's completion metrics stay clean
    assert trainer.reward_func_names == ["text_length_reward", "temporal"]
    for key in ("rewards/temporal/mean", "temporal/acc_ordered", "temporal/acc_shuffled", "temporal/bonus_rate"):
        assert key in logs
    for task in ("video_score", "comparison", "image_score", "vqa", "multidim_score"):
        assert f"task/{task}/reward" in logs
        assert f"task/{task}/rewards/text_length_reward" in logs
    assert "task/image_score/rewards/temporal" not in logs  # no video: the temporal reward is None there
    assert "task/video_score/rewards/temporal" in logs


# ---------------------------------------------------------------------------------------------------------------
# per-row media: batched forward == per-row forwards
# ---------------------------------------------------------------------------------------------------------------
def test_split_media_matches_per_row_forward(tiny_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(tiny_dir, tmp_path, [0])
    proc, pad = trainer.processing_class, trainer._tokenizer.pad_token_id
    prompts = [prompt_for(0, 1, 2), prompt_for(2, 0, 1), prompt_for(0, 0, 6), prompt_for(1, 1, 3)]
    fields = proc.apply_chat_template(prompts, add_generation_prompt=True, tokenize=True, return_dict=True)
    media = split_media_per_row(fields, [count_media(p) for p in prompts])
    assert [sorted(m) for m in media][2] == []
    assert media[1]["video_grid_thw"].shape[0] == 2 and "pixel_values" not in media[1]
    completion = trainer._tokenizer.encode("<answer>3</answer>")
    rows = [torch.tensor(ids + completion) for ids in fields["input_ids"]]
    width = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([torch.full((width - len(r),), pad), r]) for r in rows])
    mask = (torch.arange(width) >= (width - torch.tensor([len(r) for r in rows])).unsqueeze(1)).long()
    trainer.model.eval()
    with torch.no_grad():
        trainer._media_ctx = media
        batched, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, len(completion))
        singles = []
        for i, row in enumerate(rows):
            trainer._media_ctx = media[i : i + 1]
            one = torch.ones(1, len(row), dtype=torch.long)
            singles.append(
                trainer._get_per_token_logps_and_entropies(trainer.model, row[None], one, len(completion))[0]
            )
    trainer._media_ctx = None
    torch.testing.assert_close(batched, torch.cat(singles), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# (b) the temporal bonus
# ---------------------------------------------------------------------------------------------------------------
CORRECT, WRONG = "<think>t</think><answer>3</answer>", "<think>t</think><answer>1</answer>"


def _rows(index: int, copies: int) -> list[dict[str, Any]]:
    """``copies`` repeated input dicts of ROWS[index], as TRL's RepeatSampler hands them over."""
    row = make_dataset([index])[0]
    return [dict(row) for _ in range(copies)]


def _completions(texts: list[str]) -> list[list[dict[str, str]]]:
    return [[{"role": "assistant", "content": t}] for t in texts]


@pytest.mark.parametrize(
    ("shuffled", "mu", "strict", "expected"),
    [
        (WRONG, 0.8, True, [0.3, 0.0, 0.3, 0.0]),  # p = 0.5 > 0.8 * 0
        (CORRECT, 0.8, True, [0.0] * 4),  # p = 0.5 < 0.8 * 1
        (CORRECT, 0.5, True, [0.0] * 4),  # p = 0.5 = 0.5 * 1: the paper's ">" closes the gate
        (CORRECT, 0.5, False, [0.3, 0.0, 0.3, 0.0]),  # ... the official ">=" opens it
    ],
)
def test_temporal_group_logic(
    tiny_dir: Path, tmp_path: Path, shuffled: str, mu: float, strict: bool, expected: list[float]
) -> None:
    trainer = make_trainer(tiny_dir, tmp_path, [0], temporal=True, mu=mu, strict=strict)
    trainer.model.train()
    inputs = _rows(0, 4) + _rows(6, 4)  # a video_score group (gt 3.0), then a text-only group
    seen: list[list] = []

    def fake_shuffled(prompts: list) -> list[str]:
        seen.append(prompts)
        return [shuffled] * len(prompts)

    trainer._generate_shuffled = fake_shuffled  # type: ignore[method-assign]
    trainer._temporal_state = trainer._temporal_rollouts(inputs)
    assert len(seen) == 1 and len(seen[0]) == 2  # G // 2 shuffled rollouts for the video group, none for text
    assert trainer._temporal_state.shuffled_total == [1, 1, 0, 0, 0, 0, 0, 0]
    ordered = _completions([CORRECT, WRONG, CORRECT, WRONG] + [WRONG] * 4)
    columns = {k: [x[k] for x in inputs] for k in ("task", "gt_score", "gt_scores", "gt_choice")}
    rewards = trainer._temporal_reward([x["prompt"] for x in inputs], ordered, **columns)
    assert rewards[:4] == pytest.approx(expected)
    assert rewards[4:] == [None] * 4  # rows without video get no bonus
    metrics = trainer._metrics["train"]
    assert metrics["temporal/acc_ordered"] == [0.5]
    assert metrics["temporal/acc_shuffled"] == [0.0 if shuffled == WRONG else 1.0]
    assert metrics["temporal/bonus_rate"] == [1.0 if any(expected) else 0.0]


@pytest.mark.parametrize(
    ("shuffled", "expected"),
    [
        # ordered rewards (relative error, gt 3): 1, 1/3, 1, 1/3 (mean 2/3); shuffled "2": 2/3 -> 2/3 >= 0.8 x 2/3,
        # every ordered rollout with reward > 0.1 gets the bonus (the tolerance rule would give [0.3, 0, 0.3, 0])
        ("<think>t</think><answer>2</answer>", [0.3] * 4),
        (CORRECT, [0.0] * 4),  # shuffled reward 1: 2/3 < 0.8
    ],
)
def test_temporal_official_gate_on_mean_rewards(
    tiny_dir: Path, tmp_path: Path, shuffled: str, expected: list[float]
) -> None:
    """The recipe's `temporal.correct: reward` (official code): the gate compares mean accuracy rewards."""
    spec = {"score": 1.0, "score_variant": "relative", "score_min": 1.0, "score_max": 5.0}
    correctness = build_correctness(spec, "reward")
    trainer = make_trainer(tiny_dir, tmp_path, [0], temporal=True, strict=False, correctness=correctness)
    trainer.model.train()
    inputs = _rows(0, 4)
    trainer._generate_shuffled = lambda prompts: [shuffled] * len(prompts)  # type: ignore[method-assign]
    trainer._temporal_state = trainer._temporal_rollouts(inputs)
    ordered = _completions([CORRECT, WRONG, CORRECT, WRONG])
    columns = {k: [x[k] for x in inputs] for k in ("task", "gt_score", "gt_scores", "gt_choice")}
    rewards = trainer._temporal_reward([x["prompt"] for x in inputs], ordered, **columns)
    assert rewards == pytest.approx(expected)
    assert trainer._metrics["train"]["temporal/acc_ordered"] == [pytest.approx(2 / 3)]


@pytest.mark.parametrize(("shuffled", "bonus_mean"), [(WRONG, 0.15), (CORRECT, 0.0)])
def test_temporal_bonus_in_a_training_step(tiny_dir: Path, tmp_path: Path, shuffled: str, bonus_mean: float) -> None:
    """End to end with scripted rollouts: 2 of 4 ordered rollouts correct; shuffled ones all wrong or all right.

    Both scripted completions have the same length, so the temporal bonus is the only source of advantage: the
    vision tower moves exactly when the bonus fires.
    """
    trainer = make_trainer(tiny_dir, tmp_path, [0], temporal=True, beta=0.0)
    tok = trainer._tokenizer
    scripted = [tok.encode(t) + [tok.eos_token_id] for t in (CORRECT, WRONG)]

    def fake_ordered(prompt_ids: list, images: Any, fields: Any, num_generations: int, **kw: Any) -> tuple:
        return [scripted[i % 2] for i in range(len(prompt_ids))], None

    trainer._generate_single_turn = fake_ordered  # type: ignore[method-assign]
    trainer._generate_shuffled = lambda prompts: [shuffled] * len(prompts)  # type: ignore[method-assign]
    changed, total, logs = train_and_count_changed(trainer)
    assert changed >= total - 1 if bonus_mean else changed == 0
    assert logs["rewards/temporal/mean"] == pytest.approx(bonus_mean)
    assert logs["temporal/acc_ordered"] == pytest.approx(0.5)
    assert logs["temporal/acc_shuffled"] == pytest.approx(0.0 if shuffled == WRONG else 1.0)
    assert logs["task/video_score/rewards/temporal"] == pytest.approx(bonus_mean)


# ---------------------------------------------------------------------------------------------------------------
# (c) the shuffled copy
# ---------------------------------------------------------------------------------------------------------------
def test_shuffled_copy_permutes_each_video_and_leaves_original() -> None:
    prompt = prompt_for(2, 1, 5)
    originals = [p["video"].copy() for p in prompt[0]["content"] if p["type"] == "video"]
    shuffled, perms = shuffle_video_frames(prompt, np.random.default_rng(0))
    videos = [p["video"] for p in shuffled[0]["content"] if p["type"] == "video"]
    assert len(perms) == 2
    for original, new, perm in zip(originals, videos, perms, strict=True):
        assert not np.array_equal(perm, np.arange(FRAMES))  # really shuffled
        np.testing.assert_array_equal(new, original[perm])
    # frame indices: video 1 holds 0..3, video 2 holds 10..13; each is permuted within itself
    assert sorted(videos[0][:, 0, 0, 0]) == [0, 1, 2, 3] and sorted(videos[1][:, 0, 0, 0]) == [10, 11, 12, 13]
    for original, part in zip(originals, [p for p in prompt[0]["content"] if p["type"] == "video"], strict=True):
        np.testing.assert_array_equal(part["video"], original)  # the input prompt is untouched
    assert [p["type"] for p in shuffled[0]["content"]] == [p["type"] for p in prompt[0]["content"]]
    # independent permutations across many draws: the two videos are not always shuffled alike
    rng = np.random.default_rng(1)
    assert any(not np.array_equal(*shuffle_video_frames(prompt, rng)[1]) for _ in range(20))


def test_temporal_rollouts_share_a_permutation_per_group_and_keep_inputs(tiny_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(tiny_dir, tmp_path, [1], temporal=True, temporal_rollouts=3)
    trainer.model.train()
    inputs = _rows(1, 4)  # one 2-video comparison group
    before = [[p["video"].copy() for p in x["prompt"][0]["content"] if p["type"] == "video"] for x in inputs]
    seen: list = []
    trainer._generate_shuffled = lambda prompts: seen.extend(prompts) or [WRONG] * len(prompts)  # type: ignore
    state = trainer._temporal_rollouts(inputs)
    assert len(seen) == 3 and sum(state.shuffled_total) == 3
    first = [p["video"] for p in seen[0][0]["content"] if p["type"] == "video"]
    assert not np.array_equal(first[0], before[0][0]) and not np.array_equal(first[1], before[0][1])
    for prompt in seen[1:]:  # same permutations for every shuffled rollout of the group (official code)
        for a, b in zip(first, [p["video"] for p in prompt[0]["content"] if p["type"] == "video"], strict=True):
            np.testing.assert_array_equal(a, b)
    for x, videos in zip(inputs, before, strict=True):
        for part, original in zip([p for p in x["prompt"][0]["content"] if p["type"] == "video"], videos, strict=True):
            np.testing.assert_array_equal(part["video"], original)


# ---------------------------------------------------------------------------------------------------------------
# (d) vision placeholder tokens are never sampled
# ---------------------------------------------------------------------------------------------------------------
def test_vision_tokens_suppressed_and_user_suppression_kept(tiny_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(tiny_dir, tmp_path, [0], generation_kwargs={"suppress_tokens": [7]})
    cfg = trainer.model.config
    vision = {cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id}
    assert len(vision) == 4
    assert vision | {7} <= set(trainer.generation_config.suppress_tokens)
    assert trainer.generation_kwargs["suppress_tokens"] == trainer.generation_config.suppress_tokens


# ---------------------------------------------------------------------------------------------------------------
# (e) reward recipe and length reward
# ---------------------------------------------------------------------------------------------------------------
RECIPE = {
    "format": 1.0,
    "score": 1.0,
    "multi_dim": 0.5,
    "choice": 2.0,
    "length": {"weight": 1.0, "gamma": 0.1, "l_min": 3, "l_max": 6},
    "score_variant": "l1",
    "score_min": 1,
    "score_max": 5,
}


def test_build_reward_funcs_names_and_weights() -> None:
    funcs, weights = build_reward_funcs(RECIPE)
    assert [get_callable_name(f) for f in funcs] == ["format", "score", "multi_dim", "choice", "length"]
    assert weights == [1.0, 1.0, 0.5, 2.0, 1.0]
    assert all(isinstance(f, NamedReward) for f in funcs)
    score = funcs[1]([CORRECT, "<answer>4.5</answer>"], gt_score=[3.0, 5.0], prompts=["p", "p"])
    assert score == pytest.approx([1.0, 0.5])
    assert build_reward_funcs({"choice": 1.0, "score": None})[1] == [1.0]
    with pytest.raises(ValueError, match="unknown"):
        build_reward_funcs({"choise": 1.0})
    with pytest.raises(ValueError, match="unknown option"):
        build_reward_funcs({"length": {"gamma": 0.1, "lmin": 3}})


def test_length_reward_only_for_correct_in_range_completions() -> None:
    reward = make_length_reward(gamma=0.1, l_min=3, l_max=6)
    assert get_callable_name(reward) == "length"
    completions = _completions([CORRECT, CORRECT, CORRECT, WRONG, "<answer>A</answer>", "<answer>B</answer>"])
    ids = [[0] * 4, [0] * 6, [0] * 2, [0] * 4, [0] * 5, [0] * 5]
    columns = {
        "task": ["video_score"] * 4 + ["comparison"] * 2,
        "gt_score": [3.0] * 4 + [None] * 2,
        "gt_scores": [None] * 6,
        "gt_choice": [None] * 4 + ["A", "A"],
    }
    out = reward(completions, completion_ids=ids, prompts=["p"] * 6, **columns)
    # in range + correct; l_max excluded; too short; wrong score; correct choice; wrong choice
    assert out == pytest.approx([0.1, 0.0, 0.0, 0.0, 0.1, 0.0])
    inclusive = make_length_reward(gamma=0.1, l_min=3, l_max=6, inclusive=True)
    assert inclusive(completions, completion_ids=ids, **columns)[1] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        make_length_reward(gamma=0.1, l_min=6, l_max=3)


# ---------------------------------------------------------------------------------------------------------------
# issue 7: the static rollout engine; answer-token weighting; both orders
# ---------------------------------------------------------------------------------------------------------------
def test_static_rollout_engine_trains_a_mixed_batch(tiny_dir: Path, tmp_path: Path) -> None:
    """Ordered and shuffled rollouts through fastdecode.StaticDecoder, the vision tower still trains, and the
    decoder really served the rollouts (transformers generate() is never called)."""
    trainer = make_trainer(
        tiny_dir,
        tmp_path,
        list(range(len(ROWS))),
        per_device_train_batch_size=8,
        num_generations=2,
        temporal=True,
        rollout_engine="static",
    )
    model = trainer.accelerator.unwrap_model(trainer.model)
    calls = {"hf": 0}
    original = type(model).generate

    def counting(self, *args: Any, **kwargs: Any) -> Any:
        calls["hf"] += 1
        return original(self, *args, **kwargs)

    type(model).generate = counting  # type: ignore[method-assign]
    try:
        changed, total, logs = train_and_count_changed(trainer)
    finally:
        type(model).generate = original  # type: ignore[method-assign]
    assert calls["hf"] == 0 and trainer._decoder is not None
    assert changed >= total - 1
    assert "temporal/acc_shuffled" in logs and logs["completions/mean_length"] > 0
    assert "generate" not in vars(model)  # the instance patch is removed after each call


def test_static_rollout_engine_refuses_unsupported_sampling(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="temperature and top_p sampling only"):
        make_trainer(tiny_dir, tmp_path, [0], rollout_engine="static", top_k=5)
    with pytest.raises(ValueError, match="rollout_engine must be"):
        make_trainer(tiny_dir, tmp_path, [0], rollout_engine="vllm")


def test_answer_token_weights_cover_the_answer_content_only() -> None:
    from vqinsight.grpo.batch import answer_token_weights
    from vqinsight.models.tiny import build_tokenizer

    tok = build_tokenizer()
    texts = ["<think>ok</think><answer>Video B</answer>", "<think>no answer block", "<answer>A</answer>"]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, ids))
    pad = tok.pad_token_id
    completion_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    w = answer_token_weights(tok, completion_ids, mask, 0.25)
    for row, text in enumerate(texts):
        pieces = [tok.decode([t]) for t in ids[row]]
        inside = "".join(p for p, x in zip(pieces, w[row, : len(ids[row])].tolist(), strict=True) if x == 1.0)
        if "</answer>" in text:
            assert inside == text.split("<answer>")[1].split("</answer>")[0]
            assert set(w[row, : len(ids[row])].tolist()) == {0.25, 1.0}
        else:
            assert w[row, : len(ids[row])].tolist() == [1.0] * len(ids[row])  # malformed: plain GRPO
        assert w[row, len(ids[row]) :].tolist() == [0.0] * (width - len(ids[row]))


@pytest.mark.slow
def test_outside_answer_weight_reaches_trl_loss_as_per_token_advantages(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below 1, TRL's loss gets (B, T) advantages = sequence advantage x token weight; at 1 it gets TRL's own (B,)."""
    import vqinsight.grpo.trainer as T

    seen: dict[float, list] = {}
    for w in (1.0, 0.5):
        trainer = make_trainer(tiny_dir, tmp_path / str(w), [1, 0], per_device_train_batch_size=8, beta=0.0,
                               outside_answer_weight=w)  # fmt: skip
        seen[w] = []
        original = trainer._compute_loss

        def capture(model: Any, inputs: dict, original=original, w=w) -> Any:
            seen[w].append((inputs["advantages"].clone(), inputs["completion_mask"].clone()))
            return original(model, inputs)

        monkeypatch.setattr(trainer, "_compute_loss", capture)
        monkeypatch.setattr(T, "answer_token_weights", lambda proc, ids, mask, outside: mask.float() * outside)
        trainer.train()
    (adv1, _), (adv2, mask2) = seen[1.0][0], seen[0.5][0]
    assert adv1.dim() == 1 and adv2.dim() == 2
    assert adv1.abs().sum() > 0  # same seed, same rollouts: the weighted run's advantages are 0.5 x TRL's
    assert torch.allclose(adv2, 0.5 * adv1.unsqueeze(1) * mask2.float())
    with pytest.raises(ValueError, match="outside_answer_weight"):
        make_trainer(tiny_dir, tmp_path, [0], outside_answer_weight=1.5)


def test_with_both_orders_balances_labels() -> None:
    from vqinsight.grpo.train import with_both_orders

    rows = [
        {"sample_id": "p0", "task": "comparison", "media": ["a", "b"], "gt_choice": "A"},
        {"sample_id": "s0", "task": "video_score", "media": ["c"], "gt_score": 3.0},
    ]
    out = with_both_orders(rows)
    assert [r["sample_id"] for r in out] == ["p0", "p0|BA", "s0"]
    assert out[1]["media"] == ["b", "a"] and out[1]["gt_choice"] == "B"
    assert rows[0]["media"] == ["a", "b"]  # the input is left as it was


def test_order_units_pair_each_swapped_copy_with_its_original() -> None:
    from vqinsight.grpo.sampler import order_units

    ids = ["p0", "p0|BA", "s0", "p1", "p1|BA", "x|BA"]  # "x|BA" has no original before it: a unit of its own
    assert order_units(ids) == [[0, 1], [2], [3, 4], [5]]


@pytest.mark.parametrize("batch_size", [2, 4, 6])
def test_unit_sampler_keeps_both_orders_in_one_batch(batch_size: int) -> None:
    from vqinsight.grpo.sampler import UnitRepeatSampler

    units = [[0, 1], [2], [3, 4], [5, 6], [7], [8, 9], [10, 11], [12]]
    sampler = UnitRepeatSampler(units, mini_repeat_count=3, batch_size=batch_size, repeat_count=2, seed=1)
    chunks = sampler.chunks()
    assert chunks and all(len(c) == batch_size for c in chunks)
    for c in chunks:
        for u in units:  # a unit is wholly inside a chunk or wholly outside
            assert set(u) <= set(c) or not set(u) & set(c)
    flat = [i for c in chunks for i in c]
    assert len(flat) == len(set(flat)) and len(flat) >= 13 - batch_size  # no repeats; less than a batch left out
    again = UnitRepeatSampler(units, mini_repeat_count=3, batch_size=batch_size, repeat_count=2, seed=1)
    yielded = list(again)  # TRL's pattern: each chunk twice, each prompt 3 times in a row
    expect = [i for c in chunks for _ in range(2) for i in c for _ in range(3)]
    assert yielded == expect
    with pytest.raises(ValueError, match="does not fit"):
        UnitRepeatSampler([[0, 1, 2]], mini_repeat_count=2, batch_size=2)


def test_unit_sampler_length_counts_only_the_rows_it_yields() -> None:
    """Pairs that cannot fill a chunk sit out the epoch; len() must count what iteration yields (TRL's epoch and
    max_steps estimates read it), and asking for it must not change the order."""
    from vqinsight.grpo.sampler import UnitRepeatSampler

    units = [[0, 1], [2], [3, 4], [5, 6], [7, 8]]  # 9 rows: batches of 4 leave 1 or more rows out
    for seed in range(6):
        sampler = UnitRepeatSampler(units, mini_repeat_count=2, batch_size=4, repeat_count=3, seed=seed)
        twin = UnitRepeatSampler(units, mini_repeat_count=2, batch_size=4, repeat_count=3, seed=seed)
        n = len(sampler)
        assert n == len(list(sampler)) == len(list(twin))
        assert n % (4 * 2 * 3) == 0 and n < 9 * 2 * 3
    lone = UnitRepeatSampler([[0, 1], [2, 3], [4]], mini_repeat_count=1, batch_size=3, seed=0)
    assert len(lone) == len(list(lone)) == 3  # one pair and the single row; the other pair sits out


def test_trainer_samples_both_orders_together_without_building_prompts(tiny_dir: Path, tmp_path: Path) -> None:
    from trl.trainer.utils import RepeatSampler

    from vqinsight.grpo.sampler import UnitRepeatSampler

    trainer = make_trainer(tiny_dir, tmp_path, [0], per_device_train_batch_size=8)  # 2 prompts of G = 4

    def no_transform(batch: dict[str, list]) -> dict[str, list]:
        raise AssertionError("the sampler must read the raw sample_id column")

    paired = Dataset.from_dict({"sample_id": ["a", "a|BA", "b", "b|BA"]}).with_transform(no_transform)
    sampler = trainer._get_train_sampler(paired)
    assert isinstance(sampler, UnitRepeatSampler)
    assert sorted(sampler.units) == [[0, 1], [2, 3]]
    plain = Dataset.from_dict({"sample_id": ["a", "b", "c", "d"]}).with_transform(no_transform)
    assert type(trainer._get_train_sampler(plain)) is RepeatSampler
    one = make_trainer(tiny_dir, tmp_path, [0])  # 1 prompt per generation batch: pairs cannot be kept together
    assert type(one._get_train_sampler(paired)) is RepeatSampler


def test_shared_vision_equals_per_row_vision_in_logprobs_and_gradients(tiny_dir: Path, tmp_path: Path) -> None:
    """A group repeats its prompt: with share_vision the tower runs once per distinct video, and the log-probs and
    the gradients (vision tower included) equal those of one tower call per row."""
    trainer = make_trainer(tiny_dir, tmp_path, [0])
    proc, pad = trainer.processing_class, trainer._tokenizer.pad_token_id
    group = [prompt_for(2, 0, 1)] * 3 + [prompt_for(1, 0, 3)] * 2  # a 2-video group of 3, a 1-video group of 2
    fields = proc.apply_chat_template(group, add_generation_prompt=True, tokenize=True, return_dict=True)
    media = split_media_per_row(fields, [count_media(p) for p in group])
    assign_media_keys(media)
    assert [m["video_keys"] for m in media] == [[0, 1]] * 3 + [[2]] * 2
    completion = trainer._tokenizer.encode("<answer>3</answer>")
    rows = [torch.tensor(ids + completion) for ids in fields["input_ids"]]
    width = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([torch.full((width - len(r),), pad), r]) for r in rows])
    mask = (torch.arange(width) >= (width - torch.tensor([len(r) for r in rows])).unsqueeze(1)).long()
    trainer.model.train()
    trainer.model.double()  # float32 vision gradients of the random tiny model differ ~0.4% by summation order alone
    visual = trainer.model.model.visual
    calls = {"n": 0, "grids": 0}

    def count(module, args, kwargs, out) -> None:
        calls["n"] += 1
        calls["grids"] += len(kwargs.get("grid_thw", args[1] if len(args) > 1 else ()))

    hook = visual.register_forward_hook(count, with_kwargs=True)
    results = {}
    try:
        for share in (False, True):
            trainer.share_vision, calls["n"], calls["grids"] = share, 0, 0
            trainer.model.zero_grad()
            trainer._media_ctx = media
            logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, len(completion))
            logps.sum().backward()
            grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
            results[share] = (logps.detach(), grads, (calls["n"], calls["grids"]))
        calls["n"], calls["grids"], trainer._media_ctx = 0, 0, media
        with torch.no_grad():  # without gradients: one tower call over the distinct videos
            lp2, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, len(completion))
        n2 = (calls["n"], calls["grids"])
    finally:
        hook.remove()
        trainer._media_ctx = None
    (lp0, g0, n0), (lp1, g1, n1) = results[False], results[True]
    # per row: one call over all 8 videos; shared, tower trained: one call per distinct video
    assert n0 == (1, 8) and n1 == (3, 3)
    torch.testing.assert_close(lp1, lp0, atol=1e-9, rtol=1e-9)
    assert g0.keys() == g1.keys() and any(k.startswith("model.visual") for k in g1)
    assert n2 == (1, 3)
    torch.testing.assert_close(lp2, lp0, atol=1e-9, rtol=1e-9)
    errs = {k: float((g1[k] - g0[k]).norm() / g0[k].norm().clamp(min=1e-30)) for k in g0}
    assert max(errs.values()) < 1e-6, max(errs.items(), key=lambda kv: kv[1])


def test_static_rollouts_equal_transformers_generate_when_greedy(tiny_dir: Path, tmp_path: Path) -> None:
    """With sampling off, the static engine's completions equal transformers' generate() token for token on a
    padded batch of image, 1-video, 2-video and text-only prompts (the trainer's own generation call)."""
    outs = {}
    for engine in ("hf", "static", "batch"):
        trainer = make_trainer(
            tiny_dir,
            tmp_path / engine,
            list(range(len(ROWS))),
            per_device_train_batch_size=8,
            num_generations=2,
            max_completion_length=12,
            rollout_engine=engine,
            generation_kwargs={"do_sample": False},
        )
        rows = [trainer.train_dataset[i] for i in range(len(ROWS))]
        prompts = [fold_column_images(dict(r))["prompt"] for r in rows]
        with torch.no_grad():
            ids, images, fields = trainer._tokenize_prompts(prompts)
            outs[engine] = trainer._generate_single_turn(ids, images, fields, 1)[0]
    assert outs["static"] == outs["hf"]
    assert outs["batch"] == outs["hf"]
    assert any(len(c) > 1 for c in outs["hf"])


def test_repeated_prompts_are_processed_once_with_trls_result(tiny_dir: Path, tmp_path: Path) -> None:
    """A group's G copies of a prompt: media processed once and repeated give TRL's own tokenization field for
    field, and the static engine's prefill (vision tower once per distinct item) gives generate()'s greedy rollouts."""
    from trl import GRPOTrainer

    from vqinsight.grpo.batch import prompt_runs

    kw = dict(per_device_train_batch_size=8, num_generations=2, max_completion_length=12)
    static = make_trainer(tiny_dir, tmp_path / "s", list(range(len(ROWS))), rollout_engine="static",
                          generation_kwargs={"do_sample": False}, **kw)  # fmt: skip
    hf = make_trainer(tiny_dir, tmp_path / "h", list(range(len(ROWS))), rollout_engine="hf",
                      generation_kwargs={"do_sample": False}, **kw)  # fmt: skip
    rows = [static.train_dataset[i] for i in range(len(ROWS))]
    base = [fold_column_images(dict(r))["prompt"] for r in rows]
    prompts = [p for p in base for _ in range(3)] + [base[0]]  # runs of 3, then a lone copy of the first prompt
    assert prompt_runs(prompts) == [3] * len(base) + [1]
    media_fields = {"pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"}
    with torch.no_grad():
        ids0, images0, fields0 = GRPOTrainer._tokenize_prompts(hf, prompts)
        ids_h, images_h, fields_h = hf._tokenize_prompts(prompts)  # deduplicated: the fields are repeated
        ids, images, fields = static._tokenize_prompts(prompts)  # static: the media are kept per row only
        assert ids == ids_h == ids0 and sorted(fields_h) == sorted(fields0)
        assert sorted(fields) == sorted(set(fields0) - media_fields) and media_fields & set(fields0)
        for k, v in fields_h.items():
            for got_fields in (fields_h, fields) if k in fields else (fields_h,):
                got_v = got_fields[k]
                same = torch.equal(got_v, fields0[k]) if isinstance(v, torch.Tensor) else got_v == fields0[k]
                assert same, k
        assert (images is None) == (images0 is None)
        # the per-row media and their keys equal those split and keyed from TRL's full fields
        want_media = split_media_per_row(fields0, [count_media(p) for p in prompts])
        assign_media_keys(want_media)
        assert len(static._gen_media) == len(want_media)
        for got_row, want_row in zip(static._gen_media, want_media, strict=True):
            assert got_row.keys() == want_row.keys()
            for k, v in want_row.items():
                assert torch.equal(got_row[k], v) if isinstance(v, torch.Tensor) else got_row[k] == v, k
        got = static._generate_single_turn(ids, images, fields, 1)[0]
        want = hf._generate_single_turn(ids0, images0, fields0, 1)[0]
    assert got == want
    assert got[0] == got[1] == got[2]
    # runs of one length G: each distinct prompt is prefilled once and its cache copied G times (prefix sharing)
    from vqinsight.fastdecode import StaticDecoder

    uniform = [p for p in base for _ in range(3)]
    seen: list[int] = []
    real_prefill = StaticDecoder.prefill

    def spy(self, enc):
        seen.append(int(enc["input_ids"].size(0)))
        return real_prefill(self, enc)

    with torch.no_grad():
        ids, images, fields = static._tokenize_prompts(uniform)
        ids0, images0, fields0 = hf._tokenize_prompts(uniform)
        StaticDecoder.prefill = spy
        try:
            got = static._generate_single_turn(ids, images, fields, 1)[0]
        finally:
            StaticDecoder.prefill = real_prefill
        want = hf._generate_single_turn(ids0, images0, fields0, 1)[0]
    assert seen == [len(base)] and got == want


def _rollouts_of_one_step(trainer: VideoGRPOTrainer, inputs: list[dict[str, Any]]) -> tuple[list, list, Any]:
    """(ordered completion ids, shuffled completion texts, temporal state) of one generation batch, run the way
    ``_generate_and_score_completions`` runs it (shuffled prompts first, then TRL's ordered tokenization)."""
    texts: list[list[str]] = []
    real = trainer._score_shuffled

    def spy(inputs: Any, videos: Any, rows: Any, shuffled_texts: list[str]) -> Any:
        texts.append(list(shuffled_texts))
        return real(inputs, videos, rows, shuffled_texts)

    trainer._score_shuffled = spy  # type: ignore[method-assign]
    with torch.no_grad():
        trainer._temporal_state = trainer._temporal_rollouts(inputs)
        trainer._capture_media = True
        ids, images, fields = trainer._tokenize_prompts([x["prompt"] for x in inputs])
        ordered = trainer._generate_single_turn(ids, images, fields, 1)[0]
    trainer._capture_media = False
    assert len(texts) == 1
    return ordered, texts[0], trainer._temporal_state


def test_merged_shuffled_rollouts_equal_a_separate_call_when_greedy(tiny_dir: Path, tmp_path: Path) -> None:
    """merge_shuffled_rollouts: the shuffled-frame prompts are decoded in the ordered prompts' batch, ONE prefill
    of the distinct prompts, and give the same greedy tokens and temporal counts as their own generation call."""
    from vqinsight.fastdecode import StaticDecoder

    inputs = _rows(1, 4) + _rows(0, 4) + _rows(6, 4)  # a comparison group, a 1-video group, a text-only group
    out, prefills = {}, {}
    real_prefill = StaticDecoder.prefill
    for merge in (False, True):
        trainer = make_trainer(tiny_dir, tmp_path / str(merge), [0, 1, 6], per_device_train_batch_size=12,
                               num_generations=4, max_completion_length=10, temporal=True, temporal_rollouts=3,
                               rollout_engine="static", merge_shuffled_rollouts=merge,
                               generation_kwargs={"do_sample": False})  # fmt: skip
        assert trainer.merge_shuffled_rollouts is merge
        trainer.model.train()
        seen: list[int] = []

        def spy(self, enc, seen=seen):
            seen.append(int(enc["input_ids"].size(0)))
            return real_prefill(self, enc)

        StaticDecoder.prefill = spy
        try:
            out[merge] = _rollouts_of_one_step(trainer, [dict(x) for x in inputs])
        finally:
            StaticDecoder.prefill = real_prefill
        prefills[merge] = seen
        assert trainer._pending_shuffled is None
    # separate: the 2 shuffled prompts (3 copies each), then the 3 ordered ones (4 copies each); merged: 5 at once
    assert prefills == {False: [2, 3], True: [5]}
    (ord_a, texts_a, state_a), (ord_b, texts_b, state_b) = out[False], out[True]
    assert ord_b == ord_a and len(ord_a) == 12
    assert texts_b == texts_a and len(texts_a) == 6 and any(texts_a)
    assert state_b == state_a and state_a.shuffled_total == [1, 1, 1, 0] * 2 + [0] * 4


def test_batch_rollout_engine_gives_the_static_engines_merged_rollouts(tiny_dir: Path, tmp_path: Path) -> None:
    """rollout_engine batch (batchdecode.BatchDecoder: a prompt's copies share its cache): the same greedy ordered
    and shuffled rollouts and temporal counts as the static engine, in one merged batch."""
    inputs = _rows(1, 4) + _rows(0, 4) + _rows(6, 4)
    out = {}
    for engine in ("static", "batch"):
        trainer = make_trainer(tiny_dir, tmp_path / engine, [0, 1, 6], per_device_train_batch_size=12,
                               num_generations=4, max_completion_length=10, temporal=True, temporal_rollouts=3,
                               rollout_engine=engine, generation_kwargs={"do_sample": False})  # fmt: skip
        assert trainer.merge_shuffled_rollouts
        trainer.model.train()
        out[engine] = _rollouts_of_one_step(trainer, [dict(x) for x in inputs])
    assert out["batch"] == out["static"]
    assert trainer._decoder.stats["prefix_prefills"] == 5, "one prefill per distinct prompt"


def test_merged_shuffled_rollouts_train_and_a_lost_merge_is_an_error(tiny_dir: Path, tmp_path: Path) -> None:
    trainer = make_trainer(tiny_dir, tmp_path, [0, 1], per_device_train_batch_size=8, num_generations=4,
                           temporal=True, rollout_engine="static")  # fmt: skip
    assert trainer.merge_shuffled_rollouts  # the default with the static engine and shared vision
    calls = {"separate": 0}
    real = trainer._generate_shuffled

    def counting(prompts: list) -> list[str]:
        calls["separate"] += 1
        return real(prompts)

    trainer._generate_shuffled = counting  # type: ignore[method-assign]
    changed, total, logs = train_and_count_changed(trainer)
    assert calls["separate"] == 0 and changed >= total - 1
    assert "temporal/acc_shuffled" in logs and "rewards/temporal/mean" in logs
    # shuffled prompts left pending (the ordered generation call never took them): the reward refuses to run
    trainer._pending_shuffled = object()  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="did not take them"):
        trainer._temporal_reward([], [])
    trainer._pending_shuffled = None
    for kw in ({"rollout_engine": "hf"}, {"rollout_engine": "static", "share_vision": False}):
        t = make_trainer(tiny_dir, tmp_path / str(len(kw)), [0], temporal=True, **kw)
        assert not t.merge_shuffled_rollouts


def test_uniform_copies_needs_equal_tokens_padding_and_media_keys_in_runs_of_one_length() -> None:
    from vqinsight.grpo.batch import uniform_copies

    ids = torch.tensor([[0, 5, 6], [0, 5, 6], [7, 8, 9], [7, 8, 9]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 1], [1, 1, 1], [1, 1, 1]])
    vid = [{"video_keys": [0]}, {"video_keys": [0]}, {"video_keys": [1]}, {"video_keys": [1]}]
    assert uniform_copies(ids, mask, vid) == 2
    assert uniform_copies(ids, mask, [{}, {}, {}, {}]) == 2  # text-only rows
    other = [{"video_keys": [0]}, {"video_keys": [2]}, {"video_keys": [1]}, {"video_keys": [1]}]
    assert uniform_copies(ids, mask, other) == 1  # same tokens, different videos: runs of 1, 1, 2
    unkeyed = [{"pixel_values_videos": torch.zeros(1)}] * 4  # media without keys cannot be matched
    assert uniform_copies(ids, mask, unkeyed) == 1
    padded = mask.clone()
    padded[1, 0] = 1
    assert uniform_copies(ids, padded, vid) == 1
    assert uniform_copies(ids[:3], mask[:3], vid[:3]) == 1  # runs of 2 and 1


def toggling_trainer(tiny_dir: Path, tmp_path: Path, steps: int, **kw: Any) -> VideoGRPOTrainer:
    """Checkpointing on, static rollouts with the temporal reward: TRL switches checkpointing off and on around
    every generation call (two per step)."""
    return make_trainer(
        tiny_dir,
        tmp_path,
        [0, 1],
        per_device_train_batch_size=2,
        num_generations=2,
        max_steps=steps,
        gradient_checkpointing=True,
        temporal=True,
        rollout_engine="static",
        **kw,
    )


def test_gradient_checkpointing_hooks_do_not_pile_up_over_steps(tiny_dir: Path, tmp_path: Path) -> None:
    """TRL toggles checkpointing around each generation; every toggle used to add one more input-grad hook on the
    embeddings (run by every forward, and a torch.compile guard failure per rollout call)."""
    from transformers import TrainerCallback

    trainer = toggling_trainer(tiny_dir, tmp_path, steps=3)
    embed = trainer.accelerator.unwrap_model(trainer.model).get_input_embeddings()
    counts: list[int] = []

    class Count(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            counts.append(len(embed._forward_hooks))

    trainer.add_callback(Count())
    trainer.train()
    assert len(counts) == 3 and counts[0] >= 1, counts
    assert counts == [counts[0]] * 3, f"embedding forward hooks per step: {counts}"


def _checkpoint_flags(trainer: VideoGRPOTrainer) -> tuple[list[bool], list[bool]]:
    """(decoder layers', vision blocks') ``gradient_checkpointing`` flags."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    layers = model.model.language_model.layers
    blocks = model.model.visual.blocks
    return [bool(x.gradient_checkpointing) for x in layers], [bool(b.gradient_checkpointing) for b in blocks]


def test_checkpoint_layers_recompute_only_the_first_layers_across_trl_toggles(tiny_dir: Path, tmp_path: Path) -> None:
    """checkpoint_layers=1 of 2: only the first decoder layer recomputes in the backward, the vision tower stays
    checkpointed, and the limit survives TRL switching checkpointing off and on around each generation call."""
    from transformers import TrainerCallback

    trainer = toggling_trainer(tiny_dir, tmp_path, steps=2, checkpoint_layers=1)
    flags: list[tuple[list[bool], list[bool]]] = []

    class Flags(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            flags.append(_checkpoint_flags(trainer))

    trainer.add_callback(Flags())
    trainer.train()
    assert flags == [([True, False], [True, True])] * 2, flags

    # what the flags do: count the checkpoint calls of one forward + backward, after a fresh enable (as TRL's)
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.gradient_checkpointing_disable()
    model.gradient_checkpointing_enable()
    assert _checkpoint_flags(trainer) == ([True, False], [True, True])
    calls = [0, 0]
    for i, layer in enumerate(model.model.language_model.layers):
        inner = layer._gradient_checkpointing_func

        def counted(*args: Any, i: int = i, inner: Any = inner, **kw: Any) -> Any:
            calls[i] += 1
            return inner(*args, **kw)

        layer._gradient_checkpointing_func = counted
    model.train()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    model(input_ids=ids, labels=ids).loss.backward()
    assert calls == [1, 0], calls


def test_checkpoint_layers_leave_gradients_unchanged_and_refuse_bad_values(tiny_dir: Path, tmp_path: Path) -> None:
    from vqinsight.grpo.trainer import limit_checkpointed_layers

    grads = []
    for n in (None, 0, 1, 2):
        trainer = make_trainer(tiny_dir, tmp_path, [0], gradient_checkpointing=True, checkpoint_layers=n)
        model = trainer.accelerator.unwrap_model(trainer.model)
        model.gradient_checkpointing_enable()
        model.train()
        torch.manual_seed(0)
        ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
        recomputed = 2 if n is None else n
        assert _checkpoint_flags(trainer)[0] == [True] * recomputed + [False] * (2 - recomputed)
    for g in grads[1:]:
        assert g.keys() == grads[0].keys()
        for k in g:
            torch.testing.assert_close(g[k], grads[0][k], atol=0, rtol=0)
    for bad in (3, -1, True, 1.0):
        with pytest.raises(ValueError, match=r"checkpoint_layers must be an integer in \[0, 2\]"):
            limit_checkpointed_layers(model, bad)
    with pytest.raises(ValueError, match="checkpoint_layers needs gradient_checkpointing"):
        make_trainer(tiny_dir, tmp_path, [0], gradient_checkpointing=False, checkpoint_layers=1)
