"""CLIP baselines: CLIPScore (text-video alignment) and CLIP-IQA (no-reference quality), as judge-format predictions.

    python -m vqinsight.baselines.clip --metric clipscore --model resources/models/clip-vit-base-patch16 \\
        --manifest results/demo/manifests/monetbench.parquet --task comparison --split test \\
        --out results/demo/eval/predictions/clipscore/monetbench.jsonl \\
        --cache-dir results/demo/frames/cache --nframes 8 --max-pixels 4704 --reader decord --scale 1 5

Both metrics are computed with torchmetrics (1.9.0) on the frames the judge sees (the shared frame cache,
`vqinsight.media.MediaLoader`); an image is a one-frame video. The value of a video is

* **CLIPScore** (`torchmetrics.multimodal.CLIPScore`): the metric over all sampled frames against the row's
  generation prompt (``prompt_text``), i.e. ``max(mean_t 100 cos(E_frame_t, E_prompt), 0)``. Prompts longer than
  the text encoder's context (77 tokens for CLIP) are cut at a word boundary first: torchmetrics would cut the token
  ids itself and lose the end-of-text token CLIP pools at.
* **CLIP-IQA** (`torchmetrics.multimodal.CLIPImageQualityAssessment`, antonym prompts "Good photo." / "Bad photo."):
  the mean over frames of P(good).

Per task: ``video_score`` / ``image_score`` predict the raw metric value (``pred``: a float, not mapped onto the
rating scale: the correlations are scale-free); ``multidim_score`` (LGVQ) fills one dimension, as in the paper's
Table 2, ``{"alignment": x}`` for CLIPScore and ``{"spatial": x}`` for CLIP-IQA; ``comparison`` writes ONE record per
pair (order ``"AB"``) whose ``margin`` is score(A) − score(B), with ``scores`` ``{"A": ., "B": .}`` and ``pred``
the preferred video ("A"/"B", null on equal scores). The comparison is symmetric, so no (B, A) order is needed.
A non-finite metric value gives ``pred`` null and no margin (counted by the metrics step).

**Models.** `--model` is a local CLIP directory (config + safetensors + processor files; the demo's is built by
`python -m vqinsight.models.tiny_clip`) or a hub id from the local HF cache. torchmetrics 1.9.0 accepts only a
fixed list of hub names, so the model is loaded here and handed over as the documented alternative, a callable
returning ``(model, processor)``. The model is `TensorFeaturesCLIP`, a minimal `CLIPModel` subclass whose
``get_image_features`` / ``get_text_features`` return the projected embedding tensor: transformers 5 returns a
``BaseModelOutputWithPooling`` there, on which torchmetrics 1.9.0 fails (Lightning-AI/torchmetrics#3407, fixed
after 1.9.0). For CLIP-IQA, ``--model clip_iqa`` selects torchmetrics' own CLIP-IQA weights (needs the `piq`
package and network access to fetch them); any other model goes through the transformers processor, which
rescales pixels by 1/255 itself, so frames are passed as 0..255 values with ``data_range=1``.

Output, resumption and provenance are those of `vqinsight.judge`: JSON lines with the judge's record layout
(``completion`` and ``answer`` null), appended batch by batch to ``<out>.partial`` (a restarted job computes only
the missing keys; a finished ``<out>`` counts as done), renamed to ``<out>`` at the end in row order, and
``<out>.meta.json`` beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import CLIPModel

from ..media import MediaLoader, add_media_args, media_spec
from ..models.load import check_local_dir, looks_local
from ..progress import progress
from ..provenance import atomic_write_text, write_meta
from ..records import Item, append_records, expand, ground_truth, load_predictions, read_done, select_rows, to_records
from ..training import seed_everything

log = logging.getLogger("vqinsight.baselines.clip")

METRICS = ("clipscore", "clip_iqa")
SCORE_TASKS = ("video_score", "image_score", "multidim_score", "comparison")
MULTIDIM_KEY = {"clipscore": "alignment", "clip_iqa": "spatial"}
PIQ_MODEL = "clip_iqa"  # torchmetrics' name for the CLIP-IQA paper's weights (fetched by piq)
IQA_PROMPTS = ("quality",)  # "Good photo." vs "Bad photo.", the CLIP-IQA paper's default


class TensorFeaturesCLIP(CLIPModel):
    """`CLIPModel` whose feature methods return the projected embeddings as a tensor (what torchmetrics expects).

    transformers 5 returns a `BaseModelOutputWithPooling` whose ``pooler_output`` holds the projected embeddings.
    """

    def get_image_features(self, pixel_values: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return _embeds(super().get_image_features(pixel_values, *args, **kwargs))

    def get_text_features(self, input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return _embeds(super().get_text_features(input_ids, *args, **kwargs))


def _embeds(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    if isinstance(out, tuple) and len(out) > 1 and isinstance(out[1], torch.Tensor):
        return out[1]
    raise TypeError(f"cannot find the projected embeddings in a {type(out).__name__}")


# ----------------------------------------------------------------------------------------------- model loading


def _is_local(name_or_path: str) -> bool:

    return Path(name_or_path).expanduser().exists() or looks_local(name_or_path)


def check_model(name_or_path: str) -> None:
    """Raise FileNotFoundError naming the path for a local model directory that is missing or has no safetensors."""
    if name_or_path == PIQ_MODEL or not _is_local(name_or_path):
        return
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"{name_or_path}: CLIP model directory not found. For the demo build it offline with "
            f"`python -m vqinsight.models.tiny_clip --out {name_or_path}`; for the paper download the weights, e.g. "
            f"`huggingface-cli download openai/clip-vit-base-patch16 --local-dir {name_or_path}`."
        )

    check_local_dir(path)


def load_clip(name_or_path: str, device: str | torch.device = "cpu") -> tuple[TensorFeaturesCLIP, Any]:
    """The CLIP model (safetensors only, eval mode, on `device`) and its `CLIPProcessor`, from a dir or hub id."""
    from transformers import CLIPProcessor

    check_model(name_or_path)
    source = str(Path(name_or_path).expanduser()) if _is_local(name_or_path) else name_or_path
    try:
        model = TensorFeaturesCLIP.from_pretrained(source, use_safetensors=True)
        processor = CLIPProcessor.from_pretrained(source)
    except OSError as e:
        if _is_local(name_or_path):
            raise OSError(f"{source}: cannot load a CLIP model and processor from this directory: {e}") from e
        raise OSError(
            f"{name_or_path}: cannot fetch this hub model ({type(e).__name__}: {e}). This machine may be offline: "
            f"pre-download it (`huggingface-cli download {name_or_path}`) or pass a local model directory."
        ) from e
    log.info("loaded CLIP %s (%d parameters)", name_or_path, sum(p.numel() for p in model.parameters()))
    return model.eval().to(device), processor


def fit_prompt(tokenizer: Any, text: str, max_tokens: int) -> str:
    """`text` cut at a word boundary so that it tokenises to at most `max_tokens` ids (special tokens included)."""
    if len(tokenizer(text)["input_ids"]) <= max_tokens:
        return text
    words = text.split()
    lo, hi = 0, len(words)
    while lo < hi:  # the longest word prefix that fits
        mid = (lo + hi + 1) // 2
        if len(tokenizer(" ".join(words[:mid]))["input_ids"]) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    if lo > 0:
        return " ".join(words[:lo])
    ids = tokenizer(text, truncation=True, max_length=max_tokens)["input_ids"]
    return tokenizer.decode(ids, skip_special_tokens=True)


# ----------------------------------------------------------------------------------------------- scoring


def as_frames(media: Any) -> torch.Tensor:
    """uint8 (T, 3, H, W) from MediaLoader output: (T, H, W, 3) video frames or a PIL image (one frame)."""
    arr = np.asarray(media.convert("RGB") if hasattr(media, "convert") else media)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) frames or an RGB image, got shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)


class ClipMetric:
    """One torchmetrics CLIP metric bound to a model: ``score(frames, prompt)`` is the value of one video."""

    def __init__(self, metric: str, model: str, device: str | torch.device = "cpu") -> None:
        from torchmetrics.multimodal import CLIPImageQualityAssessment, CLIPScore

        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
        self.name, self.device = metric, torch.device(device)
        self.max_tokens: int | None = None
        self.tokenizer = None
        if metric == "clip_iqa" and model == PIQ_MODEL:
            # torchmetrics' CLIP-IQA weights normalise pixels themselves: frames in [0, 1] after / data_range.
            self.metric = CLIPImageQualityAssessment(PIQ_MODEL, data_range=255.0, prompts=IQA_PROMPTS)
        else:
            # on the CPU first: CLIP-IQA encodes its anchor prompts on the metric's (still CPU) device at init;
            # `.to(device)` below then moves model and anchors together
            clip, processor = load_clip(model, "cpu")
            self.tokenizer = processor.tokenizer
            self.max_tokens = int(clip.config.text_config.max_position_embeddings)

            def model_and_processor() -> tuple[Any, Any]:
                return clip, processor

            if metric == "clipscore":
                self.metric = CLIPScore(model_name_or_path=model_and_processor)
            else:  # the processor rescales by 1/255 itself: pass 0..255 values unchanged
                self.metric = CLIPImageQualityAssessment(model_and_processor, data_range=1.0, prompts=IQA_PROMPTS)
        self.metric = self.metric.to(self.device)
        self.truncated = 0
        self._prompts: dict[str, str] = {}

    def prompt(self, text: str) -> str:
        """The prompt as scored: cut to the text encoder's context (see `fit_prompt`)."""
        if text not in self._prompts:
            fitted = text
            if self.tokenizer is not None and self.max_tokens is not None:
                fitted = fit_prompt(self.tokenizer, text, self.max_tokens)
            if fitted != text:
                self.truncated += 1
                log.warning("prompt cut to %d tokens for %s: %r -> %r", self.max_tokens, self.name, text, fitted)
            self._prompts[text] = fitted
        return self._prompts[text]

    @torch.no_grad()
    def score(self, frames: torch.Tensor, prompt: str | None = None) -> float:
        """The metric of one video (uint8 frames (T, 3, H, W)): see the module doc."""
        self.metric.reset()
        frames = frames.to(self.device)
        if self.name == "clipscore":
            if prompt is None:
                raise ValueError("CLIPScore needs the generation prompt")
            self.metric.update(frames, [self.prompt(prompt)] * frames.shape[0])
            return float(self.metric.compute())
        self.metric.update(frames.float())
        return float(self.metric.compute().float().mean())


# ----------------------------------------------------------------------------------------------- records


def check_rows(rows: list[dict[str, Any]], metric: str, manifest: str | os.PathLike) -> None:
    """CLIPScore needs every row's generation prompt: ValueError naming the manifest and the samples without one."""
    if metric != "clipscore":
        return
    missing = [r["sample_id"] for r in rows if not (r.get("prompt_text") or "").strip()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(
            f"{manifest}: CLIPScore needs the generation prompt (column `prompt`), missing for {len(missing)} "
            f"sample(s): {shown}"
        )


class Scorer:
    """Video scores (cached per media path and prompt) and the prediction records built from them."""

    def __init__(self, metric: ClipMetric, loader: Callable[[str, str], Any]) -> None:
        self.metric, self.loader = metric, loader
        self.cache: dict[tuple[str, str | None], float] = {}

    def video(self, path: str, media_type: str, prompt: str | None) -> float:
        key = (path, prompt if self.metric.name == "clipscore" else None)
        if key not in self.cache:
            self.cache[key] = self.metric.score(as_frames(self.loader(path, media_type)), key[1])
        return self.cache[key]

    def record(self, item: Item) -> dict[str, Any]:
        row = item.row
        task = row["task"]
        scores = [self.video(m, row["media_type"], row.get("prompt_text")) for m in row["media"]]
        finite = all(math.isfinite(s) for s in scores)
        if not finite:
            log.warning(
                "%s: non-finite %s value(s) %s; prediction left null", row["sample_id"], self.metric.name, scores
            )
        rec: dict[str, Any] = {
            "key": item.key,
            "sample_id": row["sample_id"],
            "task": task,
            "order": item.order,
            "completion": None,
            "answer": None,
            "pred": None,
            "gt": ground_truth(row),
        }
        if task == "comparison":
            if finite:
                margin = scores[0] - scores[1]
                rec["pred"] = "A" if margin > 0 else "B" if margin < 0 else None
                rec["margin"] = margin
                rec["scores"] = {"A": scores[0], "B": scores[1]}
        elif finite:
            rec["pred"] = {MULTIDIM_KEY[self.metric.name]: scores[0]} if task == "multidim_score" else scores[0]
        return rec


def finalize(partial: Path, out: Path, keys: list[str]) -> int:
    """Write the partial file's records of `keys` (first occurrence, in `keys` order) atomically to `out`."""

    by_key: dict[str, dict[str, Any]] = {}
    for rec in load_predictions(partial):
        by_key.setdefault(rec["key"], rec)
    missing = [k for k in keys if k not in by_key]
    if missing:
        raise RuntimeError(f"{partial}: {len(missing)} prediction(s) missing after the run, e.g. {missing[:3]}")
    dropped = len(by_key) - len(keys)
    if dropped:
        log.warning("%s: dropping %d record(s) of keys not selected by this run", partial, dropped)
    text = "".join(json.dumps(by_key[k], ensure_ascii=False, allow_nan=False) + "\n" for k in keys)
    atomic_write_text(out, text)
    partial.unlink()
    return len(keys)


# ----------------------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:

    ap = argparse.ArgumentParser(prog="python -m vqinsight.baselines.clip", description=__doc__.split("\n")[0])
    ap.add_argument("--metric", required=True, choices=METRICS)
    ap.add_argument(
        "--model", required=True, help=f"CLIP model: local directory or hub id ({PIQ_MODEL!r}: torchmetrics' weights)"
    )
    ap.add_argument("--manifest", required=True, help="dataset manifest (parquet)")
    ap.add_argument("--task", required=True, choices=SCORE_TASKS)
    ap.add_argument("--split", default="test", help="manifest split to score")
    ap.add_argument("--out", required=True, type=Path, help="predictions (JSON lines)")
    ap.add_argument("--batch-size", type=int, default=16, help="rows per flush to the partial file")
    ap.add_argument("--limit", type=int, default=None, help="score only the first N rows (seeded order)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    add_media_args(ap)
    a = ap.parse_args(argv)
    if a.batch_size < 1:
        ap.error(f"--batch-size must be positive, got {a.batch_size}")
    if a.metric == "clipscore" and a.model == PIQ_MODEL:
        ap.error(f"--model {PIQ_MODEL} is CLIP-IQA's own weights; CLIPScore needs a CLIP model directory or hub id")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not Path(a.manifest).is_file():
        log.error("%s: data manifest not found (build it first: snakemake %s)", a.manifest, a.manifest)
        return 2
    try:
        check_model(a.model)
    except (FileNotFoundError, NotADirectoryError) as e:
        log.error("%s", e)
        return 2
    from importlib import metadata

    if a.threads:
        torch.set_num_threads(a.threads)
    seed_everything(a.seed)
    try:
        df = select_rows([a.manifest], [a.task], a.split, limit=a.limit, seed=a.seed, drop_ties=False)
        rows = sorted(to_records(df), key=lambda r: r["sample_id"])
        check_rows(rows, a.metric, a.manifest)
    except ValueError as e:
        log.error("%s", e)
        return 2
    items = expand(rows, orders=("AB",))  # one record per pair: the margin is antisymmetric in the order
    keys = [it.key for it in items]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    partial = a.out.with_name(a.out.name + ".partial")
    if a.out.is_file() and not partial.exists():
        shutil.copyfile(a.out, partial)  # a finished output counts as done: rerunning recomputes nothing
    done = read_done(partial)
    todo = [it for it in items if it.key not in done]
    log.info("%d %s predictions (%d rows), %d already done in %s", len(items), a.metric, len(rows), len(done), partial)
    truncated = 0
    if todo:
        device = a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            metric = ClipMetric(a.metric, a.model, device)
        except (OSError, ValueError, ModuleNotFoundError) as e:
            log.error("%s", e)
            return 2
        scorer = Scorer(metric, MediaLoader(media_spec(a)))
        with progress(
            total=len(items), initial=len(items) - len(todo), desc=f"{a.metric} {a.out.stem}", unit="row"
        ) as bar:
            for s in range(0, len(todo), a.batch_size):
                batch = todo[s : s + a.batch_size]
                append_records(partial, [scorer.record(it) for it in batch])
                bar.update(len(batch))
        truncated = metric.truncated
    partial.touch()
    write_meta(
        a.out.with_name(a.out.name + ".meta.json"),
        {k: str(v) for k, v in vars(a).items()},
        n_rows=len(rows),
        n_predictions=len(items),
        resumed_with=len(done),
        computed=len(todo),
        prompts_truncated=truncated,
        torchmetrics=metadata.version("torchmetrics"),
    )
    n = finalize(partial, a.out, keys)
    log.info("wrote %s (%d predictions)", a.out, n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
