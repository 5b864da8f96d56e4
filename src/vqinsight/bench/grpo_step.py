"""One stage-2 GRPO step of the Qwen2.5-VL-7B architecture (random weights): rollouts, log-probs, update, memory.

    python -m vqinsight.bench grpo_step --out $OUT/grpo_step.json              # 7B, bf16, one GPU
    python -m vqinsight.bench grpo_step --size tiny --nframes 4 --frame-pixels 4704 --generations 2 --shuffled 1 \\
        --max-new-tokens 4 --steps 1                                              # CPU smoke run

Runs ``VideoGRPOTrainer`` (the project's trainer: per-row video media in every forward, temporal reward from
frame-shuffled rollouts, the stage-2 reward functions) for ``--steps`` optimizer steps on one prompt repeated G times
and reports the wall time of each phase of the LAST step; the earlier steps are warm-up (their generation is capped
at ``--warmup-new-tokens`` to save time). Every phase boundary is CUDA-synchronised. Weights are random and the
tokenizer is the project's byte-level one (ids < 300, all valid in the 152k vocabulary), so completions are noise and
all run to ``--max-new-tokens`` unless the EOS id is sampled (the JSON records the real lengths). A CUDA OOM is
recorded in the JSON (``"oom"``, with the phase it hit and the partial timings) and the exit status is still 0.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vqinsight.bench.archs import (
    ARCHS,
    MERGE,
    PATCH,
    TEMPORAL_PATCH,
    TEXT_7B,
    VISION_7B,
    build_7b_config,
    build_model,
    count_params,
    special_ids,
)
from vqinsight.provenance import atomic_write_json, device_info, package_versions
from vqinsight.rewards import LENGTH_DEFAULTS

log = logging.getLogger(__name__)

GIB = 2**30
UNIT = PATCH * MERGE  # 28: frame sides are kept multiples of this so the processor does not resize

#: peak dense bf16 matmul rate used for MFU: measured once on an H100 (docs/PERFORMANCE.md) and the data-sheet value
PEAK_TFLOPS = {"measured": 798.0, "datasheet": 989.0}

#: Stage-2 reward recipe (config/recipes/paper_stage2.yaml); the trainer appends the temporal reward.
REWARDS: dict[str, Any] = {
    "format": 1.0,
    "score": 1.0,
    "choice": 1.0,
    "score_variant": "l1",
    "length": {"weight": 1.0, **LENGTH_DEFAULTS, "inclusive": False},
}

PHASES: dict[str, str] = {
    "total": "on_step_begin -> on_step_end of the optimizer step (excludes fetching the batch: see 'data')",
    "data": "dataloader fetch of the step's rows (builds the random videos), before on_step_begin",
    "generate_and_score": "VideoGRPOTrainer._generate_and_score_completions: everything before the loss",
    "rollout": "_generate_single_turn of the G ordered prompts (HF generate, incl. vision prefill); with "
    "merge_shuffled_rollouts (settings) the frame-shuffled prompts are decoded in this same call",
    "shuffled_rollout": "_generate_single_turn of the frame-shuffled prompts (temporal reward); 0 when they are "
    "merged into the ordered call",
    "tokenize": "_tokenize_prompts of the ordered prompts (chat template + video processor, CPU)",
    "shuffled_tokenize": "_tokenize_prompts of the shuffled prompts",
    "logprob": "no-grad _get_per_token_logps_and_entropies calls (old / ref log-probs; skipped by TRL 1.16 when "
    "beta == 0 and generation is aligned with the optimizer step)",
    "update": "total - generate_and_score: policy forward + backward + grad clip + optimizer step + zero_grad",
    "update_forward": "compute_loss (policy forward with grad, incl. vision tower, and the GRPO loss)",
    "update_backward": "training_step - _prepare_inputs - compute_loss (mostly the backward pass)",
    "optimizer": "on_pre_optimizer_step -> on_optimizer_step (optimizer.step)",
}


# ---------------------------------------------------------------------------------------------------------------
# model / processor / data
# ---------------------------------------------------------------------------------------------------------------
def frame_size(frame_pixels: int) -> tuple[int, int]:
    """(H, W), multiples of 28, W ≈ 2H, with H·W <= frame_pixels (exactly 224×448 for 100352 = 128·28²)."""
    if frame_pixels < UNIT * UNIT:
        raise ValueError(f"--frame-pixels must be >= {UNIT * UNIT}, got {frame_pixels}")
    h = max(UNIT, round(math.sqrt(frame_pixels / 2) / UNIT) * UNIT)
    while h > UNIT and h * UNIT > frame_pixels:
        h -= UNIT
    w = max(UNIT, frame_pixels // h // UNIT * UNIT)
    return h, w


def make_video(seed: int, nframes: int, height: int, width: int) -> np.ndarray:
    """(T, H, W, 3) uint8 noise."""
    return np.random.default_rng(seed).integers(0, 256, (nframes, height, width, 3), dtype=np.uint8)


def make_prompt(task: str, nframes: int, height: int, width: int, seed: int = 0) -> list[dict[str, Any]]:
    """The full-style stage-2 prompt of ``task`` with random videos (two for comparison)."""
    from vqinsight.prompts import build_messages

    n_videos = 2 if task == "comparison" else 1
    media = [make_video(seed * 10 + k, nframes, height, width) for k in range(n_videos)]
    prompt = "A cat playing a piano in a sunlit room." if task == "comparison" else None
    return build_messages(task, media=media, prompt=prompt, style="full")


def make_dataset(task: str, rows: int, nframes: int, height: int, width: int) -> Any:
    """``rows`` copies of one prompt (videos built on access) with the ground-truth columns the rewards read."""
    from datasets import Dataset

    data = {
        "task": [task] * rows,
        "gt_score": [3.0 if task == "video_score" else None] * rows,
        "gt_choice": ["A" if task == "comparison" else None] * rows,
        "seed": [0] * rows,
    }

    def transform(batch: dict[str, list]) -> dict[str, list]:
        prompts = [
            make_prompt(t, nframes, height, width, s) for t, s in zip(batch["task"], batch["seed"], strict=True)
        ]
        return {**batch, "prompt": prompts}

    return Dataset.from_dict(data).with_transform(transform)


def prompt_stats(processor: Any, prompt: list[dict[str, Any]], ids: dict[str, int]) -> dict[str, Any]:
    """Token counts of one prompt as TRL tokenizes it (chat template, generation prompt, video placeholders)."""
    out = processor.apply_chat_template(
        conversation=[prompt], add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    input_ids = out["input_ids"][0]
    video = int((input_ids == ids["video"]).sum())
    grid = out.get("video_grid_thw")
    return {
        "tokens": int(input_ids.numel()),
        "video_tokens": video,
        "text_tokens": int(input_ids.numel()) - video,
        "video_grid_thw": grid.tolist() if grid is not None else [],
        "video_patches": int(grid.prod(-1).sum()) if grid is not None else 0,
        "note": "text is tokenized byte-level (one token per byte): ~3-4x more text tokens than Qwen's BPE",
    }


# ---------------------------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------------------------
class PhaseTimer:
    """Wall time per named phase and step, CUDA-synchronised at both ends of every phase (phases may nest)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.steps: list[dict[str, Any]] = []
        self.current: dict[str, Any] | None = None
        self.pending: dict[str, float] = {}  # phases timed between steps (the batch fetch), moved into the next step
        self.active: list[str] = []
        self.failed_in: list[str] | None = None
        self.info: dict[str, Any] = {}  # facts observed while training (e.g. activation checkpointing really on)
        self._step_t0 = 0.0

    def sync(self) -> None:
        if self.cuda:
            import torch

            with contextlib.suppress(Exception):  # after an OOM / device error: timing is best effort
                torch.cuda.synchronize()

    def add(self, name: str, seconds: float) -> None:
        target = self.current["timings_s"] if self.current is not None else self.pending
        target[name] = target.get(name, 0.0) + seconds

    def stat(self, key: str, **values: Any) -> None:
        """Accumulate counters (sum) under ``key`` of the current step."""
        if self.current is None:
            return
        bucket = self.current.setdefault(key, {})
        for k, v in values.items():
            bucket[k] = bucket.get(k, 0) + v

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.sync()
        t0 = time.perf_counter()
        self.active.append(name)
        try:
            yield
        except BaseException:
            if self.failed_in is None:
                self.failed_in = list(self.active)
            raise
        finally:
            self.sync()
            self.active.pop()
            self.add(name, time.perf_counter() - t0)

    def begin_step(self, index: int) -> None:
        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self.current = {"step": index, "complete": False, "timings_s": dict(self.pending)}
        self.pending = {}
        self.steps.append(self.current)
        self.sync()
        self._step_t0 = time.perf_counter()

    def end_step(self) -> None:
        self.sync()
        if self.current is None:
            return
        self.current["timings_s"]["total"] = time.perf_counter() - self._step_t0
        self.current["complete"] = True
        self.current["memory"] = memory_stats(self.cuda)
        self.current = None

    def abort_step(self) -> None:
        """Close the current step after an exception: its total so far and memory peaks are kept, marked partial."""
        if self.current is None:
            return
        self.current["timings_s"]["total_partial"] = time.perf_counter() - self._step_t0
        self.current["memory"] = memory_stats(self.cuda)
        self.current = None


def memory_stats(cuda: bool) -> dict[str, float | None]:
    """Peak allocated / reserved GiB since the last reset (None on CPU)."""
    if not cuda:
        return {"max_allocated_gib": None, "max_reserved_gib": None}
    import torch

    return {
        "max_allocated_gib": torch.cuda.max_memory_allocated() / GIB,
        "max_reserved_gib": torch.cuda.max_memory_reserved() / GIB,
    }


def finish_timings(step: dict[str, Any]) -> dict[str, float | None]:
    """The step's phase table with the derived phases (update, update_backward) and zeros for phases not run."""
    t = dict(step["timings_s"])
    for name in ("rollout", "shuffled_rollout", "tokenize", "shuffled_tokenize", "logprob", "data", "optimizer"):
        t.setdefault(name, 0.0)
    t.setdefault("total", None)  # None: the step did not finish (see total_partial)
    total = t["total"]
    gen = t.get("generate_and_score")
    t["update"] = total - gen if total is not None and gen is not None else None
    if "training_step" in t and "prepare_inputs" in t and "update_forward" in t:
        t["update_backward"] = t["training_step"] - t["prepare_inputs"] - t["update_forward"]
    return t


def rollout_summary(step: dict[str, Any], timings: dict[str, float | None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, phase in (("ordered", "rollout"), ("shuffled", "shuffled_rollout")):
        s = step.get(f"{key}_tokens", {})
        n, tokens, secs = s.get("sequences", 0), s.get("tokens", 0), timings.get(phase) or 0.0
        out[key] = {
            "calls": s.get("calls", 0),
            "sequences": n,
            "tokens": tokens,
            "mean_completion_length": tokens / n if n else None,
            "generated_width": s.get("width", 0),
            "prompt_tokens_max": s.get("prompt_max", 0),
            "tokens_per_s": tokens / secs if secs > 0 else None,
            "seconds": secs,
        }
    # both kinds of rollout together (with merged shuffled rollouts their time is all in the ordered call's)
    n = sum(out[k]["sequences"] for k in ("ordered", "shuffled"))
    tokens = sum(out[k]["tokens"] for k in ("ordered", "shuffled"))
    secs = sum(out[k]["seconds"] for k in ("ordered", "shuffled"))
    rate = tokens / secs if secs > 0 else None
    out["all"] = {"sequences": n, "tokens": tokens, "seconds": secs, "tokens_per_s": rate}
    return out


def update_estimate(
    step: dict[str, Any],
    prompt_tokens: int,
    params_language: int,
    flops: dict[str, Any] | None = None,
    peaks: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Tokens of the policy update, the baseline's rough rate (6·N·tokens ×4/3) and, given ``flops`` (from
    ``model_flops``), the model FLOP utilisation of the update phase."""
    ordered = step.get("ordered_tokens", {})
    n, completion = ordered.get("sequences", 0), ordered.get("width", 0)
    tokens = n * (prompt_tokens + completion)  # completions are right-padded to the longest one
    seconds = step["timings_s"].get("update")
    rough = 6 * params_language * tokens * 4 / 3
    out: dict[str, Any] = {
        "tokens": tokens,
        "tflop_per_s": rough / seconds / 1e12 if seconds else None,
        "note": "tflop_per_s: same estimate as the H100 baseline (language-model params only, no attention FLOPs)",
    }
    if flops and seconds:
        total = flops["per_sequence"](prompt_tokens + completion, completion) * n + flops["vision"]
        out["model_flops"] = total
        out["model_tflop_per_s"] = total / seconds / 1e12
        out["mfu"] = {k: total / seconds / 1e12 / v for k, v in (peaks or PEAK_TFLOPS).items()}
        out["mfu_definition"] = flops["definition"]
    return out


def model_flops(model: Any, lora: bool, vision_trains: bool, vision_patches: int) -> dict[str, Any]:
    """Model FLOPs of one policy update (forward + backward, NO recomputation counted), per sequence and vision.

    Decoder linears: 2·P per token forward; backward 4·P per token when the weights train (input and weight
    gradients), 2·P with LoRA (input gradients only; the adapters' own FLOPs are under 1 % and left out).
    Causal attention: 2·L·S²·d_q forward per sequence of S tokens (QKᵀ and AV over half the square), ×3 with the
    backward. The LM head runs on the completion tokens only (TRL keeps their logits): 2·d·V per token, ×3 / ×2.
    Vision tower: 2·P_v per patch forward, ×3 when it trains; counted once per distinct video (``vision_patches``).
    """
    lm = model.model.language_model
    cfg = lm.config
    p_layers = sum(p.numel() for n, p in lm.layers.named_parameters() if p.dim() == 2 and "lora_" not in n)
    p_vis = sum(p.numel() for n, p in model.model.visual.named_parameters() if p.dim() >= 2 and "lora_" not in n)
    d_q = cfg.num_attention_heads * (getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    layers, vocab, hidden = cfg.num_hidden_layers, cfg.vocab_size, cfg.hidden_size
    lin = 4 if lora else 6
    head = 4 if lora else 6

    def per_sequence(seq: int, completion: int) -> float:
        return lin * p_layers * seq + 3 * 2 * layers * seq * seq * d_q + head * hidden * vocab * completion

    return {
        "per_sequence": per_sequence,
        "vision": (6 if vision_trains else 2) * p_vis * vision_patches,
        "definition": (
            f"decoder linears {lin}·P·tokens (P = {p_layers / 1e9:.2f} B), causal attention 6·L·S²·d_q, LM head "
            f"{head}·d·V·completion tokens, vision {6 if vision_trains else 2}·P_v·patches once per distinct video "
            f"(P_v = {p_vis / 1e9:.2f} B); recomputation not counted; peak {PEAK_TFLOPS}"
        ),
    }


# ---------------------------------------------------------------------------------------------------------------
# trainer instrumentation
# ---------------------------------------------------------------------------------------------------------------
def instrumented_trainer_class(timer: PhaseTimer, warmup_new_tokens: int | None) -> type:
    """``VideoGRPOTrainer`` subclass whose hooks report to ``timer`` (imports TRL, hence a factory)."""
    import torch

    from vqinsight.grpo.trainer import VideoGRPOTrainer

    def _count_tokens(key: str, prompt_ids: list, completion_ids: list) -> None:
        lengths = [len(c) for c in completion_ids]
        timer.stat(f"{key}_tokens", calls=1, sequences=len(lengths), tokens=sum(lengths))
        if timer.current is not None:
            bucket = timer.current[f"{key}_tokens"]
            bucket["width"] = max(bucket.get("width", 0), max(lengths, default=0))
            bucket["prompt_max"] = max([bucket.get("prompt_max", 0), *(len(p) for p in prompt_ids)])

    class BenchGRPOTrainer(VideoGRPOTrainer):
        _bench_shuffled = False

        def get_batch_samples(self, *args: Any, **kwargs: Any) -> Any:
            with timer.phase("data"):
                return super().get_batch_samples(*args, **kwargs)

        def training_step(self, *args: Any, **kwargs: Any) -> Any:
            with timer.phase("training_step"):
                return super().training_step(*args, **kwargs)

        def _prepare_inputs(self, *args: Any, **kwargs: Any) -> Any:
            with timer.phase("prepare_inputs"):
                return super()._prepare_inputs(*args, **kwargs)

        def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
            warmup = self.state.global_step < self.args.max_steps - 1
            cap = warmup_new_tokens if warmup and warmup_new_tokens else self.max_completion_length
            self.generation_config.max_new_tokens = cap
            self.generation_kwargs["max_new_tokens"] = cap
            with timer.phase("generate_and_score"):
                return super()._generate_and_score_completions(inputs)

        def _generate_shuffled(self, prompts: list) -> list[str]:
            self._bench_shuffled = True
            try:
                return super()._generate_shuffled(prompts)
            finally:
                self._bench_shuffled = False

        def _defer_shuffled(self, *args: Any, **kwargs: Any) -> Any:
            self._bench_shuffled = True
            try:
                return super()._defer_shuffled(*args, **kwargs)
            finally:
                self._bench_shuffled = False

        def _shuffled_completions(self, prompt_ids: list, completion_ids: list) -> None:
            _count_tokens("shuffled", prompt_ids, completion_ids)

        def _tokenize_prompts(self, prompts: list) -> Any:
            with timer.phase("shuffled_tokenize" if self._bench_shuffled else "tokenize"):
                return super()._tokenize_prompts(prompts)

        def _generate_single_turn(self, prompt_ids: Any, *args: Any, **kwargs: Any) -> Any:
            key = "shuffled" if self._bench_shuffled else "ordered"
            with timer.phase("shuffled_rollout" if self._bench_shuffled else "rollout"):
                completion_ids, logprobs = super()._generate_single_turn(prompt_ids, *args, **kwargs)
            _count_tokens(key, prompt_ids, completion_ids)
            return completion_ids, logprobs

        def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any) -> Any:
            if torch.is_grad_enabled():
                return super()._get_per_token_logps_and_entropies(*args, **kwargs)
            with timer.phase("logprob"):
                return super()._get_per_token_logps_and_entropies(*args, **kwargs)

        def compute_loss(self, *args: Any, **kwargs: Any) -> Any:
            timer.info["activation_checkpointing_in_loss"] = bool(
                getattr(self.model, "is_activation_checkpointing", 0)
            )
            with timer.phase("update_forward"):
                return super().compute_loss(*args, **kwargs)

    return BenchGRPOTrainer


def timing_callback(timer: PhaseTimer, on_step: Callable[[], None]) -> Any:
    from transformers import TrainerCallback

    class _Timing(TrainerCallback):
        def __init__(self) -> None:
            self._opt_t0 = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            timer.begin_step(state.global_step)

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            timer.sync()
            timer.active.append("optimizer")  # popped by on_optimizer_step; left in place if the step raises
            self._opt_t0 = time.perf_counter()

        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            timer.sync()
            if timer.active and timer.active[-1] == "optimizer":
                timer.active.pop()
            timer.add("optimizer", time.perf_counter() - self._opt_t0)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            timer.end_step()
            on_step()

    return _Timing()


@contextlib.contextmanager
def ref_model_factory(build: Callable[[], Any]) -> Iterator[None]:
    """Make TRL build its reference model (beta > 0) with ``build`` instead of loading it from the config's path."""
    import trl.trainer.grpo_trainer as grpo_module

    original = grpo_module.create_model_from_path
    grpo_module.create_model_from_path = lambda *a, **k: build()
    try:
        yield
    finally:
        grpo_module.create_model_from_path = original


# ---------------------------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------------------------
def _versions() -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"python": platform.python_version(), **package_versions()}
    out["cuda"] = torch.version.cuda
    out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return out


def run(args: argparse.Namespace, doc: dict[str, Any]) -> int:
    """Build everything, train ``args.steps`` steps, fill ``doc`` (the result document); return the exit status."""
    import torch
    from trl import GRPOConfig

    from vqinsight.bench.common import matmul_peak_tflops
    from vqinsight.grpo.reward_funcs import build_reward_funcs
    from vqinsight.models.tiny import build_processor, build_tokenizer
    from vqinsight.models.vision_attention import batch_vision_attention

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available() and not args.cpu
    if cuda and args.no_cudnn_sdp:
        torch.backends.cuda.enable_cudnn_sdp(False)
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    height, width = frame_size(args.frame_pixels)
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, video_min_pixels=args.frame_pixels, video_max_pixels=args.frame_pixels)
    ids = special_ids(tokenizer)
    warmup = args.warmup_new_tokens if args.warmup_new_tokens and args.warmup_new_tokens > 0 else None
    settings = {
        "size": args.size,
        "task": args.task,
        "nframes": args.nframes,
        "frame_pixels": args.frame_pixels,
        "frame_hw": [height, width],
        "generations": args.generations,
        "shuffled": args.shuffled,
        "max_new_tokens": args.max_new_tokens,
        "warmup_new_tokens": warmup or args.max_new_tokens,
        "steps": args.steps,
        "measured_step": args.steps - 1,
        "optim": args.optim,
        "beta": args.beta,
        "beta_note": "paper 0.001: a reference model (+1x weights) and one more no-grad forward per step",
        "loss_type": "grpo",
        "learning_rate": 1e-6,
        "temperature": 1.0,
        "top_p": 0.95,
        "gradient_checkpointing": not args.no_grad_ckpt,
        "checkpoint_layers": args.ckpt_layers,  # None: every layer recomputes
        "micro_batch": args.micro_batch or args.generations,
        "rollout_engine": args.rollout_engine,
        "rollout_compile": args.rollout_compile,  # None: the default (on CUDA only); see rollout_compiled
        "share_vision": not args.no_share_vision,
        "vision_attention": "per-window loop (transformers)" if args.vision_attention_loop else "batched",
        "lora": {"r": args.lora, "alpha": 2 * args.lora, "targets": "language-model linears"} if args.lora else None,
        "bf16": cuda,
        "dtype": str(dtype),
        "attn_implementation": None,  # filled in from the built model
        "cudnn_sdp": not (cuda and args.no_cudnn_sdp),
        "device": str(device),
        "pytorch_cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        "threads": torch.get_num_threads(),
        "seed": args.seed,
        "rewards": REWARDS,
        "temporal": {"enabled": True, "rollouts": args.shuffled, "alpha": 0.3, "mu": 0.8, "strict": True},
    }
    doc.update(
        {
            "status": "running",
            "settings": settings,
            "phase_definitions": PHASES,
            "gpu": torch.cuda.get_device_name() if cuda else None,
            "versions": _versions(),
            "machine": device_info(),
            "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
    )

    mfu_peaks = dict(PEAK_TFLOPS)
    if cuda:  # this GPU's own bf16 matmul rate, measured in the same run (MFU's "this_run" key)
        doc["matmul_peak"] = matmul_peak_tflops(device)
        mfu_peaks["this_run"] = doc["matmul_peak"]["tflops"]
        log.info("bf16 matmul peak measured now: %.0f TFLOP/s", mfu_peaks["this_run"])
    prompt = make_prompt(args.task, args.nframes, height, width)
    doc["prompt"] = prompt_stats(processor, prompt, ids)
    config = build_7b_config(tokenizer, args.size) if args.size in ARCHS else None
    t0 = time.perf_counter()
    model = build_model(args.size, tokenizer, device, dtype, args.seed)
    if not args.vision_attention_loop:
        batch_vision_attention(model)
    doc["model_build_s"] = time.perf_counter() - t0
    settings["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    n_total = sum(p.numel() for p in model.parameters())
    n_vision = sum(p.numel() for p in model.model.visual.parameters())
    tc, vc = model.config.text_config, model.config.vision_config
    doc["model"] = {
        "architecture": {"7b": "Qwen2.5-VL-7B-Instruct", "3b": "Qwen2.5-VL-3B-Instruct"}.get(
            args.size, "vqinsight tiny Qwen2.5-VL"
        ),
        "weights": "random",
        "params": n_total,
        "params_b": n_total / 1e9,
        "params_vision": n_vision,
        "params_language": n_total - n_vision,
        "text": {k: getattr(tc, k, None) for k in TEXT_7B},
        "vision": {k: getattr(vc, k, None) for k in VISION_7B},
        "tie_word_embeddings": model.config.tie_word_embeddings,
    }
    if config is not None:
        doc["model"]["params_meta_count"] = count_params(config)["total"]
    if cuda:
        doc["memory_after_model_gib"] = torch.cuda.memory_allocated() / GIB
    log.info("model %s: %.3f B params built in %.1f s", args.size, n_total / 1e9, doc["model_build_s"])

    funcs, weights = build_reward_funcs(REWARDS)
    timer = PhaseTimer(cuda)
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=args.lora,
            lora_alpha=2 * args.lora,
            lora_dropout=0.0,
            target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
        )
    n_videos = 2 if args.task == "comparison" else 1
    patches = n_videos * args.nframes * height * width // (PATCH * PATCH)
    flops = model_flops(model, lora=bool(args.lora), vision_trains=not args.lora, vision_patches=patches)

    def snapshot(status: str) -> None:
        doc["status"] = status
        steps = []
        for step in timer.steps:
            t = finish_timings(step)
            steps.append({**step, "timings_s": t, "rollout": rollout_summary(step, t)})
        for step in steps:
            step["update_estimate"] = update_estimate(
                step, doc["prompt"]["tokens"], doc["model"]["params_language"], flops, mfu_peaks
            )
        doc["steps"] = steps
        doc["observed"] = dict(timer.info)
        last = steps[-1] if steps else None
        doc["timings_s"] = last["timings_s"] if last else {}
        doc["rollout"] = last["rollout"] if last else {}
        doc["update_estimate"] = last["update_estimate"] if last else {}
        peaks = (last.get("memory") if last else None) or memory_stats(cuda)
        doc["memory"] = {
            **peaks,
            "scope": "peak over the last (measured) step; reset at its on_step_begin",
        }
        doc["timestamp"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        if args.out is not None:
            atomic_write_json(args.out, doc)

    status = 0
    with tempfile.TemporaryDirectory(prefix="vqinsight-bench-grpo-") as tmp:
        config_kw: dict[str, Any] = {
            "output_dir": tmp,
            "per_device_train_batch_size": args.micro_batch or args.generations,
            "gradient_accumulation_steps": args.generations // (args.micro_batch or args.generations),
            "num_generations": args.generations,
            "max_completion_length": args.max_new_tokens,
            "bf16": cuda,
            "use_cpu": not cuda,
            "gradient_checkpointing": not args.no_grad_ckpt,
            "learning_rate": 1e-6,
            "beta": args.beta,
            "loss_type": "grpo",
            "optim": args.optim,
            "max_steps": args.steps,
            "temperature": 1.0,
            "top_p": 0.95,
            "report_to": "none",
            "save_strategy": "no",
            "logging_steps": 1,
            "remove_unused_columns": False,
            "reward_weights": weights,
            "seed": args.seed,
            "disable_tqdm": True,
            "dataloader_num_workers": 0,
        }
        trainer_cls = instrumented_trainer_class(timer, warmup)
        trainer = None
        try:
            with ref_model_factory(lambda: build_model(args.size, tokenizer, device, dtype, args.seed)):
                trainer = trainer_cls(
                    model=model,
                    reward_funcs=funcs,
                    args=GRPOConfig(**config_kw),
                    train_dataset=make_dataset(args.task, args.steps, args.nframes, height, width),
                    processing_class=processor,
                    temporal=True,
                    temporal_rollouts=args.shuffled,
                    rollout_engine=args.rollout_engine,
                    rollout_compile=args.rollout_compile,
                    merge_shuffled_rollouts=not args.no_merge_shuffled,
                    checkpoint_layers=args.ckpt_layers,
                    share_vision=not args.no_share_vision,
                    batched_vision_attention=not args.vision_attention_loop,
                    peft_config=peft_config,
                )
            trainer.add_callback(timing_callback(timer, lambda: snapshot("running")))
            settings["reference_model"] = trainer.ref_model is not None
            settings["merge_shuffled_rollouts"] = trainer.merge_shuffled_rollouts  # as the trainer resolved it
            if cuda:
                doc["memory_before_train_gib"] = torch.cuda.memory_allocated() / GIB
            trainer.train()
            decoder = getattr(trainer, "_decoder", None)
            settings["rollout_compiled"] = bool(decoder is not None and decoder.compiled)  # what the default chose
            doc["trl_log"] = [h for h in trainer.state.log_history if "loss" in h][-1:]
            snapshot("ok")
        except torch.cuda.OutOfMemoryError as e:
            doc["failed_phase"] = timer.failed_in or list(timer.active) or ["(no timed phase)"]
            timer.abort_step()
            doc["oom"] = f"{type(e).__name__}: {str(e)[:1500]}"
            log.error("CUDA OOM in %s: %s", doc["failed_phase"], str(e).splitlines()[0] if str(e) else e)
            snapshot("oom")
        except Exception as e:  # noqa: BLE001 - the JSON must come back whatever happened
            doc["failed_phase"] = timer.failed_in or list(timer.active) or ["(no timed phase)"]
            timer.abort_step()
            doc["error"] = f"{type(e).__name__}: {e}"
            doc["traceback"] = traceback.format_exc()[-6000:]
            log.exception("grpo_step failed in %s", doc["failed_phase"])
            snapshot("error")
            status = 1
    return status


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m vqinsight.bench grpo_step", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("results/bench/grpo_step.json"))
    ap.add_argument("--size", choices=("7b", "3b", "tiny"), default="7b")
    ap.add_argument("--task", choices=("comparison", "video_score"), default="comparison")
    ap.add_argument(
        "--rollout-engine", choices=("hf", "static", "batch"), default="hf", help="VideoGRPOTrainer rollouts"
    )
    ap.add_argument(
        "--rollout-compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the static engine's decode step (default: on CUDA only, as in training)",
    )
    ap.add_argument(
        "--no-merge-shuffled",
        action="store_true",
        help="static engine: decode the shuffled rollouts in their own call (default: in the ordered rollouts' batch)",
    )
    ap.add_argument("--lora", type=int, default=0, help="LoRA rank on the language model's linears (0: full)")
    ap.add_argument("--micro-batch", type=int, default=0, help="rows per forward/backward (0: the whole group)")
    ap.add_argument("--no-grad-ckpt", action="store_true", help="no activation checkpointing")
    ap.add_argument(
        "--ckpt-layers",
        type=int,
        default=None,
        help="with activation checkpointing: recompute only the first N language-model layers (default: all)",
    )
    ap.add_argument("--no-share-vision", action="store_true", help="vision tower once per row, as TRL does")
    ap.add_argument(
        "--vision-attention-loop",
        action="store_true",
        help="keep transformers' per-window sdpa loop in the vision tower (the baseline of batched window attention)",
    )
    ap.add_argument("--nframes", type=int, default=16)
    ap.add_argument("--frame-pixels", type=int, default=100352, help="pixels per frame (128*28*28: 224x448)")
    ap.add_argument("--generations", type=int, default=8, help="G ordered rollouts (= per-device batch)")
    ap.add_argument("--shuffled", type=int, default=4, help="frame-shuffled rollouts per prompt (temporal reward)")
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument(
        "--warmup-new-tokens",
        type=int,
        default=64,
        help="generation cap of the warm-up steps (0: same as --max-new-tokens)",
    )
    ap.add_argument("--optim", choices=("adamw_torch", "adamw_torch_fused", "adafactor"), default="adamw_torch")
    ap.add_argument("--beta", type=float, default=0.0, help="KL coefficient (paper 0.001 adds a reference model)")
    ap.add_argument("--steps", type=int, default=2, help="optimizer steps; the last one is reported")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--no-cudnn-sdp", action="store_true", help="disable the cuDNN SDPA backend (see FINDINGS.md)")
    ap.add_argument("--cpu", action="store_true", help="run on CPU even when CUDA is available")
    return ap


def main(argv: list[str] | None = None) -> int:
    """CLI entry: run the bench, write the JSON atomically (also on OOM / error), log a one-line summary."""
    ap = _parser()
    args = ap.parse_args(argv)
    if min(args.nframes, args.generations, args.shuffled, args.max_new_tokens, args.steps) < 1:
        ap.error("--nframes, --generations, --shuffled, --max-new-tokens and --steps must be >= 1")
    if args.nframes % TEMPORAL_PATCH:
        ap.error(f"--nframes must be a multiple of {TEMPORAL_PATCH}")
    if args.generations < 2:
        ap.error("--generations must be >= 2 (GRPO needs a group)")
    if args.micro_batch < 0 or (args.micro_batch and args.generations % args.micro_batch):
        ap.error("--micro-batch must divide --generations")
    if args.lora < 0:
        ap.error("--lora must be >= 0")
    if args.beta < 0:
        ap.error("--beta must be >= 0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    doc: dict[str, Any] = {"name": "grpo_step", "status": "starting", "oom": None, "error": None}
    doc["argv"] = list(sys.argv[1:] if argv is None else argv)
    try:
        status = run(args, doc)
    except Exception as e:  # noqa: BLE001 - a failure before training (model build, processor): JSON still written
        import torch

        oom = isinstance(e, torch.cuda.OutOfMemoryError)
        doc["status"] = "oom" if oom else "error"
        doc["oom" if oom else "error"] = f"{type(e).__name__}: {str(e)[:1500]}"
        doc["traceback"] = traceback.format_exc()[-6000:]
        doc["timestamp"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        log.exception("grpo_step failed before training")
        atomic_write_json(args.out, doc)
        status = 0 if oom else 1
    t = doc.get("timings_s", {})
    mem = doc.get("memory", {})

    def f(x: Any, fmt: str = "%.2f") -> str:
        return fmt % x if isinstance(x, int | float) else "n/a"

    log.info(
        "grpo_step %s [%s] %s: total %s s | rollout %s s (%s tok/s) | shuffled %s s | logprob %s s | update %s s"
        " | peak alloc %s GiB reserved %s GiB | %s",
        args.size,
        doc.get("gpu") or "cpu",
        doc["status"],
        f(t.get("total")),
        f(t.get("rollout")),
        f(doc.get("rollout", {}).get("ordered", {}).get("tokens_per_s"), "%.1f"),
        f(t.get("shuffled_rollout")),
        f(t.get("logprob")),
        f(t.get("update")),
        f(mem.get("max_allocated_gib"), "%.1f"),
        f(mem.get("max_reserved_gib"), "%.1f"),
        args.out,
    )
    return status


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
