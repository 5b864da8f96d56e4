"""The real architectures the GPU benchmarks measure, with random weights: Qwen2.5-VL-7B-Instruct and -3B (the
judge), and T2V-Turbo's ModelScope UNet, Stable Diffusion VAE and OpenCLIP ViT-H text encoder (the generator); or
the tiny offline models of the demo (``--size tiny``), for CPU runs of the same code.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from vqinsight.models.tiny import build_model as build_tiny_model
from vqinsight.models.tiny import build_tokenizer

PATCH, MERGE, TEMPORAL_PATCH = 14, 2, 2

#: Qwen2.5-VL-7B-Instruct (config.json of the Hub checkpoint); text defaults of transformers 5.x are the 72B ones,
#: and the vision default hidden_size (3584) is not the 7B value (1280), so every number is set explicitly.
TEXT_7B: dict[str, Any] = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "hidden_act": "silu",
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-6,
    "use_sliding_window": False,
    "sliding_window": 32768,
    "max_window_layers": 28,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
}
VISION_7B: dict[str, Any] = {
    "depth": 32,
    "hidden_size": 1280,
    "hidden_act": "silu",
    "intermediate_size": 3420,
    "num_heads": 16,
    "in_channels": 3,
    "out_hidden_size": 3584,
    "patch_size": PATCH,
    "spatial_merge_size": MERGE,
    "temporal_patch_size": TEMPORAL_PATCH,
    "tokens_per_second": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
}

#: Qwen2.5-VL-3B-Instruct (config.json of the Hub checkpoint): the same vision tower, projecting to 2048.
TEXT_3B: dict[str, Any] = {
    **TEXT_7B,
    "vocab_size": 151936,
    "hidden_size": 2048,
    "intermediate_size": 11008,
    "num_hidden_layers": 36,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "max_window_layers": 70,
}
VISION_3B: dict[str, Any] = {**VISION_7B, "out_hidden_size": 2048}
ARCHS: dict[str, tuple[dict[str, Any], dict[str, Any], bool]] = {  # text, vision, tie_word_embeddings
    "7b": (TEXT_7B, VISION_7B, False),
    "3b": (TEXT_3B, VISION_3B, True),
}

# T2V-Turbo (VideoCrafter2 / ModelScope UNet, SD VAE, OpenCLIP ViT-H text tower)
UNET_MS = dict(
    sample_size=32,
    block_out_channels=(320, 640, 1280, 1280),
    cross_attention_dim=1024,
    attention_head_dim=64,
    layers_per_block=2,
    norm_num_groups=32,
    time_cond_proj_dim=256,
)
VAE_SD = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=256,
)
TEXT_VIT_H = dict(
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
)


def special_ids(tokenizer: Any) -> dict[str, int]:
    """Ids of the tokenizer's pad / eos / vision tokens (the model config must use the same ids)."""
    names = {
        "pad": "<|endoftext|>",
        "eos": "<|im_end|>",
        "image": "<|image_pad|>",
        "video": "<|video_pad|>",
        "vision_start": "<|vision_start|>",
        "vision_end": "<|vision_end|>",
    }
    return {k: int(tokenizer.convert_tokens_to_ids(v)) for k, v in names.items()}


def build_7b_config(tokenizer: Any | None = None, size: str = "7b") -> Any:
    """``Qwen2_5_VLConfig`` of Qwen2.5-VL-7B-Instruct (or ``size`` "3b"), with the special token ids of
    ``tokenizer`` (default: tiny)."""
    if tokenizer is None:
        tokenizer = build_tokenizer()
    ids = special_ids(tokenizer)
    text_arch, vision_arch, tie = ARCHS[size]
    text = {
        **text_arch,
        "rope_parameters": dict(text_arch["rope_parameters"]),
        "bos_token_id": ids["pad"],
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["pad"],
    }
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(vision_arch),
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"],
        tie_word_embeddings=tie,
    )


def count_params(config: Any) -> dict[str, int]:
    """Parameter counts of a Qwen2.5-VL config, from a meta-device instantiation (no memory, no init)."""
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in model.model.visual.parameters())
    return {"total": total, "vision": vision, "language": total - vision}


def build_model(size: str, tokenizer: Any, device: Any, dtype: Any, seed: int) -> Any:
    """A random-weight Qwen2.5-VL (the 7B architecture or the tiny one) on ``device``; same seed, same weights."""
    torch.manual_seed(seed)
    if size == "tiny":
        model = build_tiny_model(tokenizer, seed=seed).to(device=device, dtype=dtype)
    else:
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration._from_config(
                build_7b_config(tokenizer, size), dtype=dtype, attn_implementation="sdpa"
            )
    ids = special_ids(tokenizer)
    model.generation_config.pad_token_id = ids["pad"]
    model.generation_config.eos_token_id = ids["eos"]
    model.generation_config.bos_token_id = ids["pad"]
    return model
