"""VBench evaluation of the generator: the paper's configuration via the ``vbench`` package, and a weight-free demo.

    python -m vqinsight.stage3.vbench demo --index results/demo/stage3/heldout/dpo/shard0.jsonl \\
        --out results/demo/stage3/vbench/dpo.json --generator dpo
    python -m vqinsight.stage3.vbench full --videos results/full/stage3/vbench_videos/dpo --name dpo \\
        --out results/full/stage3/vbench/dpo.json [--dimensions dynamic_degree scene ...] [--mode vbench_standard]
    python -m vqinsight.stage3.vbench full --index results/full/stage3/vbench_samples/dpo/*.jsonl --name dpo \\
        --out results/full/stage3/vbench/dpo.json
    python -m vqinsight.stage3.vbench prompts --out results/full/stage3/prompts/vbench.jsonl [--full-info F]

**Paper configuration (``full``).** Table 6 reports VBench's total score and four dimensions (dynamic degree,
scene, spatial relationship, multiple objects); the latter three need VBench's standard prompt suite, so the
default is ``--mode vbench_standard``: the videos are sampled for the standard prompts and named
``<prompt>-<i>.mp4`` (i = 0..4), and ``VBench_full_info.json`` (shipped inside the ``vbench`` package, or
``--full-info``) says which prompts belong to which dimension. With ``--index`` the sample index is turned into
such a folder of symbolic links. ``--mode custom_input`` evaluates videos of any prompts (VidProM, say): the
prompt of each file is passed to VBench, and only the dimensions that need no per-prompt annotation are allowed
(VBench refuses object_class, multiple_objects, scene, appearance_style, color and spatial_relationship there),
so the semantic score and the total are then None. ``pip install vbench`` is needed (not a dependency of this
package); VBench downloads its own model weights (several GB, under ~/.cache/vbench) on first use, and some
dimensions need detectron2 as well.

**Final scores** (``vbench_final_scores``). As VBench's ``scripts/cal_final_score.py`` with the constants of
``scripts/constant.py`` (Vchitect/VBench; both read from the repository's source, two stored versions of
constant.py agree): each dimension is min-max normalised with the NORMALIZE table and multiplied by its weight
(dynamic degree 0.5, all others 1); the quality score is the weighted mean over the 7 quality dimensions, the
semantic score over the 9 semantic ones (sum of weighted normalised values / sum of weights), and the total is
``(4 · quality + 1 · semantic) / 5``. Unlike the script (which substitutes 0 for a missing dimension) a score that
needs a missing dimension is None here.

**Weight-free demo** (``demo``). Only temporal flickering needs no learned model: VBench's
``vbench/temporal_flickering.py`` reads every frame, takes the mean absolute difference of consecutive frames
(over all pixels and channels, float32), averages over the frame pairs and scores ``(255 − MAE) / 255``. Here the
frames are decoded with PyAV (RGB; VBench uses OpenCV, BGR, which gives the same absolute differences up to the
YUV-to-RGB conversion). VBench evaluates this dimension on its static-scene prompts only; the demo applies it to
whatever was generated, so its value is a smoothness statistic of the demo generator, not a VBench score.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..jsonl import dumps as jsonl_dumps
from ..provenance import atomic_write_json, atomic_write_text, write_meta
from ..video import MediaError, probe, read_frames
from .index import read_index

log = logging.getLogger("vqinsight.stage3.vbench")

# VBench scripts/constant.py (names with "_" as in the results files instead of " ").
QUALITY_DIMS = (
    "subject_consistency",
    "background_consistency",
    "temporal_flickering",
    "motion_smoothness",
    "aesthetic_quality",
    "imaging_quality",
    "dynamic_degree",
)
SEMANTIC_DIMS = (
    "object_class",
    "multiple_objects",
    "human_action",
    "color",
    "spatial_relationship",
    "scene",
    "appearance_style",
    "temporal_style",
    "overall_consistency",
)
DIMENSIONS = QUALITY_DIMS + SEMANTIC_DIMS
NORMALIZE: dict[str, tuple[float, float]] = {
    "subject_consistency": (0.1462, 1.0),
    "background_consistency": (0.2615, 1.0),
    "temporal_flickering": (0.6293, 1.0),
    "motion_smoothness": (0.706, 0.9975),
    "dynamic_degree": (0.0, 1.0),
    "aesthetic_quality": (0.0, 1.0),
    "imaging_quality": (0.0, 1.0),
    "object_class": (0.0, 1.0),
    "multiple_objects": (0.0, 1.0),
    "human_action": (0.0, 1.0),
    "color": (0.0, 1.0),
    "spatial_relationship": (0.0, 1.0),
    "scene": (0.0, 0.8222),
    "appearance_style": (0.0009, 0.2855),
    "temporal_style": (0.0, 0.364),
    "overall_consistency": (0.0, 0.364),
}
DIM_WEIGHT: dict[str, float] = {d: 1.0 for d in DIMENSIONS} | {"dynamic_degree": 0.5}
QUALITY_WEIGHT = 4.0
SEMANTIC_WEIGHT = 1.0
# Dimensions VBench refuses in custom_input mode (VBench.check_dimension_requires_extra_info).
CUSTOM_UNSUPPORTED = frozenset(
    {"object_class", "multiple_objects", "scene", "appearance_style", "color", "spatial_relationship"}
)
MODES = ("vbench_standard", "custom_input")
WEIGHT_FREE = ("temporal_flickering",)
VIDEO_SUFFIXES = (".mp4", ".gif")


def temporal_flickering(frames: np.ndarray) -> float:
    """VBench's temporal-flickering score of one video: ``(255 − mean |f[t+1] − f[t]|) / 255``.

    ``frames`` is uint8 (F, H, W, C) with F >= 2; the absolute difference is averaged over all pixels and
    channels of each consecutive pair and then over the pairs (all pairs have the same size, so this is the mean
    over every element of the difference stack). 1.0 for a static video.
    """
    x = np.asarray(frames)
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"frames must be uint8 (F, H, W, C), got {x.dtype} {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"temporal flickering needs at least 2 frames, got {x.shape[0]}")
    per_pair = [np.abs(x[t + 1].astype(np.float32) - x[t].astype(np.float32)).mean() for t in range(x.shape[0] - 1)]
    mae = float(np.mean(per_pair, dtype=np.float64))
    return (255.0 - mae) / 255.0


def _dim_name(key: str) -> str:
    return key.strip().replace(" ", "_").lower()


def vbench_final_scores(raw: Mapping[str, float]) -> dict[str, Any]:
    """Quality, semantic and total score from raw dimension scores (module doc); None where a dimension is missing.

    Keys may use "_" or " " ("dynamic_degree" or "dynamic degree"); keys that are not VBench dimensions are listed
    under ``ignored``. Returns also the weighted normalised values and the missing dimensions.
    """
    values: dict[str, float] = {}
    ignored = []
    for k, v in raw.items():
        d = _dim_name(k)
        if d not in NORMALIZE:
            ignored.append(k)
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"dimension {k!r}: score must be a finite number, got {v!r}")
        if d in values:
            raise ValueError(f"dimension {d!r} given twice")
        values[d] = float(v)
    normalized = {
        d: (v - NORMALIZE[d][0]) / (NORMALIZE[d][1] - NORMALIZE[d][0]) * DIM_WEIGHT[d] for d, v in values.items()
    }

    def group(dims: Sequence[str]) -> float | None:
        if any(d not in normalized for d in dims):
            return None
        return sum(normalized[d] for d in dims) / sum(DIM_WEIGHT[d] for d in dims)

    quality, semantic = group(QUALITY_DIMS), group(SEMANTIC_DIMS)
    total = None
    if quality is not None and semantic is not None:
        total = (QUALITY_WEIGHT * quality + SEMANTIC_WEIGHT * semantic) / (QUALITY_WEIGHT + SEMANTIC_WEIGHT)
    return {
        "quality_score": quality,
        "semantic_score": semantic,
        "total_score": total,
        "normalized_weighted": normalized,
        "missing": [d for d in DIMENSIONS if d not in values],
        "ignored": ignored,
    }


def parse_vbench_results(path: str | os.PathLike) -> dict[str, float]:
    """Aggregate score per dimension from VBench's ``<name>_eval_results.json``.

    The file maps each dimension to ``[aggregate_score, [per-video results...]]``; errors name the file and the
    dimension.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: VBench results not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a non-empty object of dimension -> [score, per-video results]")
    out: dict[str, float] = {}
    for dim, v in data.items():
        if not isinstance(v, list) or not v:
            raise ValueError(f"{path}: dimension {dim!r}: expected [aggregate_score, per-video list], got {v!r:.80}")
        score = v[0]
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            raise ValueError(f"{path}: dimension {dim!r}: aggregate score must be a finite number, got {score!r}")
        if len(v) > 1 and not isinstance(v[1], list):
            raise ValueError(f"{path}: dimension {dim!r}: per-video results must be a list, got {type(v[1]).__name__}")
        out[_dim_name(dim)] = float(score)
    return out


# ----------------------------------------------------------------------------------------------- VBench package


def _import_vbench():
    try:
        import vbench
    except ImportError as e:
        raise RuntimeError(
            "the VBench evaluation needs the vbench package: pip install vbench (some dimensions also need "
            "detectron2). VBench downloads its own model weights (several GB, ~/.cache/vbench) on first use. "
            "Without it, `python -m vqinsight.stage3.vbench demo` computes the weight-free dimensions."
        ) from e
    return vbench


def check_dimensions(dimensions: Iterable[str], mode: str) -> list[str]:
    """The dimensions as VBench names them, checked against the mode."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    dims = [_dim_name(d) for d in dimensions]
    unknown = [d for d in dims if d not in NORMALIZE]
    if unknown:
        raise ValueError(f"unknown VBench dimension(s) {unknown}; valid: {', '.join(DIMENSIONS)}")
    if not dims:
        raise ValueError("no dimensions given")
    if mode == "custom_input":
        bad = sorted(set(dims) & CUSTOM_UNSUPPORTED)
        if bad:
            raise ValueError(f"dimension(s) {bad} need VBench's standard prompt suite (--mode vbench_standard)")
    return dims


def stage_videos(index_rows: Iterable[Mapping[str, Any]], dest: str | os.PathLike, mode: str) -> dict[str, str]:
    """Symbolic links named as VBench expects (returns {file name: prompt}).

    vbench_standard: ``<prompt>-<index>.mp4`` (VBench looks for indices 0..4 of each standard prompt);
    custom_input: ``<prompt_id>-<index>.mp4``, the prompt text passed to VBench separately.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    names: dict[str, str] = {}
    for r in index_rows:
        src = Path(r["path"])
        if not src.is_file():
            raise FileNotFoundError(f"{src}: video of prompt {r['prompt_id']} index {r['index']} not found")
        suffix = src.suffix.lower() if src.suffix.lower() in VIDEO_SUFFIXES else ".mp4"
        if mode == "vbench_standard":
            if "/" in r["prompt"] or "\0" in r["prompt"]:
                raise ValueError(f"prompt {r['prompt_id']}: the prompt text cannot be a file name: {r['prompt']!r}")
            if r["index"] > 4:
                log.warning(
                    "prompt %s: VBench reads indices 0..4 only; index %d is ignored", r["prompt_id"], r["index"]
                )
            name = f"{r['prompt']}-{r['index']}{suffix}"
        else:
            name = f"{r['prompt_id']}-{r['index']}{suffix}"
        if name in names:
            raise ValueError(f"two videos map to the VBench file name {name!r}")
        link = dest / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(src.resolve())
        names[name] = r["prompt"]
    if not names:
        raise ValueError("no videos to stage")
    return names


def run_vbench(
    videos_dir: str | os.PathLike,
    name: str,
    dimensions: Iterable[str],
    out_dir: str | os.PathLike,
    device: str = "cuda",
    *,
    mode: str = "vbench_standard",
    full_info: str | os.PathLike | None = None,
    prompts: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """Run VBench (``vbench.VBench.evaluate``) and return the aggregate score per dimension.

    ``prompts`` ({video file name: prompt}) is VBench's ``prompt_list`` for custom_input mode (without it VBench
    reads the prompt from the file name). VBench writes ``<out_dir>/<name>_eval_results.json``.
    """
    dims = check_dimensions(dimensions, mode)
    vbench = _import_vbench()
    import torch

    if full_info is None:
        full_info = Path(vbench.__file__).resolve().parent / "VBench_full_info.json"
    if mode == "vbench_standard" and not Path(full_info).is_file():
        raise FileNotFoundError(f"{full_info}: VBench_full_info.json not found (give --full-info)")
    videos_dir = Path(videos_dir)
    if not videos_dir.exists() or (videos_dir.is_dir() and not any(videos_dir.iterdir())):
        raise FileNotFoundError(f"{videos_dir}: no videos to evaluate")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bench = vbench.VBench(torch.device(device), str(full_info), str(out_dir))
    kw: dict[str, Any] = {"videos_path": str(videos_dir), "name": name, "dimension_list": dims}
    params = inspect.signature(bench.evaluate).parameters
    if "mode" in params:
        kw["mode"] = mode
        if prompts:
            kw["prompt_list"] = dict(prompts)
    elif mode != "vbench_standard":
        raise RuntimeError("the installed vbench has no custom_input mode; upgrade it (pip install -U vbench)")
    bench.evaluate(**kw)
    raw = parse_vbench_results(out_dir / f"{name}_eval_results.json")
    missing = [d for d in dims if d not in raw]
    if missing:
        raise RuntimeError(f"{out_dir / f'{name}_eval_results.json'}: VBench returned no score for {missing}")
    return raw


# ----------------------------------------------------------------------------------------------- CLI


def _read_all_frames(path: str) -> np.ndarray:

    n = probe(path, backend="pyav")["frames"]
    return read_frames(path, n, backend="pyav")


def demo_scores(index_rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(per-dimension mean, per-video values) of the weight-free dimensions over the indexed videos."""

    per_video = []
    for r in index_rows:
        try:
            frames = _read_all_frames(r["path"])
            tf = temporal_flickering(frames)
        except (MediaError, ValueError) as e:
            raise ValueError(f"prompt {r['prompt_id']} index {r['index']}: {e}") from e
        per_video.append(
            {"prompt_id": r["prompt_id"], "index": r["index"], "path": r["path"], "temporal_flickering": tf}
        )
    means = {d: float(np.mean([v[d] for v in per_video])) for d in WEIGHT_FREE}
    return means, per_video


def cmd_demo(a: argparse.Namespace) -> int:
    rows = read_index(a.index)
    means, per_video = demo_scores(rows)
    out = {
        "generator": a.generator,
        "computed_by": "vqinsight (no VBench weights)",
        "n_videos": len(per_video),
        "n_prompts": len({r["prompt_id"] for r in rows}),
        "dimensions": means,
        "final": vbench_final_scores(means),
        "per_video": per_video,
    }
    atomic_write_json(a.out, out)
    write_meta(a.out.with_suffix(".meta.json"), {"index": [str(p) for p in a.index], "generator": a.generator})
    log.info("%s: %s over %d video(s) -> %s", a.generator, means, len(per_video), a.out)
    return 0


def cmd_full(a: argparse.Namespace) -> int:
    dims = check_dimensions(a.dimensions, a.mode)
    work = a.work_dir or a.out.with_name(f"{a.out.stem}_vbench")
    prompts = None
    if a.index:
        videos = work / "videos"
        prompts = stage_videos(read_index(a.index), videos, a.mode)
    else:
        videos = a.videos
    raw = run_vbench(
        videos,
        a.name,
        dims,
        work,
        a.device,
        mode=a.mode,
        full_info=a.full_info,
        prompts=prompts if a.mode == "custom_input" else None,
    )
    from importlib import metadata

    out = {
        "name": a.name,
        "mode": a.mode,
        "computed_by": f"vbench {metadata.version('vbench')}",
        "dimensions": raw,
        "final": vbench_final_scores(raw),
        "eval_results": str(work / f"{a.name}_eval_results.json"),
    }
    atomic_write_json(a.out, out)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items() if k != "func"}
    config["index"] = [str(p) for p in a.index or []]
    write_meta(a.out.with_suffix(".meta.json"), config)
    log.info("%s: total %s -> %s", a.name, out["final"]["total_score"], a.out)
    return 0


def standard_prompts(full_info: str | os.PathLike) -> list[dict[str, str]]:
    """VBench's standard prompt suite from VBench_full_info.json as sampling prompts ({prompt_id, prompt}).

    The file is a list of {"prompt_en": str, "dimension": [...], ...}; a prompt listed for several dimensions is
    sampled once (VBench looks the videos up by prompt text). Ids are ordinal (vbench_0000, ...) in file order.
    """
    path = Path(full_info)
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read VBench_full_info.json ({e})") from e
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a list of prompt entries")
    seen, out = set(), []
    for i, it in enumerate(items):
        text = it.get("prompt_en") if isinstance(it, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{path}: entry {i} has no prompt_en")
        if text in seen:
            continue
        seen.add(text)
        out.append({"prompt_id": f"vbench_{len(out):04d}", "prompt": text})
    return out


def cmd_prompts(a: argparse.Namespace) -> int:
    full_info = a.full_info
    if full_info is None:
        full_info = Path(_import_vbench().__file__).resolve().parent / "VBench_full_info.json"
    rows = standard_prompts(full_info)

    atomic_write_text(a.out, jsonl_dumps(rows))
    log.info("wrote %d VBench standard prompts from %s to %s", len(rows), full_info, a.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("demo", help="weight-free dimensions (temporal flickering) of indexed videos")
    p.add_argument("--index", nargs="+", required=True, type=Path, help="sample index JSONL file(s)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--generator", required=True, help="name of the generator, written into the JSON")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("full", help="the paper's VBench evaluation through the vbench package")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--videos", type=Path, help="folder of videos named as VBench expects (module doc)")
    src.add_argument("--index", nargs="+", type=Path, help="sample index JSONL file(s); the folder is staged")
    p.add_argument("--name", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--dimensions", nargs="+", default=list(DIMENSIONS))
    p.add_argument("--mode", choices=MODES, default="vbench_standard")
    p.add_argument("--full-info", type=Path, default=None, help="VBench_full_info.json (default: vbench's own)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--work-dir", type=Path, default=None, help="VBench's output folder (default: beside --out)")
    p.set_defaults(func=cmd_full)

    p = sub.add_parser("prompts", help="VBench's standard prompt suite as a sampling prompt file (JSONL)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--full-info", type=Path, default=None, help="VBench_full_info.json (default: vbench's own)")
    p.set_defaults(func=cmd_prompts)

    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return a.func(a)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
