"""Judge inference: score, multi-dimension score, pairwise comparison and yes/no answers over a manifest.

    python -m vqinsight.judge --model results/demo/grpo/stage2/comp/model \\
        --manifest results/demo/manifests/monetbench.parquet --task comparison --split test \\
        --out results/demo/eval/predictions/vqinsight/monetbench.jsonl --style short <media args>

One JSON line per (row, order). Comparisons are judged in both orders, (A, B) and (B, A), so the report can give
the swap-flip rate and the margin is free of position bias.

**Margin for tie calibration** (documented choice, docs/EVALUATION.md). The judge answers
"Video A" or "Video B", which makes the pairwise margin binary and the tie-calibrated accuracy degenerate. We use
the probability mass of the two answers at the answer position: after the judge's own (greedy) reasoning, the
text up to and including ``<answer>`` is fed back and the likelihood of each answer string is read by teacher
forcing; a verdict's mass is the sum over the strings that express it ("Video A" or "A"; "Video B" or "B"), and
``p_A = mass_A / (mass_A + mass_B)``. In the (B, A) order the
candidates refer to the other video, so the per-pair margin is the mean over both orders of
``P(first video better) − P(second video better)`` in the original order, a number in [−1, 1]. ``--margin votes``
instead uses the share of K sampled judgments (temperature ``--temperature``) per order. Yes/no questions get the
same treatment with the candidates "yes"/"no". Scores are the parsed numbers; an unparsable answer is kept as
null in the file (counted, and mapped to the scale midpoint by the metrics step).

The reasoning text of every prediction is kept (``completion``): the product is a *reasoning* judge.

**Resumable output.** Lines are appended to ``<out>.partial`` and flushed+fsynced batch by batch; a restarted job
skips the keys already there (a torn last line is dropped) and the finished file is renamed to ``<out>`` at the
end, so Snakemake never sees a half-written output.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .parsing import completion_text, extract_answer, parse_choice, parse_dimensions, parse_score
from .prompts import SYSTEM_PROMPT, TASKS, build_messages

log = logging.getLogger("vqinsight.judge")

ORDERS = ("AB", "BA")
# Verdict -> the answer strings that express it. Their probabilities are summed per verdict (the strings start with
# different tokens, so the events are disjoint) and normalised over the two verdicts.
CANDIDATES: dict[str, dict[str, tuple[str, ...]]] = {
    "comparison": {"A": ("Video A", "A"), "B": ("Video B", "B")},
    "vqa": {"yes": ("yes", "Yes"), "no": ("no", "No")},
}
FORMATS = ("vqinsight", "release", "q_insight", "unifiedreward_think")
# Per-format answer strings where they differ from CANDIDATES (UnifiedReward-Think answers "Video 1 is better").
FORMAT_CANDIDATES: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "unifiedreward_think": {"comparison": {"A": ("Video 1",), "B": ("Video 2",)}},
}

# Prompts of the officially released VQ-Insight checkpoints (their demo scripts; anchors-mission.md §1.3): used to
# evaluate those checkpoints as they were trained. Their scores are on 0-100 (multi-dimension keys spatial, temporal,
# consistency); a record keeps that answer (`pred_released`) and maps it linearly onto the run's scale (`pred`,
# `scale_map`): RELEASE_SCALE -> data.score_scale.
RELEASE_SCORE = "Please rate the quality of this video. The range of quality score is between 0 and 100."
RELEASE_MULTIDIM = (
    "This is an AIGC-generated video.Rate this video from three dimensions including spatial quality, temporal "
    "quality, and text-video alignment quality. Return the result in JSON format with the following keys: "
    '"spatial", "temporal", and "consistency". Each score should be a float between 0 and 100, rounded to two '
    "decimal places."
)
RELEASE_COMPARISON = (
    "Video A and Video B are results from two AIGC-generated methods.\nExplain and justify whether Video A or Video "
    "B is better.\nYou should consider the following aspects:\n(1) Visual quality,\n(2) Temporal consistency,\n"
    "(3) Dynamic degree,\n(4) Video authenticity.\nYour final answer should be either 'Video A' or 'Video B'.\n"
    "Please provide only the single option letter (e.g., A, B, C, D, etc.) within the <answer> </answer> tags."
)
RELEASE_SCALE = (0.0, 100.0)
# Q-Insight's score prompt (bytedance/Q-Insight, SCORE_QUESTION_PROMPT), with "picture" -> "video" for videos.
Q_INSIGHT_SCORE = (
    "What is your overall rating on the quality of this {media}? The rating should be a float between 1 and 5, "
    "rounded to two decimal places, with 1 representing very poor quality and 5 representing excellent quality. "
    'Return the final answer in JSON format with the following keys: "rating": The score.'
)

# UnifiedReward-Think's answer convention (CodeGoat24/UnifiedReward: reasoning in <think>, then "Video 1 is better" or
# "Video 2 is better" in <answer>); the instruction below is our wording of its pairwise video task.
UNIFIEDREWARD_COMPARISON = (
    'You are given a text caption and two videos generated from it. Caption: "{prompt}". Compare the two videos on '
    "semantic consistency with the caption, temporal coherence and authenticity: give each a score from 1 to 10 per "
    "dimension with a short rationale inside <think> and </think>. Then, after </think>, give the final judgment "
    "inside <answer> and </answer>: either 'Video 1 is better' or 'Video 2 is better'."
)


def _verdict_probs(total: Any, verdicts: dict[str, tuple[str, ...]]) -> Any:
    """(n, len(verdicts)) probabilities from (n, strings) answer-string log-likelihoods: each verdict's strings are
    log-sum-exp'ed (their masses add), then normalised over the verdicts."""
    import torch

    per_verdict, k = [], 0
    for group in verdicts.values():
        per_verdict.append(torch.logsumexp(total[:, k : k + len(group)], dim=-1))
        k += len(group)
    return torch.softmax(torch.stack(per_verdict, dim=-1), dim=-1)


def _plain_projections(model: Any) -> bool:
    """True when every attention and MLP projection of the language model is a plain ``torch.nn.Linear``."""
    import torch

    names = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
    for layer in model.model.language_model.layers:
        mods = [getattr(layer.self_attn, n, None) for n in names[:3]]
        mods += [getattr(layer.mlp, n, None) for n in names[3:]]
        if any(type(m) is not torch.nn.Linear for m in mods):
            return False
    return True


@dataclass(frozen=True)
class Item:
    """One judgment to make: a manifest row, in a given order for comparisons."""

    key: str
    row: dict[str, Any]
    order: str | None


def swapped(row: dict[str, Any]) -> dict[str, Any]:
    """The comparison row with its two videos exchanged (and the human label with them)."""
    out = dict(row)
    out["media"] = list(reversed(row["media"]))
    out["gt_choice"] = {"A": "B", "B": "A"}.get(row.get("gt_choice"), row.get("gt_choice"))
    return out


def expand(rows: list[dict[str, Any]], orders: tuple[str, ...] = ORDERS) -> list[Item]:
    """Judgments for rows: comparisons once per order, everything else once."""
    items: list[Item] = []
    for r in rows:
        if r["task"] == "comparison":
            for o in orders:
                items.append(Item(f"{r['sample_id']}|{o}", r if o == "AB" else swapped(r), o))
        else:
            items.append(Item(r["sample_id"], r, None))
    return items


def messages(row: dict[str, Any], media: list, fmt: str, style: str, scale: tuple[float, float]) -> list[dict]:
    """The chat for one row in the given prompt format."""
    task = row["task"]
    kind = "image" if row["media_type"] == "image" else "video"
    if fmt == "vqinsight":
        return build_messages(
            task,
            media=media,
            prompt=row.get("prompt_text"),
            question=row.get("question"),
            scale=scale,
            media_type=kind,
            style=style,
        )
    system = [{"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]}]
    if fmt == "q_insight":
        if task not in ("image_score", "video_score"):
            raise ValueError(f"prompt format q_insight has no {task} prompt (score tasks only)")
        text = Q_INSIGHT_SCORE.format(media="picture" if kind == "image" else "video")
        content = [{"type": kind, kind: media[0]}, {"type": "text", "text": text}]
        return system + [{"role": "user", "content": content}]
    if fmt == "release":
        if task == "comparison":
            content = [
                {"type": "text", "text": "Video A:"},
                {"type": "video", "video": media[0]},
                {"type": "text", "text": "Video B:"},
                {"type": "video", "video": media[1]},
                {"type": "text", "text": RELEASE_COMPARISON},
            ]
        elif task in ("video_score", "multidim_score"):
            text = RELEASE_SCORE if task == "video_score" else RELEASE_MULTIDIM
            content = [{"type": "video", "video": media[0]}, {"type": "text", "text": text}]
        else:
            raise ValueError(f"prompt format release has no {task} prompt")
        return system + [{"role": "user", "content": content}]
    if fmt == "unifiedreward_think":
        if task != "comparison":
            raise ValueError(f"prompt format unifiedreward_think has no {task} prompt (comparison only)")
        text = UNIFIEDREWARD_COMPARISON.format(prompt=row.get("prompt_text") or "")
        content = [{"type": "video", "video": media[0]}, {"type": "video", "video": media[1]}]
        return [{"role": "user", "content": [*content, {"type": "text", "text": text}]}]
    raise ValueError(f"unknown prompt format {fmt!r}; valid: {', '.join(FORMATS)}")


def _rescale(x: float | None, src: tuple[float, float], dst: tuple[float, float]) -> float | None:
    if x is None:
        return None
    return dst[0] + (x - src[0]) * (dst[1] - dst[0]) / (src[1] - src[0])


def parse_prediction(task: str, completion: str, fmt: str, scale: tuple[float, float]) -> tuple[str | None, Any]:
    """(answer text, parsed prediction) of one completion; the prediction is None when unparsable, including a score
    off the scale its prompt asked for (``parsing.parse_score``)."""
    answer = extract_answer(completion_text(completion))
    if task in ("image_score", "video_score"):
        s = answer
        if fmt == "q_insight" and answer is not None:
            try:
                s = str(json.loads(answer).get("rating")) if answer.strip().startswith("{") else answer
            except (ValueError, AttributeError, RecursionError):  # RecursionError: deeply nested JSON
                s = answer
        # A number off the scale the prompt asked for is unparsed (the release's own 0-100, else the run's scale).
        pred = parse_score(s, RELEASE_SCALE if fmt == "release" else scale)
        if pred is not None and fmt == "release":
            pred = _rescale(pred, RELEASE_SCALE, scale)
        return answer, pred
    if task == "multidim_score":
        dims = parse_dimensions(answer, RELEASE_SCALE if fmt == "release" else scale)
        if dims is not None and fmt == "release":
            dims = {k: _rescale(v, RELEASE_SCALE, scale) for k, v in dims.items()}
        return answer, dims
    if fmt == "unifiedreward_think" and answer is not None:
        answer = re.sub(r"\bvideo\s*([12])\b", lambda m: "Video " + "AB"[int(m.group(1)) - 1], answer, flags=re.I)
    choice = parse_choice(answer)
    valid = ("A", "B") if task == "comparison" else ("yes", "no")
    return answer, choice if choice in valid else None


def released_prediction(task: str, completion: str) -> Any:
    """A ``release``-format prediction on the official checkpoints' own scale (0-100) with their own keys (multi-
    dimension: ``spatial``, ``temporal``, ``consistency``); None when unparsable or off that scale."""
    answer = extract_answer(completion_text(completion))
    if task in ("image_score", "video_score"):
        return parse_score(answer, RELEASE_SCALE)
    if task == "multidim_score":
        dims = parse_dimensions(answer, RELEASE_SCALE)
        return None if dims is None else {"spatial": dims["spatial"], "temporal": dims["temporal"],
                                          "consistency": dims["alignment"]}  # fmt: skip
    return None


def answer_prefix(completion: str) -> str:
    """The completion up to and including ``<answer>`` (appended if the judge never opened the tag)."""
    i = completion.find("<answer>")
    if i >= 0:
        return completion[: i + len("<answer>")]
    j = completion.find("</answer>")
    head = completion[:j] if j >= 0 else completion
    return head + "<answer>"


# ----------------------------------------------------------------------------------------------- model side
ENGINES = ("hf", "static", "vllm")
_PAD_TOKENS = {"image": "<|image_pad|>", "video": "<|video_pad|>"}
_PAD_RE = re.compile(r"<\|(image|video)_pad\|>")


@dataclass
class MediaEntry:
    """One image or video, processed once: its placeholder count, grid, time step and vision-tower features."""

    kind: str  # "image" or "video"
    n_tokens: int  # placeholder tokens the processor expands it to
    grid: Any  # (1, 3) long tensor (t, h, w)
    second_per_grid: float | None
    features: Any  # (n_tokens, hidden) tensor on the model's device


def answer_token_counts(tokenizer: Any, texts: list[str], answers: list[str]) -> list[int]:
    """Tokens of each answer string at the end of its text: tokens(text) - tokens(text without it), at least 1.
    Vision placeholders are single special tokens, so the tail tokenises the same with or without expansion."""
    counts = []
    for t, a in zip(texts, answers, strict=True):
        whole = len(tokenizer(t, add_special_tokens=False)["input_ids"])
        head = len(tokenizer(t[: len(t) - len(a)], add_special_tokens=False)["input_ids"])
        counts.append(max(1, whole - head))
    return counts


def mm_token_types(tokenizer: Any, input_ids: Any) -> Any:
    """``mm_token_type_ids`` of a token batch: 1 on image placeholders, 2 on video placeholders, 0 elsewhere."""
    image_id, video_id = (tokenizer.convert_tokens_to_ids(_PAD_TOKENS[k]) for k in ("image", "video"))
    return (input_ids == image_id).long() + 2 * (input_ids == video_id).long()


class VisionCache:
    """Processor output and vision-tower features per media item, computed once and reused (issue 7, judging).

    A comparison manifest names each video in many rows (stage 3 judges all C(N, 2) pairs of a prompt's N videos,
    in both orders): the per-pair path decodes, resizes, normalises and encodes every video 2(N−1) times. Here each
    (path, media type) is processed by the processor alone (a prompt that is just its vision block) and encoded by
    the vision tower once; prompts are then tokenised as text with the placeholders expanded to the cached counts, and
    the features are handed to the model as transformers' ``mm_encoder_outputs``. Least recently used entries are
    dropped beyond ``max_items`` (7B: ≈ 15 MB per 16-frame 448×448 video).
    """

    def __init__(self, model: Any, processor: Any, max_items: int = 64) -> None:
        from collections import OrderedDict

        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.model, self.processor, self.max_items = model, processor, int(max_items)
        self.entries: OrderedDict[tuple[str, str], MediaEntry] = OrderedDict()
        self.device = next(model.parameters()).device
        self.hits = self.misses = 0

    def get(self, key: tuple[str, str], kind: str, load) -> MediaEntry:
        """The entry of ``key`` (``load()`` gives the decoded media on a miss)."""
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
            self.hits += 1
            return entry
        import torch

        self.misses += 1
        block = f"<|vision_start|>{_PAD_TOKENS[kind]}<|vision_end|>"
        media = load()
        enc = self.processor(
            text=[block], **({"images": [media]} if kind == "image" else {"videos": [media]}), return_tensors="pt"
        )
        pad_id = self.processor.tokenizer.convert_tokens_to_ids(_PAD_TOKENS[kind])
        n_tokens = int((enc["input_ids"] == pad_id).sum())
        pix, grid = (
            ("pixel_values", "image_grid_thw") if kind == "image" else ("pixel_values_videos", "video_grid_thw")
        )
        get = self.model.model.get_image_features if kind == "image" else self.model.model.get_video_features
        with torch.no_grad():
            out = get(enc[pix].to(self.device), enc[grid].to(self.device), return_dict=True)
        features = out.pooler_output[0]
        if features.shape[0] != n_tokens:
            raise RuntimeError(f"{key[0]}: {features.shape[0]} vision features for {n_tokens} placeholder tokens")
        spg = enc.get("second_per_grid_ts") if kind == "video" else None
        spg = float(spg[0]) if spg is not None and len(spg) else None
        entry = MediaEntry(kind, n_tokens, enc[grid], spg, features)
        self.entries[key] = entry
        while len(self.entries) > self.max_items:
            self.entries.popitem(last=False)
        return entry


class Judge:
    """A loaded judge model with its processor, media loader and prompt settings."""

    def __init__(
        self,
        model,
        processor,
        loader,
        *,
        fmt: str = "vqinsight",
        style: str = "full",
        scale: tuple[float, float] = (1.0, 5.0),
        max_new_tokens: int = 256,
        engine: str = "hf",
        cache_items: int = 64,
        compile: bool | None = None,
        margin_from_cache: bool | None = None,
        vllm: Any = None,
    ) -> None:
        from .models.load import vision_token_ids

        if fmt not in FORMATS:
            raise ValueError(f"unknown prompt format {fmt!r}; valid: {', '.join(FORMATS)}")
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
        if (engine == "vllm") != (vllm is not None):
            raise ValueError("engine 'vllm' takes a vllm_engine.VLLMJudgeEngine (vllm=...); the others take none")
        self.model, self.processor, self.loader = model, processor, loader
        self.fmt, self.style, self.scale, self.max_new_tokens = fmt, style, scale, max_new_tokens
        # engine "vllm": the weights live in vLLM; ``model`` is None (the suppressed ids are the engine's)
        self.vllm = vllm
        self.suppress = sorted(vllm.bias) if vllm is not None else vision_token_ids(model)
        self.device = next(model.parameters()).device if model is not None else None
        self.engine = engine
        # engine "static": vision features once per media item (VisionCache) and fastdecode.StaticDecoder decoding
        self.vision = VisionCache(model, processor, cache_items) if engine == "static" else None
        self.decoder = None
        if engine == "static":
            from .fastdecode import StaticDecoder

            # the judge's weights never change: on CUDA fuse QKV and gate/up (4 matmuls per layer instead of 7;
            # +~8.5 GB on the 7B), unless PEFT wraps the projections (their .weight would miss the adapter)
            fuse = self.device.type == "cuda" and _plain_projections(model)
            self.decoder = StaticDecoder(model, fuse_weights=fuse, compile=compile)
        # the margin's answer strings scored from the greedy generation's own KV cache (no second prefill of prompt
        # + completion; _candidate_probs_shared): static engine; default on CUDA only, so the CPU demo's margins keep
        # their float summation order
        if margin_from_cache and engine != "static":
            raise ValueError("margin_from_cache needs engine 'static' (it reads the StaticDecoder's cache)")
        cuda = self.device is not None and self.device.type == "cuda"
        self.margin_from_cache = engine == "static" and (
            cuda if margin_from_cache is None else bool(margin_from_cache)
        )
        self.max_refeed = 32  # a row whose completion re-tokenises differently earlier than this is prefilled again
        self.reserve_tokens = 64  # free cache slots after the completion: "<answer>", the answer strings, max_refeed
        self.margin_stats = {"from_cache": 0, "prefilled": 0}
        self._last_gen: dict[str, Any] | None = None

    def _prompts(self, rows: list[dict[str, Any]], suffixes: list[str] | None = None):
        """Per row: the chat text (+ suffix) and its decoded images and videos in prompt order."""
        texts, images, videos = [], [], []
        for i, r in enumerate(rows):
            media = [self.loader(m, r["media_type"]) for m in r["media"]]
            msgs = messages(r, media, self.fmt, self.style, self.scale)
            row_images, row_videos = [], []
            for part in msgs[-1]["content"]:
                if part["type"] == "image":
                    row_images.append(part["image"])
                elif part["type"] == "video":
                    row_videos.append(part["video"])
            text = self.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            texts.append(text + (suffixes[i] if suffixes else ""))
            images.append(row_images)
            videos.append(row_videos)
        return texts, images, videos

    def _vllm_requests(self, rows: list[dict[str, Any]], suffixes: list[str] | None = None):
        texts, images, videos = self._prompts(rows, suffixes)
        reqs = []
        for text, im, vid in zip(texts, images, videos, strict=True):
            if im and vid:
                raise ValueError("a row with both images and videos is not supported by the vllm engine")
            reqs.append(self.vllm.request(text, im or vid, "image" if im else "video"))
        return reqs, texts

    def _encode(self, rows: list[dict[str, Any]], suffixes: list[str] | None = None):
        if self.vision is not None:
            return self._encode_cached(rows, suffixes)
        texts, row_images, row_videos = self._prompts(rows, suffixes)
        images = [x for row in row_images for x in row]
        videos = [x for row in row_videos for x in row]
        enc = self.processor(
            text=texts, images=images or None, videos=videos or None, padding=True, return_tensors="pt"
        )
        return enc.to(self.device), texts

    def _encode_cached(self, rows: list[dict[str, Any]], suffixes: list[str] | None = None):
        """Model inputs like ``_encode``'s, from the VisionCache: text tokenised alone, features precomputed."""
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        texts: list[str] = []
        order: list[MediaEntry] = []  # media in prompt order over the batch
        for i, r in enumerate(rows):
            kind = "image" if r["media_type"] == "image" else "video"
            entries = [
                self.vision.get((m, r["media_type"]), kind, lambda m=m, r=r: self.loader(m, r["media_type"]))
                for m in r["media"]
            ]
            msgs = messages(r, list(r["media"]), self.fmt, self.style, self.scale)
            text = self.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            pending = iter(entries)

            def expand_pad(match: re.Match, pending=pending, row=r) -> str:
                entry = next(pending, None)
                if entry is None or entry.kind != match.group(1):
                    raise ValueError(f"{row.get('sample_id')}: prompt placeholders do not match the row's media")
                order.append(entry)
                return _PAD_TOKENS[entry.kind] * entry.n_tokens

            texts.append(_PAD_RE.sub(expand_pad, text) + (suffixes[i] if suffixes else ""))
        enc = dict(self.processor.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False))
        enc["mm_token_type_ids"] = mm_token_types(self.processor.tokenizer, enc["input_ids"])
        outputs = {}
        for kind, grid_key in (("image", "image_grid_thw"), ("video", "video_grid_thw")):
            items = [e for e in order if e.kind == kind]
            if not items:
                continue
            enc[grid_key] = torch.cat([e.grid for e in items])
            outputs[kind] = BaseModelOutputWithPooling(pooler_output=tuple(e.features for e in items))
            if kind == "video" and all(e.second_per_grid is not None for e in items):
                enc["second_per_grid_ts"] = torch.tensor([e.second_per_grid for e in items])
        enc = {k: v.to(self.device) for k, v in enc.items()}
        if outputs:
            enc["mm_encoder_outputs"] = outputs
        return enc, texts

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.processor.tokenizer.eos_token_id
        return [int(t) for t in (eos if isinstance(eos, list | tuple) else [eos])] if eos is not None else []

    def generate(self, rows: list[dict[str, Any]], *, sample: bool = False, k: int = 1, temperature: float = 1.0):
        """Completions (k per row when sampling) for rows, decoded without special tokens."""
        import torch

        if self.vllm is not None:
            reqs, _ = self._vllm_requests(rows)
            out = self.vllm.generate(reqs, sample=sample, k=k, temperature=temperature)
            return out if sample else [o[0] for o in out]
        enc, _ = self._encode(rows)
        self._last_gen = None
        if self.decoder is not None:
            new = self.decoder.generate(
                enc,
                self.max_new_tokens,
                do_sample=sample,
                temperature=temperature,
                eos_token_id=self._eos_ids() or None,
                suppress_token_ids=self.suppress,
                num_return_sequences=k if sample else 1,
                reserve_tokens=0 if sample or not self.margin_from_cache else self.reserve_tokens,
            )
            texts = self.processor.batch_decode(new, skip_special_tokens=True)
            if not sample:  # what _candidate_probs_shared needs to score from this generation's cache
                self._last_gen = {"rows": rows, "ids": enc["input_ids"].cpu(), "am": enc["attention_mask"].cpu(),
                                  "new": new.cpu()}  # fmt: skip
            return [texts[i * k : (i + 1) * k] for i in range(len(rows))] if sample else texts
        kw: dict[str, Any] = {"do_sample": sample, "max_new_tokens": self.max_new_tokens}
        if sample:
            kw.update(temperature=temperature, num_return_sequences=k, top_p=1.0, top_k=0)
        with torch.no_grad():
            seq = self.model.generate(**enc, suppress_tokens=self.suppress, **kw)
        texts = self.processor.batch_decode(seq[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return [texts[i * k : (i + 1) * k] for i in range(len(rows))] if sample else texts

    def candidate_probs(self, rows: list[dict[str, Any]], prefixes: list[str], verdicts: dict[str, tuple[str, ...]]):
        """Probabilities (n, len(verdicts)) of each verdict's answer strings after each row's prefix, normalised."""
        import torch

        if self.decoder is not None:
            return self._candidate_probs_shared(rows, prefixes, verdicts)
        if self.vllm is not None:
            return self._candidate_probs_vllm(rows, prefixes, verdicts)

        tok = self.processor.tokenizer
        strings = [s for group in verdicts.values() for s in group]
        n, c = len(rows), len(strings)
        flat_rows = [r for r in rows for _ in strings]
        enc, texts = self._encode(flat_rows, [p + s for p in prefixes for s in strings])
        lengths = answer_token_counts(tok, texts, strings * n)
        with torch.no_grad():
            logits = self.model(**enc).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        ids = enc["input_ids"][:, 1:]
        tok_lp = logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)  # (N, L-1): log p of token t+1 at position t
        total = torch.stack([tok_lp[i, -lengths[i] :].sum() for i in range(n * c)]).view(n, c)
        return _verdict_probs(total, verdicts).cpu().numpy()

    def _candidate_probs_vllm(
        self, rows: list[dict[str, Any]], prefixes: list[str], verdicts: dict[str, tuple[str, ...]]
    ):
        """``candidate_probs`` from vLLM's prompt log-probabilities: one request per (row, answer string)."""
        import torch

        strings = [s for group in verdicts.values() for s in group]
        n, c = len(rows), len(strings)
        reqs, texts = self._vllm_requests(
            [r for r in rows for _ in strings], [p + s for p in prefixes for s in strings]
        )
        counts = answer_token_counts(self.processor.tokenizer, texts, strings * n)
        total = torch.tensor(self.vllm.tail_logprobs(reqs, counts), dtype=torch.float64).view(n, c)
        return _verdict_probs(total, verdicts).float().cpu().numpy()

    def _candidate_probs_shared(
        self, rows: list[dict[str, Any]], prefixes: list[str], verdicts: dict[str, tuple[str, ...]]
    ):
        """``candidate_probs`` with the prompt prefilled once per row (StaticDecoder.score), not once per string.

        The token sequences are the per-string path's (each text tokenised whole); the rows' strings share the
        longest common token prefix, which is prefilled once, and each string's remaining tokens are teacher-forced
        from the cache. Scored tokens are the same as in ``candidate_probs``."""

        tok = self.processor.tokenizer
        strings = [s for group in verdicts.values() for s in group]
        n, c = len(rows), len(strings)
        tails = [p + s for p in prefixes for s in strings]
        full, _ = self._encode([r for r in rows for _ in strings], tails)
        ids, am = full["input_ids"].cpu(), full["attention_mask"].cpu().bool()
        seqs = [ids[i][am[i]].tolist() for i in range(n * c)]
        lengths = answer_token_counts(tok, tails, strings * n)
        if not self.margin_from_cache:
            total = self._scores_by_prefill(rows, prefixes, strings, seqs, lengths)
            return _verdict_probs(total, verdicts).numpy()
        total, rest = self._scores_from_generation(rows, seqs, lengths, c)
        self.margin_stats["from_cache"] += n - len(rest)
        self.margin_stats["prefilled"] += len(rest)
        if rest:
            total[rest] = self._scores_by_prefill(
                [rows[i] for i in rest],
                [prefixes[i] for i in rest],
                strings,
                [seqs[i * c + j] for i in rest for j in range(c)],
                [lengths[i * c + j] for i in rest for j in range(c)],
            )
        return _verdict_probs(total, verdicts).numpy()

    def _scores_from_generation(self, rows: list[dict[str, Any]], seqs: list[list[int]], lengths: list[int], c: int):
        """(total (n, c) float32 on the CPU, indices of the rows left to ``_scores_by_prefill``).

        A row is scored from the last greedy generation's cache when that generation was of these same rows, the
        scored text's tokens start with the row's prompt, and they match the generated tokens up to at most
        ``max_refeed`` tokens before the answer string (the rest is teacher-forced from the cache)."""
        import torch

        n = len(rows)
        total = torch.zeros(n, c, dtype=torch.float32)
        g, self._last_gen = self._last_gen, None
        if g is None or g["rows"] is not rows or self.decoder.room_after_generate() < 0:
            return total, list(range(n))
        eos = set(self._eos_ids())
        kept, conts, scored, rest, use = [], [], [], [], []
        for r in range(n):
            prompt = g["ids"][r][g["am"][r].bool()].tolist()
            new = g["new"][r].tolist()
            cut = next((i for i, t in enumerate(new) if t in eos), len(new))
            new = new[:cut]
            group, counts = seqs[r * c : (r + 1) * c], lengths[r * c : (r + 1) * c]
            m = min(len(new), *(len(q) - len(prompt) - k for q, k in zip(group, counts, strict=True)))
            ok = m >= 0 and all(q[: len(prompt)] == prompt for q in group)
            if ok:
                for q in group:
                    same = 0
                    while same < m and q[len(prompt) + same] == new[same]:
                        same += 1
                    m = same
                ok = max(len(q) - len(prompt) - m for q in group) <= self.max_refeed + max(counts)
            if not ok:
                rest.append(r)
                kept.append(0)
                conts.append([[0]] * c)
                scored.append([1] * c)
                continue
            use.append(r)
            kept.append(m)
            conts.append([q[len(prompt) + m :] for q in group])
            scored.append(counts)
        if not use:
            return total, rest
        longest = max(len(t) for row in conts for t in row)
        if longest + 1 > self.decoder.room_after_generate():
            return total, list(range(n))
        out = self.decoder.score_after_generate(kept, conts, scored).float().cpu()
        total[use] = out[use]
        return total, rest

    def _scores_by_prefill(
        self, rows: list[dict[str, Any]], prefixes: list[str], strings: list[str], seqs: list[list[int]],
        lengths: list[int],
    ):  # fmt: skip
        """Summed log-likelihoods (n, c), float32 on the CPU, of the answer strings: the prompt + prefix prefilled
        once per row."""
        import torch

        tok = self.processor.tokenizer
        n, c = len(rows), len(strings)
        commons, conts, scored = [], [], []
        for r in range(n):
            group, counts = seqs[r * c : (r + 1) * c], lengths[r * c : (r + 1) * c]
            cp = min(len(g) - k for g, k in zip(group, counts, strict=True))
            for g in group[1:]:
                same = 0
                while same < min(cp, len(g)) and g[same] == group[0][same]:
                    same += 1
                cp = same
            cp = max(cp, 1)
            commons.append(group[0][:cp])
            conts.append([g[cp:] for g in group])
            scored.append(counts)
        width = max(len(x) for x in commons)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        input_ids = torch.full((n, width), pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for r, x in enumerate(commons):
            input_ids[r, width - len(x) :] = torch.tensor(x)
            mask[r, width - len(x) :] = 1
        base, _ = self._encode(rows, prefixes)  # the rows' media (grids, features) in prompt order
        inputs = {k: v for k, v in base.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
        inputs["input_ids"], inputs["attention_mask"] = input_ids.to(self.device), mask.to(self.device)
        inputs["mm_token_type_ids"] = mm_token_types(tok, input_ids).to(self.device)
        return self.decoder.score(inputs, conts, scored).float().cpu()

    def judge(self, items: list[Item], *, margin: str = "prob", votes_k: int = 8, temperature: float = 1.0):
        """Prediction records for a batch of items (all of one task)."""
        rows = [it.row for it in items]
        task = rows[0]["task"]
        completions = self.generate(rows)
        records = []
        for it, comp in zip(items, completions, strict=True):
            answer, pred = parse_prediction(task, comp, self.fmt, self.scale)
            records.append(
                {
                    "key": it.key,
                    "sample_id": it.row["sample_id"],
                    "task": task,
                    "order": it.order,
                    "completion": comp,
                    "answer": answer,
                    "pred": pred,
                    "gt": _gt(it.row),
                }
            )
            if self.fmt == "release" and task in ("video_score", "multidim_score"):
                # the official checkpoints' own 0-100 answer, and the linear map that gave `pred`
                records[-1]["pred_released"] = released_prediction(task, comp)
                records[-1]["scale_map"] = {"from": list(RELEASE_SCALE), "to": list(self.scale)}
        if task in CANDIDATES:
            verdicts = FORMAT_CANDIDATES.get(self.fmt, {}).get(task, CANDIDATES[task])
            probs = self.candidate_probs(rows, [answer_prefix(c) for c in completions], verdicts)
            for rec, p in zip(records, probs, strict=True):
                rec["p"] = {v: float(x) for v, x in zip(verdicts, p, strict=True)}
            if margin == "votes":
                sampled = self.generate(rows, sample=True, k=votes_k, temperature=temperature)
                for rec, outs in zip(records, sampled, strict=True):
                    choices = [parse_prediction(task, o, self.fmt, self.scale)[1] for o in outs]
                    first = "A" if task == "comparison" else "yes"
                    rec["votes"] = {
                        "k": len(outs),
                        "first": sum(c == first for c in choices),
                        "valid": sum(c is not None for c in choices),
                    }
        return records


def _gt(row: dict[str, Any]) -> Any:
    task = row["task"]
    if task in ("image_score", "video_score"):
        return row.get("gt_score")
    if task == "multidim_score":
        return row.get("gt_scores")
    return row.get("gt_choice")


# ----------------------------------------------------------------------------------------------- resumable file


def read_done(partial: Path) -> set[str]:
    """Keys already written to a partial predictions file; a torn (unparsable) last line is cut off."""
    if not partial.exists():
        return set()
    raw = partial.read_bytes()
    lines = raw.split(b"\n")
    done, good = set(), 0
    for i, line in enumerate(lines):
        if not line.strip():
            good += len(line) + 1
            continue
        try:
            done.add(json.loads(line)["key"])
        except (ValueError, KeyError) as e:
            if i < len(lines) - 1 and any(x.strip() for x in lines[i + 1 :]):
                raise ValueError(
                    f"{partial}: line {i + 1} is not a prediction record; delete the file to restart"
                ) from e
            log.warning("%s: dropping a torn last line (%d bytes) from an interrupted run", partial, len(line))
            break
        good += len(line) + 1
    if good < len(raw):
        with open(partial, "r+b") as f:
            f.truncate(min(good, len(raw)))
    return done


def append_records(partial: Path, records: list[dict[str, Any]]) -> None:
    with open(partial, "a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def load_predictions(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a predictions file (JSON lines), with the file and line named on a malformed line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError as e:
                    raise ValueError(f"{path}: line {i}: not valid JSON ({e})") from e
    return out


def open_judge(
    model_dir: str,
    spec: Any,
    *,
    fmt: str = "vqinsight",
    style: str = "full",
    scale: tuple[float, float] = (1.0, 5.0),
    max_new_tokens: int = 256,
    engine: str = "static",
    cache_items: int = 64,
    compile: bool | None = None,
    margin_from_cache: bool | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    vllm: tuple[Any, Any, Any] | None = None,
) -> Judge:
    """A ready ``Judge`` for a model directory (or hub id) and a ``grpo.data.MediaSpec``: weights on the GPU in
    bfloat16 when there is one, else float32 on the CPU; the processor's pixel budgets are the spec's. This is the
    one loader behind ``python -m vqinsight.judge`` (the Snakemake rules), ``vqinsight judge`` and ``vqinsight
    serve``. ``vllm``: (None, processor, VLLMJudgeEngine) from ``_vllm_engine`` for engine "vllm"."""
    import torch

    from .grpo.data import MediaLoader
    from .models.load import load_model_and_processor

    if vllm is not None:
        model, processor, engine_obj = vllm
    else:
        engine_obj = None
        cuda = torch.cuda.is_available()
        hi = spec.image_max_pixels or spec.max_pixels
        model, processor = load_model_and_processor(
            model_dir,
            trust_remote_code=trust_remote_code,
            dtype=dtype if dtype != "auto" else ("bfloat16" if cuda else "float32"),
            device_map="cuda" if cuda else None,
            image_pixels=(spec.min_pixels, hi),
            video_pixels=(spec.min_pixels, spec.max_pixels),
        )
        model.eval()
    return Judge(
        model,
        processor,
        MediaLoader(spec),
        fmt=fmt,
        style=style,
        scale=scale,
        max_new_tokens=max_new_tokens,
        engine=engine,
        cache_items=cache_items,
        compile=compile,
        margin_from_cache=margin_from_cache,
        vllm=engine_obj,
    )


# ----------------------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from .grpo.common import add_media_args

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="judge model: hub id or local directory")
    ap.add_argument("--manifest", required=True, help="dataset manifest (parquet)")
    ap.add_argument("--task", required=True, choices=TASKS)
    ap.add_argument("--split", default="test", help="manifest split to judge")
    ap.add_argument("--out", required=True, type=Path, help="predictions (JSON lines)")
    ap.add_argument("--format", default="vqinsight", choices=FORMATS, help="prompt format of the judge")
    ap.add_argument("--style", default="full", choices=("full", "short"), help="vqinsight prompt style")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument(
        "--engine",
        choices=ENGINES,
        default="static",
        help="static: vision features once per media item + fastdecode.StaticDecoder (default); hf: per-row "
        "processor + transformers generate(); vllm: vLLM (optional, not installed by the project; "
        "vqinsight/vllm_engine.py)",
    )
    ap.add_argument(
        "--vllm-args",
        default=None,
        help="engine vllm: extra vllm.LLM keyword arguments as JSON, e.g. '{\"tensor_parallel_size\": 2}'",
    )
    ap.add_argument("--vision-cache", type=int, default=64, help="media items kept by the static engine's cache")
    ap.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the static engine's decode step (default: on CUDA only; ~40-55 s once on the 7B; "
        "docs/PERFORMANCE.md)",
    )
    ap.add_argument(
        "--margin-from-cache",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="engine static: score the margin's answer strings from the greedy generation's KV cache instead of "
        "prefilling prompt + completion again (default: on CUDA only; docs/PERFORMANCE.md)",
    )
    ap.add_argument("--margin", choices=("prob", "votes"), default="prob", help="comparison margin (module doc)")
    ap.add_argument("--votes", type=int, default=8, help="K sampled judgments per order for --margin votes")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--limit", type=int, default=None, help="judge only the first N rows (seeded order)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    ap.add_argument("--trust-remote-code", action="store_true")
    add_media_args(ap)
    return ap.parse_args(argv)


def _vllm_engine(a: argparse.Namespace, rows: list[dict[str, Any]]):
    """(processor, VLLMJudgeEngine) for ``--engine vllm``: the weights are vLLM's, the prompts the project's."""
    from types import SimpleNamespace

    from transformers import AutoConfig

    from .grpo.common import processor_pixels
    from .models.load import load_processor, vision_token_ids
    from .vllm_engine import VLLMJudgeEngine

    pixels = processor_pixels(a)
    processor = load_processor(a.model, trust_remote_code=a.trust_remote_code, **pixels)
    config = AutoConfig.from_pretrained(a.model, trust_remote_code=a.trust_remote_code)
    images_only = all(r["media_type"] == "image" for r in rows)
    lo, hi = pixels["image_pixels" if images_only else "video_pixels"]
    try:
        extra = json.loads(a.vllm_args) if a.vllm_args else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"--vllm-args must be a JSON object of vllm.LLM keyword arguments: {e}") from e
    if not isinstance(extra, dict):
        raise ValueError(f"--vllm-args must be a JSON object, got {a.vllm_args!r}")
    engine = VLLMJudgeEngine(
        a.model,
        max_new_tokens=a.max_new_tokens,
        suppress_token_ids=vision_token_ids(SimpleNamespace(config=config)),
        seed=a.seed,
        mm_processor_kwargs={"min_pixels": lo, "max_pixels": hi},
        llm_kwargs=extra,
    )
    return processor, engine


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not Path(a.manifest).is_file():
        log.error("%s: data manifest not found (build it first: snakemake %s)", a.manifest, a.manifest)
        return 2
    import torch

    from .grpo.common import media_spec, seed_everything
    from .grpo.data import select_rows, to_records
    from .progress import progress
    from .provenance import write_meta

    if a.threads:
        torch.set_num_threads(a.threads)
    seed_everything(a.seed)
    scale = (a.scale[0], a.scale[1])
    try:
        df = select_rows([a.manifest], [a.task], a.split, limit=a.limit, seed=a.seed, drop_ties=False)
    except ValueError as e:
        log.error("%s", e)
        return 2
    rows = sorted(to_records(df), key=lambda r: r["sample_id"])
    items = expand(rows)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    partial = a.out.with_name(a.out.name + ".partial")
    done = read_done(partial)
    todo = [it for it in items if it.key not in done]
    log.info("%d judgments (%d rows), %d already done in %s", len(items), len(rows), len(done), partial)
    if todo and a.engine == "vllm":
        try:
            model, processor, engine = None, *_vllm_engine(a, rows)
        except (FileNotFoundError, OSError, RuntimeError, ValueError) as e:
            log.error("%s", e)
            return 2
    elif todo:
        engine = None
    if todo:
        try:
            judge = open_judge(
                a.model,
                media_spec(a),
                fmt=a.format,
                style=a.style,
                scale=scale,
                max_new_tokens=a.max_new_tokens,
                engine=a.engine,
                cache_items=a.vision_cache,
                compile=a.compile,
                margin_from_cache=a.margin_from_cache,
                dtype=a.dtype,
                trust_remote_code=a.trust_remote_code,
                vllm=(model, processor, engine) if engine is not None else None,
            )
        except (FileNotFoundError, OSError) as e:
            log.error("%s", e)
            return 2
        with progress(total=len(items), initial=len(done), desc=f"judge {a.out.stem}", unit="judgment") as bar:
            for s in range(0, len(todo), a.batch_size):
                batch = todo[s : s + a.batch_size]
                append_records(
                    partial, judge.judge(batch, margin=a.margin, votes_k=a.votes, temperature=a.temperature)
                )
                bar.update(len(batch))
        if judge.margin_from_cache:
            log.info("margins: %s (rows scored from the generation's cache / prefilled again)", judge.margin_stats)
    partial.touch()
    write_meta(
        a.out.with_name(a.out.name + ".meta.json"),
        {k: str(v) for k, v in vars(a).items()},
        n_rows=len(rows),
        n_judgments=len(items),
        resumed_with=len(done),
    )
    os.replace(partial, a.out)
    log.info("wrote %s (%d judgments)", a.out, len(items))
    return 0


if __name__ == "__main__":
    sys.exit(main())
