"""Load a Qwen2.5-VL judge and its processor (local directory or hub id) with clear, actionable errors.

Only safetensors weights are ever loaded (no pickle). Pixel bounds can be overridden so the visual token counts
match the frames the pipeline passes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from .vision_attention import batch_vision_attention

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype | str] = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16}
LOCAL_PREFIXES = ("/", ".", "~", "results/", "resources/")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth")


def looks_local(name_or_path: str) -> bool:
    """True for strings that can only be a filesystem path (a hub id has the form `org/name`)."""
    return (
        name_or_path.startswith(LOCAL_PREFIXES)
        or name_or_path.count("/") > 1
        or (os.sep != "/" and os.sep in name_or_path)
        or (os.altsep is not None and os.altsep != "/" and os.altsep in name_or_path)
    )


def _missing_dir_error(name_or_path: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{name_or_path}: base model directory not found. For the demo it is built offline by the demo_base rule "
        "(`snakemake demo_base` or `python -m vqinsight.models.tiny --out <dir>`); for the paper's judge download "
        f"the weights first, e.g. `huggingface-cli download Qwen/Qwen2.5-VL-7B-Instruct --local-dir {name_or_path}`."
    )


def check_local_dir(path: Path) -> None:
    """Raise a clear error for a local model directory that is unusable (not a dir, or no safetensors weights)."""
    if not path.is_dir():
        raise NotADirectoryError(f"{path}: expected a model directory (config.json + *.safetensors), found a file")
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.iterdir() if p.name in PICKLE_WEIGHTS or p.suffix in (".bin", ".pt"))
        found = f" (found pickle weights {', '.join(pickles)}, which are never loaded)" if pickles else ""
        raise FileNotFoundError(
            f"{path}: no *.safetensors weights{found}. Only safetensors weights are supported; convert the "
            "checkpoint with `model.save_pretrained(dir, safe_serialization=True)` or download the safetensors "
            "release of the model."
        )


def _resolve_dtype(dtype: str) -> torch.dtype | str:
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}") from None


def _set_pixels(sub_processor: Any, pixels: tuple[int, int], what: str) -> None:
    """Set shortest/longest pixel bounds on an image or video processor (and min/max_pixels where present)."""
    lo, hi = (int(x) for x in pixels)
    if not 0 < lo <= hi:
        raise ValueError(f"{what}_pixels must satisfy 0 < min <= max, got {pixels}")
    if sub_processor is None:
        raise ValueError(f"the processor has no {what} processor, cannot set {what}_pixels")
    size = sub_processor.size
    new = {"shortest_edge": lo, "longest_edge": hi}
    sub_processor.size = type(size)(**new) if size is not None and not isinstance(size, dict) else new
    for attr, value in (("min_pixels", lo), ("max_pixels", hi)):
        if getattr(sub_processor, attr, None) is not None:
            setattr(sub_processor, attr, value)
    log.info("%s processor pixel bounds set to shortest_edge=%d longest_edge=%d", what, lo, hi)


def load_processor(
    name_or_path: str,
    *,
    trust_remote_code: bool = False,
    image_pixels: tuple[int, int] | None = None,
    video_pixels: tuple[int, int] | None = None,
) -> Any:
    """The model's `AutoProcessor` alone, configured as `load_model_and_processor` configures it (pixel bounds, left
    padding): for engines that hold the weights themselves (the judge's vLLM engine)."""
    from transformers import AutoProcessor

    path = Path(str(name_or_path)).expanduser()
    if not path.exists() and looks_local(str(name_or_path)):
        raise _missing_dir_error(str(name_or_path))
    try:
        processor = AutoProcessor.from_pretrained(str(path) if path.exists() else str(name_or_path),
                                                  trust_remote_code=trust_remote_code)  # fmt: skip
    except OSError as e:
        raise OSError(f"{name_or_path}: cannot load the processor: {e}") from e
    if image_pixels is not None:
        _set_pixels(getattr(processor, "image_processor", None), image_pixels, "image")
    if video_pixels is not None:
        _set_pixels(getattr(processor, "video_processor", None), video_pixels, "video")
    tok = getattr(processor, "tokenizer", None)
    if tok is not None:
        tok.padding_side = "left"
    return processor


def load_model_and_processor(
    name_or_path: str,
    *,
    trust_remote_code: bool = False,
    dtype: str = "auto",
    image_pixels: tuple[int, int] | None = None,
    video_pixels: tuple[int, int] | None = None,
    attn_implementation: str | None = None,
    device_map: Any = None,
    batched_vision_attention: bool = True,
) -> tuple[Qwen2_5_VLForConditionalGeneration, Any]:
    """Load `Qwen2_5_VLForConditionalGeneration` (safetensors only) and its `AutoProcessor`.

    Args:
        name_or_path: a local model directory or a hub id (`org/name`, resolved from the local HF cache offline).
        trust_remote_code: allow the checkpoint's own Python code to run (logged as a warning).
        dtype: "auto", "float32" or "bfloat16".
        image_pixels / video_pixels: (min, max) pixels per image / per video frame, overriding the saved processor.
        attn_implementation: e.g. "sdpa", "eager", "flash_attention_2"; None keeps the transformers default.
        device_map: passed to `from_pretrained`.
        batched_vision_attention: run the sdpa vision tower's window attention as one batched call per segment
            length instead of transformers' per-window loop (`vqinsight.models.vision_attention`; same result).

    Raises:
        FileNotFoundError: a path-like `name_or_path` that does not exist, or a directory without safetensors.
        OSError: a hub id that cannot be fetched (offline, not cached), with what to do about it.
        ValueError: an unknown dtype or invalid pixel bounds.
    """
    name_or_path = str(name_or_path)
    torch_dtype = _resolve_dtype(dtype)
    path = Path(name_or_path).expanduser()
    is_local = path.exists()
    if not is_local and looks_local(name_or_path):
        raise _missing_dir_error(name_or_path)
    if is_local:
        check_local_dir(path)
        source = str(path)
    else:
        source = name_or_path
    if trust_remote_code:
        log.warning(
            "trust_remote_code=True: remote code will run (Python code shipped with %s is executed)", name_or_path
        )
    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": trust_remote_code, "dtype": torch_dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(source, **kwargs)
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as e:
        if is_local:
            raise OSError(f"{source}: cannot load the model or processor from this directory: {e}") from e
        raise OSError(
            f"{name_or_path}: cannot fetch this hub model ({type(e).__name__}: {e}). This machine may be offline: "
            f"pre-download it (`huggingface-cli download {name_or_path}`) and/or point HF_HOME at the cache that "
            "holds it, or pass a local model directory instead."
        ) from e
    if batched_vision_attention:
        batch_vision_attention(model)
    if image_pixels is not None:
        _set_pixels(getattr(processor, "image_processor", None), image_pixels, "image")
    if video_pixels is not None:
        _set_pixels(getattr(processor, "video_processor", None), video_pixels, "video")
    tok = getattr(processor, "tokenizer", None)
    if tok is not None and tok.padding_side != "left":
        log.info("setting tokenizer padding_side=left (decoder-only generation)")
        tok.padding_side = "left"
    log.info("loaded %s (%s, dtype=%s)", name_or_path, type(model).__name__, model.dtype)
    return model, processor


def vision_token_ids(model: Any) -> list[int]:
    """Ids of the image/video pad and vision start/end tokens (to be suppressed during sampling)."""
    cfg = model.config
    names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    ids = []
    for n in names:
        value = getattr(cfg, n, None)
        if value is None:
            value = getattr(getattr(cfg, "text_config", None), n, None)
        if value is None:
            raise ValueError(f"model config has no {n}; is this a Qwen2-VL family model?")
        ids.append(int(value))
    return sorted(set(ids))
