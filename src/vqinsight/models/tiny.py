"""A tiny random Qwen2.5-VL (tokenizer, processor, model) built fully offline, for the demo and the tests.

The tokenizer is a byte-level alphabet vocabulary (no merges) with the Qwen special tokens. The reasoning tags
`<think> </think> <answer> </answer>` are added as single NON-special tokens, so `skip_special_tokens=True` does
not strip them from decoded completions. The chat template is Qwen2-VL style but renders a system message only
when the conversation has one (no default system prompt).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import pre_tokenizers
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from vqinsight.answer_format import TAGS
from vqinsight.provenance import write_meta

log = logging.getLogger(__name__)

PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2-VL style; every message is rendered as given, so a system turn appears only when the caller supplies one.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
DEFAULT_IMAGE_PIXELS = (3136, 3136)  # a 56x56 image -> 4x4 patches -> 4 visual tokens
DEFAULT_VIDEO_PIXELS = (784, 4704)  # a 56x84 frame stays 56x84 -> 4x6 patches -> 6 tokens per 2 frames


def build_tokenizer() -> Qwen2Tokenizer:
    """Byte-level alphabet tokenizer with the Qwen special tokens, the reasoning tags and the chat template."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token=None,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="left",  # an init kwarg, so it is saved to tokenizer_config.json and survives reloading
    )
    tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    tok.add_tokens([PAD_TOKEN], special_tokens=True)
    tok.add_tokens(list(TAGS), special_tokens=False)  # single tokens that skip_special_tokens keeps
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def _size(min_pixels: int, max_pixels: int) -> dict[str, int]:
    if not 0 < min_pixels <= max_pixels:
        raise ValueError(f"need 0 < min_pixels <= max_pixels, got ({min_pixels}, {max_pixels})")
    return {"shortest_edge": int(min_pixels), "longest_edge": int(max_pixels)}


def build_processor(
    tokenizer: Qwen2Tokenizer,
    *,
    image_min_pixels: int = DEFAULT_IMAGE_PIXELS[0],
    image_max_pixels: int = DEFAULT_IMAGE_PIXELS[1],
    video_min_pixels: int = DEFAULT_VIDEO_PIXELS[0],
    video_max_pixels: int = DEFAULT_VIDEO_PIXELS[1],
) -> Qwen2_5_VLProcessor:
    """Qwen2.5-VL processor whose pixel bounds keep visual token counts tiny; video frames are used as passed."""
    image_processor = Qwen2VLImageProcessor(
        size=_size(image_min_pixels, image_max_pixels),
        patch_size=PATCH_SIZE,
        merge_size=MERGE_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
    )
    video_processor = Qwen2VLVideoProcessor(
        size=_size(video_min_pixels, video_max_pixels),
        patch_size=PATCH_SIZE,
        merge_size=MERGE_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
        do_sample_frames=False,
        cap_pixels_per_frame=True,
    )
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (temporal, height, width); the sections must sum to head_dim/2."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    half = head_dim // 2
    third = half // 3
    return [half - 2 * third, third, third]


def build_model(
    tokenizer: Qwen2Tokenizer,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    vis_hidden: int = 32,
    vis_depth: int = 2,
    seed: int = 0,
) -> Qwen2_5_VLForConditionalGeneration:
    """A randomly initialised Qwen2.5-VL sized by the arguments; deterministic given `seed`."""
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    if vis_hidden % 2:
        raise ValueError(f"vis_hidden must be even (2 vision heads), got {vis_hidden}")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (PAD_TOKEN, *SPECIAL_TOKENS)}
    head_dim = hidden // heads
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": max(1, heads // 2),
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "mrope_section": _mrope_section(head_dim)},
            "bos_token_id": ids[PAD_TOKEN],
            "eos_token_id": ids[EOS_TOKEN],
            "pad_token_id": ids[PAD_TOKEN],
        },
        vision_config={
            "depth": vis_depth,
            "hidden_size": vis_hidden,
            "intermediate_size": 2 * vis_hidden,
            "num_heads": 2,
            "out_hidden_size": hidden,
            "patch_size": PATCH_SIZE,
            "spatial_merge_size": MERGE_SIZE,
            "temporal_patch_size": TEMPORAL_PATCH_SIZE,
            "window_size": 56,
            "fullatt_block_indexes": [vis_depth - 1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = ids[PAD_TOKEN]
    model.generation_config.eos_token_id = ids[EOS_TOKEN]
    model.generation_config.bos_token_id = ids[PAD_TOKEN]
    return model


def build_tiny(
    out_dir: str | Path,
    *,
    seed: int = 0,
    image_pixels: Sequence[int] = DEFAULT_IMAGE_PIXELS,
    video_pixels: Sequence[int] = DEFAULT_VIDEO_PIXELS,
    **model_kw: Any,
) -> Path:
    """Build tokenizer, processor and model and save them (safetensors) into `out_dir` atomically.

    Everything is written into `<out_dir>.tmp` first (a stale one is removed), then renamed over `out_dir`, so a
    killed build never leaves a half-written model directory. `out_dir/meta.json` records the build arguments.
    """
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        log.warning("removing stale temporary build directory %s", tmp)
        shutil.rmtree(tmp)
    t0 = time.perf_counter()
    tokenizer = build_tokenizer()
    processor = build_processor(
        tokenizer,
        image_min_pixels=image_pixels[0],
        image_max_pixels=image_pixels[1],
        video_min_pixels=video_pixels[0],
        video_max_pixels=video_pixels[1],
    )
    model = build_model(tokenizer, seed=seed, **model_kw)
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        config = {
            "builder": "vqinsight.models.tiny.build_tiny",
            "seed": seed,
            "image_pixels": list(image_pixels),
            "video_pixels": list(video_pixels),
            "model": model_kw,
            "n_params": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(tokenizer),
        }
        write_meta(tmp / "meta.json", config)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "built tiny Qwen2.5-VL (%d params, seed %d) into %s in %.2f s",
        config["n_params"],
        seed,
        out_dir,
        time.perf_counter() - t0,
    )
    return out_dir


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vqinsight.models.tiny", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path, help="output model directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vis-hidden", type=int, default=32)
    p.add_argument("--vis-depth", type=int, default=2)
    p.add_argument("--image-pixels", type=int, nargs=2, metavar=("MIN", "MAX"), default=list(DEFAULT_IMAGE_PIXELS))
    p.add_argument("--video-pixels", type=int, nargs=2, metavar=("MIN", "MAX"), default=list(DEFAULT_VIDEO_PIXELS))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: build the tiny model into --out."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    build_tiny(
        args.out,
        seed=args.seed,
        image_pixels=tuple(args.image_pixels),
        video_pixels=tuple(args.video_pixels),
        hidden=args.hidden,
        layers=args.layers,
        heads=args.heads,
        vis_hidden=args.vis_hidden,
        vis_depth=args.vis_depth,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
