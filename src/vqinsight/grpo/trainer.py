"""``VideoGRPOTrainer``: TRL's GRPO with images *and* videos in every forward, plus the temporal modeling reward.

Stock TRL 1.16 is video-blind outside generation (huggingface/trl#4144): the policy, old and reference log-prob
forwards never see ``pixel_values_videos``, so the vision tower gets no gradient. It also ignores images placed inside
the message content (it only forwards images of an ``image`` / ``images`` column). This subclass captures the
processor output of the generation call, splits it per row (one dict of tensors per row, a Python list that survives
TRL's shuffle / split of the generation batch) and feeds it to every forward, so a batch may mix an image-score row,
a two-video comparison row and a text-only row.

Temporal modeling reward (Eq. 4, T-GRPO of Video-R1 / VQ-Insight): for every prompt with a video, ``temporal_rollouts``
extra completions are sampled on a copy whose videos' frames are permuted (each video with its own permutation). They
are never trained on; they only give the shuffled accuracy p̃ of the group. Correct ordered rollouts of a group get
+α when p > μ·p̃ (``strict``; ``>=`` as in the official code otherwise). The bonus is a reward function appended by
the trainer (``rewards/temporal/mean``), so it enters the advantage like any other reward.
"""

# Pinned to trl==1.16.0 (see pyproject.toml). This module overrides or calls PRIVATE GRPOTrainer hooks whose
# signatures change between TRL releases: _tokenize_prompts, _generate_single_turn, _generate_and_score_completions,
# _calculate_rewards, _get_per_token_logps_and_entropies, compute_loss, and the attributes generation_kwargs,
# generation_config, reward_funcs, reward_func_names, reward_weights, reward_processing_classes and _metrics.
# Re-read them and rerun tests/unit/test_grpo_trainer.py (vision-tower weights must change) before moving the pin.

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather_object
from trl import GRPOTrainer

from vqinsight.grpo.batch import (
    IMAGE_FIELDS,
    MEDIA_KEY,
    VIDEO_FIELDS,
    PendingShuffled,
    TemporalRows,
    answer_token_weights,
    assign_media_keys,
    copy_runs,
    count_media,
    fold_column_images,
    has_video,
    is_row_tensor,
    left_pad_rows,
    prompt_runs,
    rekey_media,
    repeat_fields,
    shuffle_video_frames,
    split_media_per_row,
)
from vqinsight.grpo.reward_funcs import Correctness
from vqinsight.grpo.sampler import UnitRepeatSampler, order_units
from vqinsight.models.vision_attention import batch_vision_attention
from vqinsight.rewards import temporal_bonus
from vqinsight.training import CheckpointResume

logger = logging.getLogger(__name__)

#: Model-config attributes of the vision placeholder tokens whose sampling is suppressed.
VISION_TOKEN_ATTRS: tuple[str, ...] = (
    "image_token_id",
    "video_token_id",
    "vision_start_token_id",
    "vision_end_token_id",
)
VISION_TOKENS: tuple[str, ...] = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")


def _stop_input_grad_hook_leak(model: Any) -> None:
    """Make ``enable_input_require_grads`` replace its embedding hooks instead of adding more.

    With gradient checkpointing, TRL switches checkpointing off and on around every generation call, and each
    ``gradient_checkpointing_enable()`` (transformers 5.24) registers one more ``make_inputs_require_grads`` forward
    hook on the input embeddings without removing the previous one: 2 -> 3 -> 5 -> 8 hooks after a few tiny steps,
    every one of them run by every later forward, for the whole run. The growing hook dict also fails torch.compile's
    guards, so the compiled decode step would recompile on nearly every rollout call. Each
    PreTrainedModel inside ``model`` gets an instance-level ``enable_input_require_grads`` that first removes the
    hooks its previous call registered (``disable_input_require_grads``), then registers them again.
    """
    from transformers import PreTrainedModel

    for m in model.modules():
        if not isinstance(m, PreTrainedModel) or "enable_input_require_grads" in vars(m):
            continue
        enable = m.enable_input_require_grads

        def replace(m: Any = m, enable: Any = enable) -> None:
            m.disable_input_require_grads()
            enable()

        m.enable_input_require_grads = replace


def _decoder_layers(model: Any) -> list[Any]:
    """The language model's repeated blocks (``GradientCheckpointingLayer``), in forward order; the vision tower's
    blocks are not among them."""
    from transformers import PreTrainedModel
    from transformers.modeling_layers import GradientCheckpointingLayer

    for m in model.modules():
        if isinstance(m, PreTrainedModel):
            decoder = m.get_decoder()
            return [x for x in decoder.modules() if isinstance(x, GradientCheckpointingLayer)]
    raise ValueError(f"{type(model).__name__} holds no transformers PreTrainedModel")


def limit_checkpointed_layers(model: Any, n: int) -> int:
    """Recompute only the first ``n`` language-model layers under activation checkpointing; the others keep their
    activations for the backward (no second forward). Returns the number of decoder layers.

    Full checkpointing recomputes every layer's forward in the backward, about a quarter of the update's matmul
    work. Where the GPU has memory to spare, leaving some layers un-checkpointed buys that work back (the first
    layers are the ones recomputed, so the kept activations are freed before the recompute starts). Every
    ``PreTrainedModel`` inside ``model`` re-applies the limit whenever checkpointing is switched on again (TRL
    switches it off and on around each generation call). Checkpointing itself stays off until the trainer enables
    it (``gradient_checkpointing: true``)."""
    from transformers import PreTrainedModel

    layers = _decoder_layers(model)
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(layers):
        raise ValueError(f"checkpoint_layers must be an integer in [0, {len(layers)}] (decoder layers), got {n!r}")
    keep = layers[n:]

    def apply() -> None:
        for layer in keep:
            layer.gradient_checkpointing = False

    for m in model.modules():
        if not isinstance(m, PreTrainedModel) or "_set_gradient_checkpointing" in vars(m):
            continue
        original = m._set_gradient_checkpointing

        def limited(*args: Any, original: Any = original, **kwargs: Any) -> None:
            original(*args, **kwargs)
            apply()

        m._set_gradient_checkpointing = limited
    apply()
    return len(layers)


class VideoGRPOTrainer(CheckpointResume, GRPOTrainer):
    """``trl.GRPOTrainer`` (1.16.0) for Qwen2.5-VL prompts with 0-2 videos and/or images per row. Resuming loads
    every weight of the checkpoint (``vqinsight.training.CheckpointResume``).

    Extra keyword arguments (everything else goes to ``GRPOTrainer``):

    * ``temporal``: add the temporal modeling reward (reward function ``temporal``; rows without video get None).
    * ``temporal_rollouts``: shuffled-frame rollouts per prompt (default ``G // 2``, the official code).
    * ``alpha`` / ``mu``: bonus and ratio of Eq. 4 (0.3 / 0.8); ``strict``: ``>`` (paper) or ``>=`` (official code).
    * ``score_tolerance``: a score answer is correct when within this many scale units (``rewards.is_correct``).
    * ``correctness``: a ``reward_funcs.Correctness`` (the recipe's ``temporal.correct`` rule, e.g. the official
      code's gate on mean accuracy rewards); None = the tolerance rule with ``score_tolerance``.
    * ``outside_answer_weight``: weight of the policy-gradient term on completion tokens outside the
      ``<answer>…</answer>`` content (1.0, the default, is standard GRPO, as in the paper). Below 1 the sequence's
      advantage is concentrated on the tokens that carry the verdict; the KL term and the loss normaliser are left
      as they are, so with ``beta > 0`` the reasoning/format tokens are still held to the reference model.
      Completions without an answer block keep weight 1 everywhere (format failures are penalised as usual).
    * ``share_vision`` (default on): in the log-prob and loss forwards the vision tower runs once per distinct image
      / video of a forward (a group's G rows share their media), and a frozen tower's features (LoRA, or the
      reference model) are kept for the whole generation batch; the features reach the model as transformers'
      ``mm_encoder_outputs``. Gradients of a trained tower flow through the shared features.
    * ``rollout_engine``: ``"hf"`` (transformers ``generate()``, TRL's path), ``"batch"``
      (``vqinsight.batchdecode.BatchDecoder``: a prompt's copies read its KV cache from one shared slot) or
      ``"static"``
      (``vqinsight.fastdecode.StaticDecoder``: static KV cache, device-side sampling, CUDA graph on GPU; ordered and
      shuffled rollouts). It reads the live weights (LoRA adapters included), so nothing is copied after an update;
      under DeepSpeed ZeRO-3 a fresh decoder is built per call, as the gathered weights move between calls.
    * ``merge_shuffled_rollouts`` (default on; static engine with ``share_vision``): the shuffled-frame rollouts are
      decoded in the same batch as the ordered ones, one prefill and one decode loop per step instead of two. A
      decode step costs about the same at batch 8 and 12 (it reads the weights), so on the 7B this saves most of
      the shuffled rollouts' time (docs/PERFORMANCE.md). Off, or with the ``hf`` engine, they are a separate call.
    * ``rollout_compile``: ``torch.compile`` the static engine's decode step (docs/PERFORMANCE.md; one compile per
      process; never under ZeRO-3). None (default): on CUDA only.
    * ``checkpoint_layers``: with ``gradient_checkpointing``, recompute only the first N language-model layers;
      the rest keep their activations (``limit_checkpointed_layers``). None (default): every layer, as transformers
      does. Costs about (L - N) layers' activations of memory, saves their forward recompute in the backward.

    Correctness uses the row's ``task`` column and its ground-truth columns (``gt_score``, ``gt_scores``,
    ``gt_choice``). Logged each step: ``temporal/acc_ordered`` and ``temporal/acc_shuffled`` (mean over video groups),
    ``temporal/bonus_rate`` (fraction of video groups in which some rollout got α), and per task
    ``task/<task>/reward`` and ``task/<task>/rewards/<name>``.
    """

    def __init__(
        self,
        *args: Any,
        temporal: bool = False,
        temporal_rollouts: int | None = None,
        alpha: float = 0.3,
        mu: float = 0.8,
        strict: bool = True,
        score_tolerance: float = 0.5,
        correctness: Correctness | None = None,
        outside_answer_weight: float = 1.0,
        rollout_engine: str = "hf",
        share_vision: bool = True,
        batched_vision_attention: bool = True,
        rollout_compile: bool | None = None,
        merge_shuffled_rollouts: bool = True,
        checkpoint_layers: int | None = None,
        **kwargs: Any,
    ) -> None:
        for name, value in (
            ("alpha", alpha),
            ("mu", mu),
            ("score_tolerance", score_tolerance),
            ("outside_answer_weight", outside_answer_weight),
        ):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        super().__init__(*args, **kwargs)
        _stop_input_grad_hook_leak(self.model)
        if checkpoint_layers is not None:
            if not self.args.gradient_checkpointing:
                raise ValueError(
                    "checkpoint_layers needs gradient_checkpointing=True (it picks the layers that recompute)"
                )
            total = limit_checkpointed_layers(self.model, checkpoint_layers)
            logger.info("checkpointing: the first %d of %d decoder layers recompute", checkpoint_layers, total)
        if batched_vision_attention:  # the policy and TRL's reference model (built from the config's path)
            for m in (self.model, self.ref_model):
                if m is not None:
                    batch_vision_attention(m)
        if self.use_vllm:  # TRL's vLLM path passes images only (and would double-feed them to the forwards)
            raise NotImplementedError("VideoGRPOTrainer supports transformers generation only (use_vllm=False)")
        self.temporal = bool(temporal)
        self.temporal_rollouts = max(1, self.num_generations // 2) if temporal_rollouts is None else temporal_rollouts
        if self.temporal and (not isinstance(self.temporal_rollouts, int) or self.temporal_rollouts < 1):
            raise ValueError(f"temporal_rollouts must be an integer >= 1, got {self.temporal_rollouts!r}")
        self.alpha, self.mu, self.strict, self.score_tolerance = float(alpha), float(mu), bool(strict), score_tolerance
        self.correctness = correctness or Correctness("tolerance", score_tolerance=score_tolerance)
        if outside_answer_weight > 1:
            raise ValueError(f"outside_answer_weight must be in [0, 1], got {outside_answer_weight!r}")
        self.outside_answer_weight = float(outside_answer_weight)
        if rollout_engine not in ("hf", "static", "batch"):
            raise ValueError(f"rollout_engine must be 'hf', 'static' or 'batch', got {rollout_engine!r}")
        self.rollout_engine = rollout_engine
        if rollout_compile and rollout_engine != "static":
            raise ValueError("rollout_compile needs rollout_engine 'static' (it compiles the StaticDecoder's step)")
        self.rollout_compile = None if rollout_compile is None else bool(rollout_compile)
        self.share_vision = bool(share_vision)
        # the merged batch needs per-row media (share_vision) and the static engine's generate()
        self.merge_shuffled_rollouts = (
            bool(merge_shuffled_rollouts) and rollout_engine in ("static", "batch") and share_vision
        )
        self._pending_shuffled: PendingShuffled | None = None
        self._vision_cache: dict[tuple, torch.Tensor] = {}
        self._decoder: Any = None
        if rollout_engine in ("static", "batch"):
            self._check_static_engine()
        self._media_ctx: list[dict[str, Any]] | None = None  # per-row media of the forward being run
        self._capture_media = False  # set while TRL tokenizes the ordered prompts
        self._captured_media: list[dict[str, Any]] | None = None
        self._gen_media: list[dict[str, Any]] | None = None  # per-row media of the latest tokenized prompts
        self._temporal_state: TemporalRows | None = None
        config = self.model.config
        self._image_token_id = getattr(config, "image_token_id", None) or self._image_pad_token_id
        self._video_token_id = getattr(config, "video_token_id", None) or self._video_pad_token_id
        self._suppress_vision_tokens()
        if self.temporal:
            self.reward_funcs.append(self._temporal_reward)
            self.reward_func_names.append("temporal")
            self.reward_processing_classes.append(None)
            self.reward_weights = torch.cat([self.reward_weights, torch.ones(1)])

    # -- generation -----------------------------------------------------------------------------------------------
    def _get_train_sampler(self, dataset: Any = None) -> Any:
        """TRL's sampler, except that a comparison and its swapped copy (``comparison_both_orders``) are drawn into
        the same generation batch (``UnitRepeatSampler``)."""
        dataset = self.train_dataset if dataset is None else dataset
        names = getattr(dataset, "column_names", None) or []
        # the raw column, without the dataset's transform (which would build every prompt and decode its media)
        ids = dataset.with_format(None)["sample_id"] if "sample_id" in names else []
        units = order_units(ids)
        prompts = self.args.generation_batch_size // self.num_generations
        if len(units) == len(ids):
            return super()._get_train_sampler(dataset)
        if prompts % 2:
            logger.warning(
                "a generation batch of %d prompts (odd) cannot be tiled by comparisons in both orders: TRL's sampler, "
                "which draws the two orders independently",
                prompts,
            )
            return super()._get_train_sampler(dataset)
        return UnitRepeatSampler(
            units,
            mini_repeat_count=self.num_generations,
            batch_size=prompts,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
            shuffle=self.shuffle_dataset,
            seed=self.args.seed,
        )

    def vision_token_ids(self) -> list[int]:
        """Ids of the image / video / vision_start / vision_end tokens (model config, then tokenizer)."""
        ids = {getattr(self.model.config, attr, None) for attr in VISION_TOKEN_ATTRS}
        unk = self._tokenizer.unk_token_id
        for token in VISION_TOKENS:
            tid = self._tokenizer.convert_tokens_to_ids(token)
            if isinstance(tid, int) and tid != unk:
                ids.add(tid)
        return sorted(i for i in ids if isinstance(i, int))

    def _suppress_vision_tokens(self) -> None:
        """Merge the vision placeholder ids into ``suppress_tokens`` (TRL suppresses only the image token).

        A sampled ``<|video_pad|>`` makes the training forward fail ("Video features and video tokens do not match").
        Ids already suppressed (TRL's, or ``GRPOConfig.generation_kwargs["suppress_tokens"]``) are kept.
        """
        if not hasattr(self, "generation_kwargs"):  # vLLM path: no transformers generation config
            return
        current = self.generation_kwargs.get("suppress_tokens") or []
        merged = sorted({int(t) for t in current} | set(self.vision_token_ids()))
        self.generation_kwargs["suppress_tokens"] = merged
        self.generation_config.suppress_tokens = merged

    @property
    def _static_media(self) -> bool:
        """Whether rollouts read their media from ``_gen_media`` (the static engine's generate() wrapper) rather
        than from the processor fields TRL hands to ``generate()``."""
        return self.rollout_engine in ("static", "batch")

    def _tokenize_prompts(self, prompts: list) -> tuple[list, Any, dict[str, Any]]:
        """TRL's tokenization; on the ordered-prompt call, also keep the per-row media for the forwards.

        On that call the returned ``images`` is None: TRL hands it back from ``_generate`` and would otherwise build
        its own image-only forward inputs (from text whose video placeholders it does not expand). Transformers
        generation reads the media from ``fields`` only, so generation is unaffected.
        """
        runs = prompt_runs(prompts)
        counts = [count_media(p) for p in prompts]
        media = None  # per-row media of this call, for the static engine's prefill (tower once per distinct item)
        if len(runs) < len(prompts):  # process each distinct prompt's media once, then repeat it for its copies
            firsts = np.cumsum([0, *runs[:-1]]).tolist()
            distinct = [prompts[i] for i in firsts]
            ids_u, images_u, fields_u = super()._tokenize_prompts(distinct)
            prompt_ids = [ids for ids, n in zip(ids_u, runs, strict=True) for _ in range(n)]
            images = None if images_u is None else [im for im, n in zip(images_u, runs, strict=True) for _ in range(n)]
            counts_u = [counts[i] for i in firsts]
            if self.share_vision:  # keys from the distinct rows; a group's copies share the tensors and the keys
                distinct_media = split_media_per_row(fields_u, counts_u)
                assign_media_keys(distinct_media)
                media = [dict(m) for m, n in zip(distinct_media, runs, strict=True) for _ in range(n)]
            # the static engine's generate() takes the media from `media` alone: no repeated pixel tensors then
            fields = repeat_fields(fields_u, counts_u, runs, media=not (media is not None and self._static_media))
        else:
            prompt_ids, images, fields = super()._tokenize_prompts(prompts)
            if self.share_vision:
                media = split_media_per_row(fields, counts)
                assign_media_keys(media)
        self._gen_media = media
        if self._capture_media:
            self._capture_media = False
            if self._gen_media is not None:
                self._captured_media = self._gen_media
            else:
                self._captured_media = split_media_per_row(fields, counts)
            self._vision_cache = {}  # features of frozen vision towers, valid for this generation batch
            self._media_ctx = self._captured_media  # old / ref log-probs are computed inside super()
            images = None
        return prompt_ids, images, fields

    # -- static rollout engine -------------------------------------------------------------------------------------
    def _check_static_engine(self) -> None:
        """Refuse generation settings the StaticDecoder does not implement (rather than silently ignoring them)."""
        if getattr(self, "use_transformers_continuous_batching", False):
            raise ValueError("rollout_engine 'static' replaces transformers generation; turn continuous batching off")
        cfg = self.generation_config
        unsupported = {
            "top_k": (cfg.top_k, (None, 0)),
            "min_p": (cfg.min_p, (None, 0.0)),
            "repetition_penalty": (cfg.repetition_penalty, (None, 1.0)),
            "num_beams": (cfg.num_beams, (None, 1)),
        }
        bad = {k: v for k, (v, ok) in unsupported.items() if v not in ok}
        if bad:
            raise ValueError(f"rollout_engine 'static' supports temperature and top_p sampling only; got {bad}")

    def _static_decoder(self, model: Any) -> Any:
        from vqinsight.batchdecode import BatchDecoder
        from vqinsight.fastdecode import StaticDecoder

        if self.rollout_engine == "batch":  # a prompt's copies share its cache (the pool); built per call under ZeRO-3
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            if self._decoder is None or self._decoder.model is not base:
                self._decoder = BatchDecoder(base, max_batch=4096)
            return self._decoder

        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT: layers keep LoRA
        zero3 = (
            getattr(self, "is_deepspeed_enabled", False)
            and getattr(getattr(self.accelerator.state, "deepspeed_plugin", None), "zero_stage", 0) == 3
        )
        if zero3:  # parameters are gathered per call: no compiled step, no cached decoder
            return StaticDecoder(base, compile=False)
        if self._decoder is None or self._decoder.model is not base:
            self._decoder = StaticDecoder(base, compile=self.rollout_compile)
        return self._decoder

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        """TRL's transformers path, with ``generate()`` served by the StaticDecoder when rollout_engine is static."""
        if self.rollout_engine not in ("static", "batch"):
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        model = self.accelerator.unwrap_model(self.model)
        cfg = self.generation_config
        trainer = self

        def generate(input_ids=None, attention_mask=None, generation_config=None, **inputs):
            g = generation_config or cfg
            eos = g.eos_token_id if g.eos_token_id is not None else trainer.eos_token_ids
            media = trainer._gen_media
            ordered = trainer._gen_media is trainer._captured_media
            pending = trainer._pending_shuffled if ordered and media is not None else None
            n_rows = input_ids.size(0)
            all_ids, all_mask = input_ids, attention_mask
            if pending is not None:  # the shuffled-frame prompts join this batch, after the ordered rows
                all_ids, all_mask = left_pad_rows(
                    [*(r[m.bool()] for r, m in zip(input_ids, attention_mask, strict=True)),
                     *(torch.tensor(p, dtype=input_ids.dtype) for p in pending.prompt_ids)],
                    trainer._tokenizer.pad_token_id, input_ids.device,
                )  # fmt: skip
                media = [*media, *pending.media]
                carried = (*IMAGE_FIELDS, *VIDEO_FIELDS, "second_per_grid_ts", "mm_token_type_ids")
                extra = sorted(k for k, v in inputs.items() if is_row_tensor(v, input_ids) and k not in carried)
                if extra:
                    raise RuntimeError(
                        f"merge_shuffled_rollouts: the processor gave per-row generation inputs {extra} that the "
                        "merged batch cannot carry; set merge_shuffled_rollouts: false in the recipe"
                    )
            rows_ids, rows_mask, copies = all_ids, all_mask, 1
            if media is not None and len(media) == all_ids.size(0):
                # a group's copies of a prompt: prefill each distinct prompt once and copy its cache (prefix
                # sharing; the copies stay adjacent, so the sampled rows are those of the full batch)
                runs = copy_runs(all_ids, all_mask, media)
                if max(runs) > 1:
                    starts = np.cumsum([0, *runs[:-1]]).tolist()
                    keep_rows = torch.tensor(starts, device=input_ids.device)
                    rows_ids, rows_mask = all_ids[keep_rows], all_mask[keep_rows]
                    if pending is None:
                        inputs = {k: v[keep_rows] if is_row_tensor(v, input_ids) else v for k, v in inputs.items()}
                    media = [media[i] for i in starts]
                    copies = runs[0] if len(set(runs)) == 1 else runs
            if media is not None and len(media) == rows_ids.size(0) and any(media):
                # the tower once per distinct image / video; the features enter the prefill as mm_encoder_outputs
                inputs = {k: v for k, v in inputs.items() if k not in (*IMAGE_FIELDS, *VIDEO_FIELDS)}
                inputs.pop("second_per_grid_ts", None)
                inputs.pop("mm_token_type_ids", None)
                keep = trainer._gen_media is trainer._captured_media  # ordered prompts: frozen features stay cached
                with torch.no_grad():
                    inputs.update(trainer._shared_media_inputs(model, media, rows_ids, keep=keep))
            decoder = trainer._static_decoder(model)
            gen = decoder.generate_padded if trainer.rollout_engine == "batch" else decoder.generate
            new = gen(
                {"input_ids": rows_ids, "attention_mask": rows_mask, **inputs},
                int(g.max_new_tokens),
                do_sample=bool(g.do_sample),
                temperature=float(g.temperature or 1.0),
                top_p=float(g.top_p if g.top_p is not None else 1.0),
                eos_token_id=list(eos) if isinstance(eos, list | tuple) else eos,
                suppress_token_ids=list(g.suppress_tokens or []),
                num_return_sequences=copies,
            )
            if pending is not None:
                trainer._finish_merged_shuffled(pending, new[n_rows:], eos)
                new = new[:n_rows]
            return torch.cat([input_ids, new], dim=1)

        model.generate = generate  # an instance attribute, removed below: TRL's path calls unwrapped.generate()
        try:
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        finally:
            del model.generate

    def _generate_shuffled(self, prompts: list[list[dict[str, Any]]]) -> list[str]:
        """One completion text per prompt, sampled without touching TRL's completion metrics."""
        with torch.no_grad():
            prompt_ids, images, fields = self._tokenize_prompts(prompts)
            completion_ids, _ = self._generate_single_turn(prompt_ids, images, fields, 1)
        return self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)

    def _group_size(self) -> int:
        """Rollouts per prompt in the current mode."""
        return self.num_generations if self.model.training else self.num_generations_eval

    def _temporal_rollouts(self, inputs: list[dict[str, Any]]) -> TemporalRows:
        """Sample the shuffled-frame rollouts of every video prompt and score them with ``self.correctness``.

        ``inputs`` hold each prompt G times (TRL's RepeatSampler); the k-th shuffled rollout of a group is drawn by
        the group's row with within-group index k % G, so a group split over processes still gets exactly
        ``temporal_rollouts`` of them. A group's permutations come from an rng seeded by (args.seed, global step,
        global group index): reproducible, and the same on every row and process of the group.
        """
        n, group = len(inputs), self._group_size()
        offset = self.accelerator.process_index * n
        videos = [has_video(x["prompt"]) for x in inputs]
        rows: list[int] = []
        prompts: list[list[dict[str, Any]]] = []
        for i, x in enumerate(inputs):
            g = offset + i
            k = self.temporal_rollouts // group + int(g % group < self.temporal_rollouts % group)
            if not videos[i] or k == 0:
                continue
            rng = np.random.default_rng([int(self.args.seed), int(self.state.global_step), g // group])
            shuffled, _ = shuffle_video_frames(x["prompt"], rng)
            rows.extend([i] * k)
            prompts.extend([shuffled] * k)
        if self.merge_shuffled_rollouts:  # decoded with the ordered prompts (_finish_merged_shuffled scores them)
            self._pending_shuffled = self._defer_shuffled(inputs, videos, rows, prompts) if prompts else None
            return TemporalRows(videos, [0] * n, [0] * n) if not prompts else None
        needed = len(prompts)
        if self.accelerator.num_processes > 1:  # ZeRO-3 / FSDP generation is collective: all ranks must generate
            counts = self.accelerator.gather(torch.tensor([needed], device=self.accelerator.device))
            needed = int(counts.max().item())
        texts: list[str] = []
        if needed:
            texts = self._generate_shuffled(prompts or [inputs[0]["prompt"]])[: len(prompts)]
        return self._score_shuffled(inputs, videos, rows, texts)

    def _defer_shuffled(
        self, inputs: list[dict[str, Any]], videos: list[bool], rows: list[int], prompts: list[list[dict[str, Any]]]
    ) -> PendingShuffled:
        """Tokenize the shuffled prompts now; the ordered rollouts' generation call decodes them."""
        with torch.no_grad():
            prompt_ids, _, _ = self._tokenize_prompts(prompts)
        media = rekey_media(self._gen_media, "shuffled")
        return PendingShuffled(inputs, videos, rows, [list(p) for p in prompt_ids], media)

    def _finish_merged_shuffled(self, pending: PendingShuffled, new: torch.Tensor, eos: Any) -> None:
        """Score the shuffled rows of a merged generation batch (``new``: their new tokens) into the temporal state."""
        eos_ids = set(eos if isinstance(eos, list | tuple) else [eos]) | set(self.eos_token_ids)
        completions = []
        for row in new.tolist():
            end = next((i for i, t in enumerate(row) if t in eos_ids), len(row) - 1)
            completions.append(row[: end + 1])  # through the first eos, as TRL's completion mask does
        self._shuffled_completions(pending.prompt_ids, completions)
        texts = self.processing_class.batch_decode(completions, skip_special_tokens=True)
        self._temporal_state = self._score_shuffled(pending.inputs, pending.has_video, pending.rows, texts)
        self._pending_shuffled = None

    def _shuffled_completions(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> None:
        """Hook: the token ids of a merged batch's shuffled rollouts (the bench counts them)."""

    def _score_shuffled(
        self, inputs: list[dict[str, Any]], videos: list[bool], rows: list[int], texts: list[str]
    ) -> TemporalRows:
        """Each shuffled rollout's correctness value (``self.correctness``) summed onto the input row it belongs to."""
        n = len(inputs)
        correct, total = [0.0] * n, [0] * n
        if rows:
            comps = [[{"role": "assistant", "content": t}] for t in texts]
            cols = {k: [inputs[i].get(k) for i in rows] for k in inputs[0] if k not in ("prompt", "task")}
            tasks = [inputs[i].get("task") for i in rows]
            for i, value in zip(rows, self.correctness(comps, task=tasks, **cols), strict=True):
                total[i] += 1
                correct[i] += float(value)
        return TemporalRows(videos, correct, total)

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """TRL's rollout + scoring, with per-row media kept for the loss and the temporal rollouts run first."""
        inputs = [fold_column_images(x) for x in inputs]
        try:
            self._temporal_state = self._temporal_rollouts(inputs) if self.temporal else None
            self._capture_media, self._captured_media = True, None
            output = super()._generate_and_score_completions(inputs)
            media = self._captured_media
        finally:
            self._capture_media, self._captured_media = False, None
            self._media_ctx, self._temporal_state, self._pending_shuffled = None, None, None
        if media is None:  # rollout_func path: TRL never tokenized the prompts itself
            if any(count_media(x["prompt"]) != (0, 0) for x in inputs):
                raise NotImplementedError(
                    "VideoGRPOTrainer: media prompts need TRL's own generation (no rollout_func)"
                )
            media = [{} for _ in inputs]
        output[MEDIA_KEY] = media
        return output

    # -- rewards ----------------------------------------------------------------------------------------------------
    def _temporal_reward(self, prompts: list, completions: list, **columns: Any) -> list[float | None]:
        """Eq. 4 bonus per completion (None for rows without video); also logs the temporal metrics."""
        state, n = self._temporal_state, len(completions)
        if self._pending_shuffled is not None:
            raise RuntimeError(
                "the shuffled-frame rollouts were left for the ordered rollouts' generation call, which did not take "
                "them (merge_shuffled_rollouts needs the static engine's generate() and per-row media)"
            )
        if state is None or len(state.has_video) != n:
            raise RuntimeError("temporal reward called without the shuffled rollouts of this batch")
        task = columns.pop("task", None)
        ordered = self.correctness(completions, task=task, **columns)
        local = torch.tensor(
            [
                [float(o), float(v), float(c), float(t)]
                for o, v, c, t in zip(
                    ordered, state.has_video, state.shuffled_correct, state.shuffled_total, strict=True
                )
            ],
            device=self.accelerator.device,
        )
        table = self.accelerator.gather(local).cpu()  # groups may span processes
        group = self._group_size()
        if table.size(0) % group:
            raise RuntimeError(f"{table.size(0)} rollouts are not whole groups of {group}")
        rewards: list[float | None] = [None] * table.size(0)
        acc_ordered, acc_shuffled, fired = [], [], []
        for start in range(0, table.size(0), group):
            block = table[start : start + group]
            if not bool(block[:, 1].any()):
                continue
            n_correct, n_total = float(block[:, 2].sum()), int(block[:, 3].sum())
            flags = block[:, 0].tolist()
            # the shuffled rollouts enter through their mean correctness value (the table holds per-row sums)
            shuffled = [n_correct / n_total] * n_total if n_total else []
            bonus = temporal_bonus(
                flags, shuffled, self.alpha, self.mu, self.strict, threshold=self.correctness.threshold
            )
            rewards[start : start + group] = bonus
            acc_ordered.append(sum(flags) / group)
            if n_total:
                acc_shuffled.append(n_correct / n_total)
            fired.append(float(any(b > 0 for b in bonus)))
        mode = "train" if self.model.training else "eval"
        for name, values in (("acc_ordered", acc_ordered), ("acc_shuffled", acc_shuffled), ("bonus_rate", fired)):
            if values:
                self._metrics[mode][f"temporal/{name}"].append(float(np.mean(values)))
        start = self.accelerator.process_index * n
        return rewards[start : start + n]

    def _calculate_rewards(self, inputs: list, prompts: list, completions: list, completion_ids_list: list) -> Any:
        """TRL's rewards (gathered over processes), plus per-task logging of the total and of each component."""
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if inputs and "task" in inputs[0]:
            self._log_per_task(gather_object([str(x.get("task")) for x in inputs]), rewards_per_func)
        return rewards_per_func

    def _log_per_task(self, tasks: list[str], rewards_per_func: torch.Tensor) -> None:
        """``task/<task>/reward`` (weighted sum, as TRL's ``reward``) and ``task/<task>/rewards/<name>`` means."""
        if len(tasks) != rewards_per_func.size(0):
            logger.warning("per-task logging skipped: %d tasks for %d rewards", len(tasks), rewards_per_func.size(0))
            return
        weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        total = (rewards_per_func * weights).nansum(dim=1)
        total[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
        mode = "train" if self.model.training else "eval"
        for task in sorted(set(tasks)):
            mask = torch.tensor([t == task for t in tasks], device=rewards_per_func.device)
            columns = [("reward", total[mask])]
            columns += [
                (f"rewards/{name}", rewards_per_func[mask, i]) for i, name in enumerate(self.reward_func_names)
            ]
            for name, values in columns:
                if not bool(torch.isnan(values).all()):
                    self._metrics[mode][f"task/{task}/{name}"].append(torch.nanmean(values).item())

    # -- forwards ---------------------------------------------------------------------------------------------------
    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> torch.Tensor:
        """TRL's loss, with this micro-batch's per-row media available to the policy forward."""
        self._media_ctx = inputs.get(MEDIA_KEY)
        if self.outside_answer_weight != 1.0 and inputs["advantages"].dim() == 1:
            weights = answer_token_weights(
                self.processing_class, inputs["completion_ids"], inputs["completion_mask"], self.outside_answer_weight
            )
            inputs = {**inputs, "advantages": inputs["advantages"].unsqueeze(1) * weights}
        try:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            self._media_ctx = None

    def _media_inputs(self, media: Sequence[Mapping[str, Any]], input_ids: torch.Tensor) -> dict[str, Any]:
        """Model kwargs of a chunk of rows: concatenated image / video tensors and ``mm_token_type_ids``."""
        out: dict[str, Any] = {
            "mm_token_type_ids": (input_ids == self._image_token_id).long()
            + 2 * (input_ids == self._video_token_id).long()
        }
        for key in (*IMAGE_FIELDS, *VIDEO_FIELDS):
            tensors = [row[key] for row in media if key in row]
            if tensors:
                out[key] = torch.cat(tensors).to(input_ids.device)
        spg = [t for row in media for t in row.get("second_per_grid_ts", [])]
        if "video_grid_thw" in out and len(spg) == out["video_grid_thw"].size(0):
            out["second_per_grid_ts"] = torch.tensor(spg, device=input_ids.device)
        return out

    def _shared_media_inputs(
        self, model: Any, media: Sequence[Mapping[str, Any]], input_ids: torch.Tensor, keep: bool = True
    ):
        """``_media_inputs`` with precomputed features: the vision tower runs once per media key (see share_vision).

        ``keep``: read and fill the generation batch's cache of frozen-tower features. Keys are numbered per
        ``assign_media_keys`` call, so only the rows of the ordered prompts (whose keys the cache holds) may use it.
        """
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        out = self._media_inputs([{k: v for k, v in r.items() if k not in ("pixel_values", "pixel_values_videos")}
                                  for r in media], input_ids)  # fmt: skip
        base = self.accelerator.unwrap_model(model)
        base = base.get_base_model() if hasattr(base, "get_base_model") else base
        inner = base.model
        frozen = not any(p.requires_grad for p in inner.visual.parameters())
        grad = torch.is_grad_enabled() and not frozen
        outputs = {}
        for kind, (pix, grid) in (("image", IMAGE_FIELDS), ("video", VIDEO_FIELDS)):
            order: list[tuple] = []  # each row's media keys in placeholder order
            todo: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # distinct keys the tower must encode
            for row in media:
                if grid not in row:
                    continue
                offset = 0
                for key, g in zip(row[f"{kind}_keys"], row[grid], strict=True):
                    n = int(g.prod())
                    ck = (id(inner), kind, key)
                    order.append(ck)
                    if ck not in todo and not (keep and frozen and ck in self._vision_cache):
                        todo[ck] = (row[pix][offset : offset + n], g)
                    offset += n
            if not order:
                continue
            local: dict[tuple, torch.Tensor] = {}
            if todo:
                # Without gradients one tower call encodes every distinct item (windows never cross items, so the
                # features equal per-item calls exactly on CPU). A trained tower keeps one call per item: its
                # weight gradients then sum in the same order as before, and the demo's small GRPO runs are
                # sensitive to that order (one batched run of the `comp` model learned 12 instead of 19 points).
                fn = inner.get_image_features if kind == "image" else inner.get_video_features
                chunks = [list(todo.values())] if not grad else [[item] for item in todo.values()]
                encoded = []
                for chunk in chunks:
                    items = torch.cat([item for item, _ in chunk]).to(input_ids.device)
                    grids = torch.stack([g for _, g in chunk]).to(input_ids.device)
                    with self.accelerator.autocast(), torch.set_grad_enabled(grad):
                        encoded.extend(fn(items, grids, return_dict=True).pooler_output)
                for ck, f in zip(todo, encoded, strict=True):
                    local[ck] = f
                    if keep and frozen:
                        self._vision_cache[ck] = f.detach()
            feats = [local[ck] if ck in local else self._vision_cache[ck] for ck in order]
            outputs[kind] = BaseModelOutputWithPooling(pooler_output=tuple(feats))
        if outputs:
            out["mm_encoder_outputs"] = outputs
        return out

    def _get_per_token_logps_and_entropies(
        self,
        model: Any,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_to_keep: int,
        batch_size: int | None = None,
        compute_entropy: bool = False,
        compute_aux_loss: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """TRL's chunked completion log-probs, with each chunk's rows' images and videos (per-row media list)."""
        media = self._media_ctx
        if media is None:
            return super()._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                logits_to_keep,
                batch_size,
                compute_entropy,
                compute_aux_loss,
                **kwargs,
            )
        stray = sorted(k for k, v in kwargs.items() if v is not None)
        if stray or len(media) != input_ids.size(0):
            raise RuntimeError(
                f"per-row media mismatch: {len(media)} rows for {input_ids.size(0)}, TRL kwargs {stray}"
            )
        batch_size = batch_size or input_ids.size(0)
        logps, entropies, aux_losses = [], [], []
        for start in range(0, input_ids.size(0), batch_size):
            end = min(start + batch_size, input_ids.size(0))
            ids, mask = input_ids[start:end], attention_mask[start:end]
            chunk = media[start:end]
            if self.share_vision and any("video_keys" in r or "image_keys" in r for r in chunk):
                media_inputs = self._shared_media_inputs(model, chunk, ids)
            else:
                media_inputs = self._media_inputs(chunk, ids)
            model_inputs = {"input_ids": ids, "attention_mask": mask, **media_inputs}
            if compute_aux_loss:
                model_inputs["output_router_logits"] = True
            labels = ids.masked_fill(mask == 0, -100)
            labels[:, :-logits_to_keep] = -100  # only the completion tokens are scored
            with self.accelerator.autocast():
                outputs = model(**model_inputs, labels=labels, fused_lm_head=True)
            logps.append(outputs.log_probs[:, -logits_to_keep:])
            if compute_entropy:
                entropies.append(outputs.entropy[:, -logits_to_keep:])
            if compute_aux_loss:
                aux_losses.append(outputs.aux_loss)
        return (
            torch.cat(logps, dim=0),
            torch.cat(entropies, dim=0) if compute_entropy else None,
            torch.stack(aux_losses).mean() if compute_aux_loss else None,
        )
