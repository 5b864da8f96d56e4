"""The GRPO trainer's media and batch helpers: a prompt's images and videos, frame-shuffled copies for the temporal
reward, the processor output split per row and repeated per rollout, the answer span's token weights, and the
bookkeeping of rows whose media are shared (``vqinsight.grpo.trainer`` uses them; none needs the trainer itself).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from trl.data_utils import prepare_multimodal_messages

from vqinsight.answer_format import ANSWER_CLOSE, ANSWER_OPEN

#: Key of the per-row media list in TRL's generation batch (a name TRL itself never reads).
MEDIA_KEY = "vq_media"
IMAGE_FIELDS = ("pixel_values", "image_grid_thw")
VIDEO_FIELDS = ("pixel_values_videos", "video_grid_thw")


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


def fold_column_images(row: dict[str, Any]) -> dict[str, Any]:
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
        for kind, n, (pix, grid) in (("image", n_images, IMAGE_FIELDS), ("video", n_videos, VIDEO_FIELDS)):
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
    media_keys = (*IMAGE_FIELDS, *VIDEO_FIELDS, "second_per_grid_ts")
    if not media:
        fields = {k: v for k, v in fields.items() if k not in media_keys}
    per_row = split_media_per_row(fields, counts) if media else []
    rows = [m for m, n in zip(per_row, runs, strict=True) for _ in range(n)] if media else []
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if key in (*IMAGE_FIELDS, *VIDEO_FIELDS):
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
        for kind, (pix, grid) in (("image", IMAGE_FIELDS), ("video", VIDEO_FIELDS)):
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


def left_pad_rows(rows: Sequence[torch.Tensor], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of unpadded token rows, left-padded to the longest."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=rows[0].dtype, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, width - len(r) :] = r.to(device)
            mask[i, width - len(r) :] = 1
    return ids, mask


def is_row_tensor(value: Any, input_ids: torch.Tensor) -> bool:
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
