"""Merge T2V-Turbo (MS)'s released LoRA into the ModelScope T2V base once, giving a generator directory.

    python -m vqinsight.t2v.convert --base resources/models/text-to-video-ms-1.7b \\
        --lora resources/models/T2V-Turbo-MS/unet_lora.pt --out results/stage3/generators/g0 \\
        [--rank 32] [--lora-scale 1.0] [--seed 0]

Inputs: the diffusers directory of ``ali-vilab/text-to-video-ms-1.7b`` (subfolders unet, vae, text_encoder,
tokenizer) and ``jiachenli-ucsb/T2V-Turbo-MS/unet_lora.pt``. Output: a generator directory (`vqinsight.t2v.model`)
with T2V-Turbo's sampling defaults (16 frames, 256x256, fps 8, 4 steps, guidance 7.5, lcm_origin_steps 50,
w-embedding dim 256), written to ``<out>.tmp`` and renamed to ``<out>`` when complete.

What T2V-Turbo's `app_ms.py` does, and what is done here (read from Ji4chenLi/t2v-turbo: app_ms.py,
utils/lora_handler.py, utils/lora.py, model_scope/unet_3d_condition.py, model_scope/unet_3d_blocks.py):

1. Student UNet = ``UNet3DConditionModel.from_config(teacher.config, time_cond_proj_dim=256)`` with the teacher's
   weights loaded ``strict=False``: the only weight the teacher lacks is ``time_embedding.cond_proj.weight`` (the
   w-embedding projection, no bias). Here this is checked: any other missing or unexpected key is an error.
   T2V-Turbo leaves cond_proj at PyTorch's default ``nn.Linear`` initialisation from whatever the global RNG state is
   (the released LoRA then adds its delta on top); here the same default initialisation is drawn from a generator
   seeded with ``--seed``, so the conversion is reproducible. The exact base matrix T2V-Turbo trained with is not
   released, so no conversion can reproduce it.
2. ``LoraHandler(version="cloneofsimo")`` with its default ``unet_replace_modules=["UNet3DConditionModel"]`` calls
   ``inject_trainable_lora_extended(unet, target_replace_module={"UNet3DConditionModel"}, r=32, loras=<list>)``:
   the "ancestor" is the UNet itself, so the targets are *all* modules under it whose class is exactly
   ``nn.Linear``, ``nn.Conv2d`` or ``nn.Conv3d`` (search_class; subclasses such as diffusers' old
   ``LoRACompatibleLinear`` are skipped by a ``__class__ ==`` test), in ``named_modules()`` order. For each target
   the list is consumed with ``pop(0)``: the up weight, then the down weight. The rank is clamped per module to
   ``min(r, in, out)`` (``conv_in`` and ``conv_out`` get rank 4). Shapes: Linear up (out, r), down (r, in);
   Conv up (out, r, 1, 1[, 1]), down (r, in, *kernel).
3. ``collapse_lora(unet, ..., alpha=1.0)`` merges ``W += alpha * (up.flatten(1) @ down.flatten(1)).reshape(W.shape)``
   (the injected layers' own ``scale`` is not applied there) and ``monkeypatch_remove_lora`` restores plain layers.
   ``--lora-scale`` is that alpha.

Order of the targets (the one thing the list does not carry). T2V-Turbo injects into its own copy of the ModelScope
UNet (``model_scope/unet_3d_condition.py``), built from diffusers' ResnetBlock2D, TemporalConvLayer,
Transformer2DModel, TransformerTemporalModel, Downsample2D and Upsample2D; it registers its submodules in the same
order as diffusers' ``UNet3DConditionModel`` (conv_in, time_proj, time_embedding, transformer_in, down_blocks,
up_blocks, mid_block, conv_norm_out, conv_act, conv_out -- the up_blocks list is created before the mid block --
and per block resnets, temp_convs, attentions, temp_attentions, down/upsamplers), so the traversal of the diffusers
model is used. For the ali-vilab config this gives 575 targets, i.e. a list of 1150 tensors (58.5 M parameters,
about 234 MB in float32). **Not verifiable offline:** that the diffusers version the release was trained with
(>= 0.26 by their training scripts' ``check_min_version``; the README installs it unpinned, together with peft)
built those blocks from plain ``nn.Linear``/``nn.Conv2d`` (true with the PEFT backend) and with the same
registration order inside each block as diffusers 0.42. Every tensor's shape is checked against its module, which
catches a shifted or foreign list, but not a swap between layers of equal shape (e.g. to_q/to_k/to_v of a
self-attention).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..provenance import write_meta
from .model import COMPONENTS, Generator, GeneratorConfig, save_generator

log = logging.getLogger("vqinsight.t2v.convert")

COND_PROJ_PREFIX = "time_embedding.cond_proj."
WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
)
INDEX_FILES = ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin.index.json")


# ------------------------------------------------------------------------------------------------ LoRA targets


def lora_targets(unet: Any) -> list[tuple[str, Any]]:
    """(name, module) of every nn.Linear / nn.Conv2d / nn.Conv3d (exact class) in module-traversal order."""
    from torch import nn

    search = (nn.Linear, nn.Conv2d, nn.Conv3d)
    return [(name, m) for name, m in unet.named_modules() if type(m) in search]


def lora_shapes(module: Any, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(up shape, down shape) of the cloneofsimo LoRA of `module` at `rank` (clamped to min(rank, in, out))."""
    from torch import nn

    if isinstance(module, nn.Linear):
        i, o = module.in_features, module.out_features
        r = min(rank, i, o)
        return (o, r), (r, i)
    i, o = module.in_channels, module.out_channels
    r = min(rank, i, o)
    k = tuple(module.kernel_size)
    return (o, r, *([1] * len(k))), (r, i // module.groups, *k)


def make_lora_weights(unet: Any, rank: int, seed: int = 0) -> list[Any]:
    """A list in the released format for `unet` (up, down per target, in order) with random values.

    For tests: it fakes a release for a small base. Down weights ~ N(0, 1/rank^2) like T2V-Turbo's initialisation,
    up weights ~ N(0, 0.02^2) (T2V-Turbo starts them at zero; non-zero makes the merge visible)."""
    import torch

    g = torch.Generator("cpu").manual_seed(seed)
    out = []
    for _, m in lora_targets(unet):
        up, down = lora_shapes(m, rank)
        out.append(torch.randn(up, generator=g) * 0.02)
        out.append(torch.randn(down, generator=g) / down[0])
    return out


def merge_lora(unet: Any, weights: Sequence[Any], rank: int, scale: float = 1.0, source: str = "LoRA") -> int:
    """Merge a released-format list into `unet` in place: ``W += scale * up @ down`` per target. Returns #targets.

    Checks the count (2 per target) and every shape first and raises a ValueError naming `source`, the module,
    its position and the expected vs found shape; nothing is modified unless everything fits."""
    import torch

    if not isinstance(weights, list | tuple):
        raise ValueError(f"{source}: expected a list of tensors (cloneofsimo format), got {type(weights).__name__}")
    targets = lora_targets(unet)
    n = len(targets)
    if len(weights) != 2 * n:
        raise ValueError(
            f"{source}: {len(weights)} tensors, expected {2 * n} (an up and a down weight for each of the {n} "
            f"Linear/Conv2d/Conv3d modules of this UNet, in module order); wrong base model, or a truncated or "
            f"different LoRA file"
        )
    for k, (name, m) in enumerate(targets):
        expected = lora_shapes(m, rank)
        for j, which in enumerate(("up", "down")):
            t = weights[2 * k + j]
            if not isinstance(t, torch.Tensor):
                what = f"list item {2 * k + j} ({which} weight of {name!r})"
                raise ValueError(f"{source}: {what} is a {type(t).__name__}, not a tensor")
            if tuple(t.shape) != expected[j]:
                raise ValueError(
                    f"{source}: {which} weight of module {name!r} (target {k + 1} of {n}, list item {2 * k + j}) has "
                    f"shape {tuple(t.shape)}, expected {expected[j]} for --rank {rank} "
                    f"(rank clamped to min(rank, in, out) = {expected[1][0]}); wrong --rank, base model or LoRA file"
                )
    with torch.no_grad():
        for k, (_, m) in enumerate(targets):
            up, down = (weights[2 * k + j].detach().to(torch.float32).cpu() for j in (0, 1))
            delta = (up.flatten(1) @ down.flatten(1)).reshape(m.weight.shape) * scale
            m.weight.add_(delta.to(m.weight.device, m.weight.dtype))
    return n


# ------------------------------------------------------------------------------------------------ base model


def read_state_dict(unet_dir: Path) -> dict[str, Any]:
    """The teacher UNet's weights: safetensors or .bin, single file or sharded (index.json), fp32 preferred."""
    import torch
    from safetensors.torch import load_file

    def load(f: Path) -> dict[str, Any]:
        try:
            if f.suffix == ".safetensors":
                return load_file(f)
            return torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # any reader error becomes a message naming the file
            raise ValueError(f"{f}: cannot read the UNet weights ({type(e).__name__}: {e})") from e

    for name in INDEX_FILES:
        idx = unet_dir / name
        if idx.is_file():
            try:
                shards = sorted(set(json.loads(idx.read_text())["weight_map"].values()))
            except (ValueError, KeyError) as e:
                raise ValueError(f"{idx}: not a weight index ({e})") from e
            sd: dict[str, Any] = {}
            for s in shards:
                if not (unet_dir / s).is_file():
                    raise FileNotFoundError(f"{idx}: shard {s} not found in {unet_dir}")
                sd.update(load(unet_dir / s))
            return sd
    for name in WEIGHT_FILES:
        if (unet_dir / name).is_file():
            return load(unet_dir / name)
    raise FileNotFoundError(f"{unet_dir}: no UNet weights found (looked for {', '.join(WEIGHT_FILES + INDEX_FILES)})")


def build_student(base: Path, w_dim: int = 256, seed: int = 0) -> Any:
    """The teacher's config with time_cond_proj_dim=w_dim, teacher weights, seeded default-init cond_proj."""
    import torch
    from diffusers import UNet3DConditionModel

    unet_dir = base / "unet"
    cfg_path = unet_dir / "config.json"
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{cfg_path}: cannot read the base UNet config ({e})") from e
    if config.get("time_cond_proj_dim") is not None:
        raise ValueError(f"{cfg_path}: time_cond_proj_dim is already set; expected the ModelScope T2V teacher UNet")
    sd = read_state_dict(unet_dir)
    with torch.device("meta"):
        unet = UNet3DConditionModel.from_config(config, time_cond_proj_dim=w_dim)
    expected = {k for k in unet.state_dict() if k.startswith(COND_PROJ_PREFIX)}
    try:
        res = unet.load_state_dict(sd, strict=False, assign=True)
    except RuntimeError as e:  # size mismatches
        raise ValueError(f"{unet_dir}: the weights do not fit the UNet built from {cfg_path}: {e}") from e
    missing, unexpected = set(res.missing_keys), set(res.unexpected_keys)
    if unexpected or missing != expected:
        raise ValueError(
            f"{unet_dir}: loading the teacher weights into the student UNet must leave exactly {sorted(expected)} "
            f"missing; got missing={sorted(missing - expected)[:20]} (beyond cond_proj), "
            f"unexpected={sorted(unexpected)[:20]}, cond_proj present in the file={sorted(expected - missing)}"
        )
    del sd
    cond = unet.time_embedding.cond_proj
    cond.to_empty(device="cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cond.reset_parameters()  # nn.Linear's default init, as T2V-Turbo's from_config leaves it
    left = [n for n, t in [*unet.named_parameters(), *unet.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"{unet_dir}: no weights for {left[:10]}")
    return unet.float().eval()


def file_sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def convert(
    base: str | Path, lora: str | Path, out: str | Path, *, rank: int = 32, lora_scale: float = 1.0, seed: int = 0
) -> Path:
    """Build the T2V-Turbo (MS) generator directory `out` from the base and the released LoRA (see module doc)."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    base, lora, out = Path(base), Path(lora), Path(out)
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: base model directory not found")
    missing = [c for c in COMPONENTS if not (base / c).is_dir()]
    if missing:
        raise FileNotFoundError(f"{base}: not a diffusers text-to-video-ms-1.7b directory, missing {missing}")
    if not lora.is_file():
        raise FileNotFoundError(f"{lora}: LoRA file not found")
    if out.exists():
        raise FileExistsError(f"{out}: already exists; remove it to convert again")

    cfg = GeneratorConfig()  # T2V-Turbo (MS) defaults
    unet = build_student(base, cfg.w_embedding_dim, seed)
    try:
        weights = torch.load(lora, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{lora}: cannot read the LoRA list ({type(e).__name__}: {e})") from e
    n = merge_lora(unet, weights, rank, lora_scale, source=str(lora))
    log.info("merged %d LoRA pairs (rank %d, scale %g) from %s", n, rank, lora_scale, lora)
    del weights

    vae = AutoencoderKL.from_pretrained(base / "vae", torch_dtype=torch.float32)
    text_encoder = CLIPTextModel.from_pretrained(base / "text_encoder", dtype=torch.float32)
    tokenizer = CLIPTokenizer.from_pretrained(base / "tokenizer")
    cfg.extra = {
        "converted_from": {"base": str(base), "lora": str(lora), "lora_sha256": file_sha256(lora)},
        "rank": rank,
        "lora_scale": lora_scale,
        "lora_targets": n,
        "cond_proj_init_seed": seed,
    }
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_generator(Generator(unet, vae, text_encoder, tokenizer, cfg), tmp, copy_from=None)
    tmp.rename(out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, type=Path, help="diffusers dir of ali-vilab/text-to-video-ms-1.7b")
    ap.add_argument("--lora", required=True, type=Path, help="T2V-Turbo-MS unet_lora.pt")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--rank", type=int, default=32, help="LoRA rank of the release (T2V-Turbo MS: 32)")
    ap.add_argument("--lora-scale", type=float, default=1.0, help="alpha of collapse_lora (T2V-Turbo: 1.0)")
    ap.add_argument("--seed", type=int, default=0, help="seed of cond_proj's default initialisation")
    a = ap.parse_args(argv)
    if a.rank < 1:
        ap.error(f"--rank must be >= 1, got {a.rank}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        out = convert(a.base, a.lora, a.out, rank=a.rank, lora_scale=a.lora_scale, seed=a.seed)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        log.error("%s", e)
        return 2

    write_meta(out / "convert.meta.json", {k: str(v) for k, v in vars(a).items()})
    log.info("wrote the T2V-Turbo (MS) generator to %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
