"""A tiny random CLIP (model, tokenizer, image processor) built fully offline, for the demo and the tests.

It is the demo's stand-in for openai/clip-vit-base-patch16, used by the CLIPScore and CLIP-IQA baselines
(`vqinsight.baselines.clip`); the demo world has no pretrained weights.

    python -m vqinsight.models.tiny_clip --out results/demo/models/tiny_clip --seed 0

The tokenizer is transformers' own `CLIPTokenizer` (CLIP's normaliser, pre-tokeniser, ``</w>`` end-of-word suffix
and ``<|startoftext|> ... <|endoftext|>`` post-processor) over a vocabulary built in code: the 256 byte-level
symbols, each also with the ``</w>`` suffix, and the two special tokens; no merges, so every word is spelled out
byte by byte. The image processor is the stock `CLIPImageProcessor` (bicubic resize of the shortest edge, centre
crop, OpenAI mean/std) at the tiny model's input size. Weights are random (seeded) and saved as safetensors.

**Embedding cone.** A trained CLIP puts all image and text embeddings in a narrow cone, so image-text cosines are
positive (about 0.2-0.35 for openai/clip-vit-base-patch16) and CLIPScore (``max(100 cos, 0)``, torchmetrics) is
never clipped. A freshly initialised CLIP has cosines of either sign, which would clip many scores to exactly 0
and leave the demo's CLIPScore baseline mostly ties. The builder therefore sets the biases of the two final layer
norms so that both projections add the same random unit direction, scaled by ``cone`` times each projection's
typical output norm: the image-text cosine is then about ``cone^2 / (1 + cone^2)`` plus input-dependent variation.
``--cone 0`` keeps the plain random initialisation.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import pre_tokenizers
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from vqinsight.provenance import write_meta

log = logging.getLogger(__name__)

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
MAX_TEXT_TOKENS = 77  # CLIP's context length


def build_tokenizer(max_length: int = MAX_TEXT_TOKENS) -> CLIPTokenizer:
    """CLIP tokenizer over the byte-level alphabet (with and without ``</w>``) and the two special tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [ch + END_OF_WORD for ch in alphabet] + [BOS_TOKEN, EOS_TOKEN]
    vocab = {t: i for i, t in enumerate(tokens)}
    return CLIPTokenizer(
        vocab=vocab,
        merges=[],
        unk_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=max_length,
    )


def build_processor(tokenizer: CLIPTokenizer, image_size: int = 32) -> CLIPProcessor:
    """CLIPProcessor whose image side resizes (shortest edge) and centre-crops to `image_size`."""
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_model(
    tokenizer: CLIPTokenizer,
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
    projection_dim: int = 16,
    cone: float = 2.0,
    seed: int = 0,
) -> CLIPModel:
    """A randomly initialised CLIPModel sized by the arguments (embedding cone: module doc); deterministic per seed."""
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    if image_size % patch_size:
        raise ValueError(f"image_size ({image_size}) must be a multiple of patch_size ({patch_size})")
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "max_position_embeddings": tokenizer.model_max_length,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,  # text features pool at the first <|endoftext|>
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "image_size": image_size,
            "patch_size": patch_size,
        },
        projection_dim=projection_dim,
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        model = CLIPModel(config)
        _shared_direction(model, cone)
    return model.eval()


@torch.no_grad()
def _shared_direction(model: CLIPModel, cone: float) -> None:
    """Set the final layer-norm biases so both projections add ``cone * ||W||_F * u`` for one random unit ``u``.

    A layer-norm output has per-feature variance ~1, so ``||W x||`` is about ``||W||_F``; the bias ``b = W^+ v``
    adds exactly ``v`` after the projection (``W`` has full row rank: projection_dim <= hidden).
    """
    if cone < 0:
        raise ValueError(f"cone must be >= 0, got {cone}")
    if cone == 0:
        return
    u = torch.randn(model.config.projection_dim)
    u /= u.norm()
    for norm, proj in (
        (model.vision_model.post_layernorm, model.visual_projection),
        (model.text_model.final_layer_norm, model.text_projection),
    ):
        w = proj.weight.float()
        norm.bias.copy_(torch.linalg.pinv(w) @ (cone * w.norm() * u))


def build_tiny_clip(
    out_dir: str | Path,
    *,
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
    projection_dim: int = 16,
    cone: float = 2.0,
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
    processor = build_processor(tokenizer, image_size)
    model_kw = {
        "hidden": hidden,
        "layers": layers,
        "heads": heads,
        "image_size": image_size,
        "patch_size": patch_size,
        "projection_dim": projection_dim,
        "cone": cone,
    }
    model = build_model(tokenizer, seed=seed, **model_kw)
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        config = {
            "builder": "vqinsight.models.tiny_clip.build_tiny_clip",
            "stands_in_for": "openai/clip-vit-base-patch16",
            "seed": seed,
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
        "built tiny CLIP (%d params, seed %d) into %s in %.2f s",
        config["n_params"],
        seed,
        out_dir,
        time.perf_counter() - t0,
    )
    return out_dir


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vqinsight.models.tiny_clip", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path, help="output model directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--projection-dim", type=int, default=16)
    p.add_argument("--cone", type=float, default=2.0, help="shared embedding direction gain (module doc); 0: off")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: build the tiny CLIP into --out."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    build_tiny_clip(
        args.out,
        seed=args.seed,
        hidden=args.hidden,
        layers=args.layers,
        heads=args.heads,
        image_size=args.image_size,
        patch_size=args.patch_size,
        projection_dim=args.projection_dim,
        cone=args.cone,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
