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
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather_object
from trl import GRPOTrainer
from trl.data_utils import prepare_multimodal_messages

from vqinsight.answer_format import ANSWER_CLOSE, ANSWER_OPEN
from vqinsight.grpo.reward_funcs import Correctness
from vqinsight.models.vision_attention import batch_vision_attention
from vqinsight.rewards import temporal_bonus

logger = logging.getLogger(__name__)

#: Key of the per-row media list in TRL's generation batch (a name TRL itself never reads).
MEDIA_KEY = "vq_media"
#: Model-config attributes of the vision placeholder tokens whose sampling is suppressed.
VISION_TOKEN_ATTRS: tuple[str, ...] = (
    "image_token_id",
    "video_token_id",
    "vision_start_token_id",
    "vision_end_token_id",
)
VISION_TOKENS: tuple[str, ...] = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
_IMAGE_FIELDS = ("pixel_values", "image_grid_thw")
_VIDEO_FIELDS = ("pixel_values_videos", "video_grid_thw")


# ---------------------------------------------------------------------------------------------------------------
# prompt helpers
# ---------------------------------------------------------------------------------------------------------------
def _parts(prompt: Any) -> Iterator[Mapping[str, Any]]:
    """Content parts of a conversational prompt (nothing for a plain-string prompt)."""
    if isinstance(prompt, str):
        return
    for message in prompt:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list):
            yield from (p for p in content if isinstance(p, Mapping))


def count_media(prompt: Any) -> tuple[int, int]:
    """(number of image parts, number of video parts) of a conversational prompt."""
    kinds = [p.get("type") for p in _parts(prompt)]
    return kinds.count("image"), kinds.count("video")


def has_video(prompt: Any) -> bool:
    """Whether the prompt holds at least one ``{"type": "video"}`` part."""
    return count_media(prompt)[1] > 0


def _permute(video: Any, perm: np.ndarray) -> Any:
    """Frames of ``video`` (array / tensor (T, ...) or a list of frames) in the order ``perm``."""
    if isinstance(video, np.ndarray):
        return video[perm]
    if isinstance(video, torch.Tensor):
        return video[torch.as_tensor(perm, dtype=torch.long)]
    if isinstance(video, list | tuple):
        return [video[i] for i in perm]
    raise ValueError(f"the temporal reward needs decoded frames, got a video of type {type(video).__name__}")


def _non_identity_permutation(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of ``range(n)`` that is not the identity when ``n >= 2``."""
    if n < 2:
        return np.arange(n)
    while True:
        perm = rng.permutation(n)
        if not np.array_equal(perm, np.arange(n)):
            return perm


def shuffle_video_frames(
    prompt: list[dict[str, Any]], rng: np.random.Generator
) -> tuple[list[dict], list[np.ndarray]]:
    """Copy of ``prompt`` whose videos have their frames permuted, each video with its own permutation.

    Returns (shuffled prompt, one permutation per video in prompt order). A permutation is never the identity (for
    >= 2 frames), unlike the official ``torch.randperm``, so every shuffled rollout really sees disordered frames.
    The input prompt is left untouched; non-video parts are shared with it (they are not modified).
    """
    perms: list[np.ndarray] = []
    shuffled: list[dict[str, Any]] = []
    for message in prompt:
        content = message.get("content")
        if not isinstance(content, list):
            shuffled.append(dict(message))
            continue
        parts: list[Any] = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "video":
                video = part.get("video")
                if video is None or isinstance(video, str | bytes):
                    raise ValueError("the temporal reward needs decoded frames in {'type': 'video', 'video': ...}")
                perm = _non_identity_permutation(len(video), rng)
                perms.append(perm)
                parts.append({**part, "video": _permute(video, perm)})
            else:
                parts.append(part)
        shuffled.append({**message, "content": parts})
    return shuffled, perms


def _fold_column_images(row: dict[str, Any]) -> dict[str, Any]:
    """Move an ``image`` / ``images`` column into the prompt's image parts (so TRL's image-only path stays off)."""
    if "image" not in row and "images" not in row:
        return row
    images = row.get("images") if "images" in row else ([row["image"]] if row.get("image") is not None else [])
    out = {k: v for k, v in row.items() if k not in ("image", "images")}
    out["prompt"] = prepare_multimodal_messages(row["prompt"], images=list(images or []))
    return out


def split_media_per_row(fields: Mapping[str, Any], counts: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    """Split batched processor output into one dict per row, using each row's (images, videos) count.

    Keeps ``pixel_values`` / ``image_grid_thw`` / ``pixel_values_videos`` / ``video_grid_thw`` (tensors) and
    ``second_per_grid_ts`` (list of floats); a row without media gets ``{}``. ``mm_token_type_ids`` is rebuilt from
    the token ids at forward time, so it is not kept.
    """
    grids = {key: fields.get(key) for key in ("image_grid_thw", "video_grid_thw")}
    sizes = {key: (g.prod(-1).tolist() if g is not None else []) for key, g in grids.items()}
    n_img, n_vid = sum(c[0] for c in counts), sum(c[1] for c in counts)
    if len(sizes["image_grid_thw"]) != n_img or len(sizes["video_grid_thw"]) != n_vid:
        raise ValueError(
            f"prompts hold {n_img} images / {n_vid} videos but the processor returned "
            f"{len(sizes['image_grid_thw'])} / {len(sizes['video_grid_thw'])} grids"
        )
    spg = fields.get("second_per_grid_ts")
    spg = [float(t) for t in (spg.tolist() if isinstance(spg, torch.Tensor) else (spg or []))]
    rows: list[dict[str, Any]] = []
    cursor = {"image": [0, 0], "video": [0, 0]}  # [item index, pixel row]
    for n_images, n_videos in counts:
        row: dict[str, Any] = {}
        for kind, n, (pix, grid) in (("image", n_images, _IMAGE_FIELDS), ("video", n_videos, _VIDEO_FIELDS)):
            if n == 0:
                continue
            item, pixel = cursor[kind]
            n_rows = sum(sizes[grid][item : item + n])
            row[pix] = fields[pix][pixel : pixel + n_rows]
            row[grid] = fields[grid][item : item + n]
            if kind == "video" and spg:
                row["second_per_grid_ts"] = spg[item : item + n]
            cursor[kind] = [item + n, pixel + n_rows]
        rows.append(row)
    return rows


def _same_media(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same_media(x, y) for x, y in zip(a, b, strict=True))
    if hasattr(a, "tobytes") and hasattr(b, "tobytes") and type(a) is type(b):  # PIL images
        return getattr(a, "size", None) == getattr(b, "size", None) and a.tobytes() == b.tobytes()
    return False


def same_prompt(a: Any, b: Any) -> bool:
    """Whether two conversational prompts are equal: same messages and texts, media equal element for element."""
    if a is b:
        return True
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    if not isinstance(a, list | tuple) or not isinstance(b, list | tuple) or len(a) != len(b):
        return False
    for ma, mb in zip(a, b, strict=True):
        if ma.get("role") != mb.get("role"):
            return False
        ca, cb = ma.get("content"), mb.get("content")
        if isinstance(ca, str) or isinstance(cb, str):
            if ca != cb:
                return False
            continue
        if len(ca) != len(cb):
            return False
        for pa, pb in zip(ca, cb, strict=True):
            if pa.keys() != pb.keys() or pa.get("type") != pb.get("type"):
                return False
            for k in pa:
                va, vb = pa[k], pb[k]
                same = _same_media(va, vb) if k in ("image", "video") else va == vb
                if not same:
                    return False
    return True


def prompt_runs(prompts: Sequence[Any]) -> list[int]:
    """Lengths of the runs of consecutive equal prompts (TRL's sampler puts a group's G copies next to each other)."""
    runs: list[int] = []
    for i, p in enumerate(prompts):
        if runs and same_prompt(prompts[i - 1], p):
            runs[-1] += 1
        else:
            runs.append(1)
    return runs


def repeat_fields(
    fields: Mapping[str, Any], counts: Sequence[tuple[int, int]], runs: Sequence[int], media: bool = True
) -> dict[str, Any]:
    """Processor output of the distinct prompts expanded to every row: media tensors are repeated per run, and any
    per-prompt list / tensor field (one entry per distinct prompt) is repeated alike. ``media=False`` leaves the
    image / video fields out (for a consumer that takes the media from elsewhere)."""
    media_keys = (*_IMAGE_FIELDS, *_VIDEO_FIELDS, "second_per_grid_ts")
    if not media:
        fields = {k: v for k, v in fields.items() if k not in media_keys}
    per_row = split_media_per_row(fields, counts) if media else []
    rows = [m for m, n in zip(per_row, runs, strict=True) for _ in range(n)] if media else []
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if key in (*_IMAGE_FIELDS, *_VIDEO_FIELDS):
            parts = [r[key] for r in rows if key in r]
            out[key] = torch.cat(parts) if parts else value
        elif key == "second_per_grid_ts":
            flat = [t for r in rows for t in r.get(key, [])]
            out[key] = torch.tensor(flat, dtype=value.dtype) if isinstance(value, torch.Tensor) else flat
        elif len(value) == len(runs):
            reps = [v for v, n in zip(value, runs, strict=True) for _ in range(n)]
            out[key] = torch.stack(list(reps)) if isinstance(value, torch.Tensor) else reps
        else:
            raise ValueError(f"cannot expand processor field {key!r} of {len(value)} entries to {len(runs)} prompts")
    return out


_ANSWER_OPEN = re.compile(re.escape(ANSWER_OPEN), re.IGNORECASE)
_ANSWER_CLOSE = re.compile(re.escape(ANSWER_CLOSE), re.IGNORECASE)


def answer_span_chars(text: str) -> tuple[int, int] | None:
    """Character span of the last ``<answer>`` block's content, or None without a closed answer block."""
    opens = list(_ANSWER_OPEN.finditer(text))
    if not opens:
        return None
    start = opens[-1].end()
    close = _ANSWER_CLOSE.search(text, start)
    return (start, close.start()) if close else None


def answer_token_weights(
    processing_class: Any, completion_ids: torch.Tensor, completion_mask: torch.Tensor, outside: float
) -> torch.Tensor:
    """(B, T) policy-gradient weights: 1 on tokens overlapping the answer content, ``outside`` elsewhere.

    Token character spans come from decoding each token on its own (exact for byte-level and BPE vocabularies on
    ASCII text). A row without a closed ``<answer>`` block gets 1 everywhere; padding gets 0 (it is masked anyway).
    """
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    weights = torch.ones(completion_ids.shape, dtype=torch.float32, device=completion_ids.device)
    for b, (ids, mask) in enumerate(zip(completion_ids.tolist(), completion_mask.tolist(), strict=True)):
        n = int(sum(mask))
        pieces = [tokenizer.decode([t], skip_special_tokens=False) for t in ids[:n]]
        span = answer_span_chars("".join(pieces))
        if span is None:
            continue
        row = [outside] * len(ids)
        pos = 0
        for t, piece in enumerate(pieces):
            end = pos + len(piece)
            if end > span[0] and pos < span[1]:
                row[t] = 1.0
            pos = end
        weights[b] = torch.tensor(row, dtype=torch.float32)
    return weights * completion_mask.to(weights.dtype)


def assign_media_keys(rows: list[dict[str, Any]]) -> None:
    """Give every image / video of every row a content key (``image_keys`` / ``video_keys``, in grid order).

    Items with equal grids and bit-identical pixel tensors share a key: a GRPO group repeats its prompt G times, so
    its G rows hold G copies of the same media. The vision tower then runs once per key (``share_vision``).
    """
    reps: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
    counter = 0
    for row in rows:
        for kind, (pix, grid) in (("image", _IMAGE_FIELDS), ("video", _VIDEO_FIELDS)):
            if grid not in row:
                continue
            keys, offset = [], 0
            for g in row[grid]:
                n = int(g.prod())
                item = row[pix][offset : offset + n]
                offset += n
                bucket = reps.setdefault((kind, tuple(int(x) for x in g)), [])
                key = next((k for k, rep in bucket if torch.equal(rep, item)), None)
                if key is None:
                    key, counter = counter, counter + 1
                    bucket.append((key, item))
                keys.append(key)
            row[f"{kind}_keys"] = keys


def _left_pad_rows(rows: Sequence[torch.Tensor], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of unpadded token rows, left-padded to the longest."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=rows[0].dtype, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, width - len(r) :] = r.to(device)
            mask[i, width - len(r) :] = 1
    return ids, mask


def _is_row_tensor(value: Any, input_ids: torch.Tensor) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.size(0) == input_ids.size(0)


def uniform_copies(input_ids: torch.Tensor, attention_mask: torch.Tensor, media: Sequence[Mapping[str, Any]]) -> int:
    """G when the rows come in runs of G equal prompts (same tokens, padding and media keys), every run of the same
    length G; else 1. GRPO's sampler puts a group's G copies next to each other."""
    runs = copy_runs(input_ids, attention_mask, media)
    return runs[0] if len(set(runs)) == 1 else 1


def copy_runs(input_ids: torch.Tensor, attention_mask: torch.Tensor, media: Sequence[Mapping[str, Any]]) -> list[int]:
    """Lengths of the runs of equal adjacent prompts (same tokens, padding and media keys), in row order; rows
    without media keys (but with media) never join a run."""
    n = input_ids.size(0)
    same = [
        bool(torch.equal(input_ids[i], input_ids[i - 1]) and torch.equal(attention_mask[i], attention_mask[i - 1]))
        and media[i].get("image_keys") == media[i - 1].get("image_keys")
        and media[i].get("video_keys") == media[i - 1].get("video_keys")
        and ("image_keys" in media[i] or "video_keys" in media[i] or not media[i])
        for i in range(1, n)
    ]
    runs: list[int] = [1]
    for eq in same:
        if eq:
            runs[-1] += 1
        else:
            runs.append(1)
    return runs if n else []


@dataclass
class TemporalRows:
    """Per local row: whether its prompt has a video, and its shuffled-frame rollouts (summed correctness values,
    total)."""

    has_video: list[bool]
    shuffled_correct: list[float]
    shuffled_total: list[int]


@dataclass
class PendingShuffled:
    """Frame-shuffled prompts tokenized and waiting for the ordered rollouts' generation call, which decodes them in
    the same batch (``merge_shuffled_rollouts``). ``rows``: the local input row each prompt scores."""

    inputs: list[dict[str, Any]]
    has_video: list[bool]
    rows: list[int]
    prompt_ids: list[list[int]]
    media: list[dict[str, Any]]


def rekey_media(media: Sequence[Mapping[str, Any]], tag: str) -> list[dict[str, Any]]:
    """Copies of per-row media whose content keys are ``(tag, key)``: keys are numbered per ``assign_media_keys``
    call, so rows of two tokenizer calls decoded in one batch must not share a key space."""
    out = []
    for row in media:
        row = dict(row)
        for kind in ("image", "video"):
            if f"{kind}_keys" in row:
                row[f"{kind}_keys"] = [(tag, k) for k in row[f"{kind}_keys"]]
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------------------------
# trainer
# ---------------------------------------------------------------------------------------------------------------
def order_units(sample_ids: Sequence[str]) -> list[list[int]]:
    """Dataset indices grouped so that a comparison's swapped copy (sample_id ending in ``|BA``, written right after
    its original by ``train.with_both_orders``) forms one unit with it; every other row is a unit of its own."""
    units: list[list[int]] = []
    for i, sid in enumerate(sample_ids):
        if str(sid).endswith("|BA") and units and str(sample_ids[units[-1][0]]) == str(sid)[:-3]:
            units[-1].append(i)
        else:
            units.append([i])
    return units


class UnitRepeatSampler(torch.utils.data.Sampler):
    """TRL's ``RepeatSampler`` (same yield pattern: each prompt ``mini_repeat_count`` times in a row, each chunk of
    ``batch_size`` prompts ``repeat_count`` times) that shuffles whole units instead of single rows and packs them
    so that no unit is split across chunks: both orders of a comparison are then rolled out in the same generation
    batch. With both orders a constant answer earns no reward and the A/B bias is a neutral direction of GRPO's
    objective; drawing the two orders in different steps lets that bias random-walk (docs/DEMO_LEARNING.md).
    The same seed on every process gives every process the same order, as in TRL. Incomplete last chunks are
    dropped, as in TRL."""

    def __init__(
        self,
        units: list[list[int]],
        mini_repeat_count: int,
        batch_size: int = 1,
        repeat_count: int = 1,
        shuffle: bool = True,
        seed: int | None = None,
    ) -> None:
        if any(len(u) > batch_size for u in units):
            raise ValueError(f"a unit of {max(map(len, units))} rows does not fit a batch of {batch_size} prompts")
        self.units, self.mini_repeat_count, self.batch_size = units, mini_repeat_count, batch_size
        self.repeat_count, self.shuffle = repeat_count, shuffle
        self.num_samples = sum(len(u) for u in units)
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)

    def chunks(self, generator: torch.Generator | None = None) -> list[list[int]]:
        """The next epoch's chunks (advances ``generator``, by default the sampler's own)."""
        generator = self.generator if generator is None else generator
        order = torch.randperm(len(self.units), generator=generator).tolist() if self.shuffle else None
        units = [self.units[i] for i in order] if order is not None else list(self.units)
        out: list[list[int]] = []
        chunk: list[int] = []
        # A chunk starts with the next unit in shuffled order; its free slots are then filled with the first unit of
        # the parity that keeps the rest fillable (odd free slots: a single row first), so pairs and single rows mix
        # through the epoch; what cannot fill a chunk sits out the epoch, as TRL drops an incomplete last chunk.
        while units:
            free = self.batch_size - len(chunk)
            fits = [j for j, u in enumerate(units) if len(u) <= free]
            if not fits:  # e.g. one free slot and only pairs left: this chunk's rows sit out the epoch
                chunk = []
                continue
            same = [j for j in fits if len(units[j]) % 2 == free % 2]
            j = fits[0] if not chunk else (same or fits)[0]
            chunk.extend(units.pop(j))
            if len(chunk) == self.batch_size:
                out.append(chunk)
                chunk = []
        return out

    def __iter__(self) -> Iterator[int]:
        for chunk in self.chunks():
            for _ in range(self.repeat_count):
                for index in chunk:
                    for _ in range(self.mini_repeat_count):
                        yield index

    def __len__(self) -> int:
        """Indices the next epoch yields: rows that sit out the epoch are not counted (the packing is simulated on
        a copy of the generator, so the sampler's own order is not advanced)."""
        probe = torch.Generator()
        probe.set_state(self.generator.get_state())
        return len(self.chunks(probe)) * self.batch_size * self.mini_repeat_count * self.repeat_count


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


class VideoGRPOTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` (1.16.0) for Qwen2.5-VL prompts with 0-2 videos and/or images per row.

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
                all_ids, all_mask = _left_pad_rows(
                    [*(r[m.bool()] for r, m in zip(input_ids, attention_mask, strict=True)),
                     *(torch.tensor(p, dtype=input_ids.dtype) for p in pending.prompt_ids)],
                    trainer._tokenizer.pad_token_id, input_ids.device,
                )  # fmt: skip
                media = [*media, *pending.media]
                carried = (*_IMAGE_FIELDS, *_VIDEO_FIELDS, "second_per_grid_ts", "mm_token_type_ids")
                extra = sorted(k for k, v in inputs.items() if _is_row_tensor(v, input_ids) and k not in carried)
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
                        inputs = {k: v[keep_rows] if _is_row_tensor(v, input_ids) else v for k, v in inputs.items()}
                    media = [media[i] for i in starts]
                    copies = runs[0] if len(set(runs)) == 1 else runs
            if media is not None and len(media) == rows_ids.size(0) and any(media):
                # the tower once per distinct image / video; the features enter the prefill as mm_encoder_outputs
                inputs = {k: v for k, v in inputs.items() if k not in (*_IMAGE_FIELDS, *_VIDEO_FIELDS)}
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
        inputs = [_fold_column_images(x) for x in inputs]
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
        for key in (*_IMAGE_FIELDS, *_VIDEO_FIELDS):
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
        for kind, (pix, grid) in (("image", _IMAGE_FIELDS), ("video", _VIDEO_FIELDS)):
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
