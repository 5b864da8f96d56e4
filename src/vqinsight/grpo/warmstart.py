"""Format-only warm start of the demo's tiny VLM (the `demo_base` rule): the demo's stand-in for a pretrained VLM.

    python -m vqinsight.grpo.warmstart --base results/demo/models/tiny --out results/demo/models/demo_base \\
        --manifests results/demo/manifests/koniq.parquet ... --tasks image_score video_score ... \\
        --cache-dir results/demo/frames/cache --nframes 4 --max-pixels 4704

A randomly initialised model cannot emit `<think>…</think><answer>…</answer>`, so GRPO would get no reward
signal. This supervised warm start teaches the answer FORMAT of each task only: the answers it is trained on
(scores, dimension scores, Video A/B, yes/no) are drawn at random, independent of the media, so any correlation
with quality that appears later was learned by GRPO. The think text is fixed ("ok"): with a tiny model, random
think text takes most of the policy-gradient variance (measured in the CPU feasibility run the demo follows).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from ..media import MediaLoader, add_media_args, media_spec, processor_pixels
from ..provenance import write_meta
from ..records import select_rows, to_records
from ..training import save_atomically, seed_everything
from .data import encode_batch

log = logging.getLogger("vqinsight.warmstart")
THINK = "ok"


def random_answer(task: str, rng: np.random.Generator, scale: tuple[float, float], style: str = "full") -> str:
    """An answer in the task's format, drawn independently of the media.

    Multi-dimension answers are a JSON object, or in the short style the compact "spatial temporal alignment" form
    (three numbers), which fits the demo's short completions (a byte-level tokenizer spends a token per character).
    """
    lo, hi = int(np.ceil(scale[0])), int(np.floor(scale[1]))
    if task in ("image_score", "video_score"):
        return str(int(rng.integers(lo, hi + 1)))
    if task == "multidim_score":
        s, t, a = (int(x) for x in rng.integers(lo, hi + 1, 3))
        if style == "short":
            return f"{s} {t} {a}"
        return f'{{"spatial": {s}, "temporal": {t}, "alignment": {a}}}'
    if task == "comparison":
        return "Video A" if rng.random() < 0.5 else "Video B"
    if task == "vqa":
        return "yes" if rng.random() < 0.5 else "no"
    raise ValueError(f"no answer format for task {task!r}")


def completion_text(task: str, rng: np.random.Generator, scale: tuple[float, float], style: str = "full") -> str:
    return f"<think>{THINK}</think><answer>{random_answer(task, rng, scale, style)}</answer>"


def _batch(processor, rows, loader, style, scale, rng, free_choice: bool = False):
    """Tokenised prompt+completion batch with labels on the completion tokens only.

    ``free_choice``: for comparisons, the verdict letter after "Video " carries no loss, so the warm start teaches
    the format without training the verdict towards a media-independent 50/50 (random labels would)."""
    import torch

    tok = processor.tokenizer
    comps = [completion_text(r["task"], rng, scale, style) + tok.eos_token for r in rows]
    inp = encode_batch(processor, rows, loader, style, scale, suffixes=comps, padding_side="right")
    labels = torch.full_like(inp["input_ids"], -100)
    for i, c in enumerate(comps):
        n_comp = len(tok(c, add_special_tokens=False)["input_ids"])
        n = int(inp["attention_mask"][i].sum())
        labels[i, n - n_comp : n] = inp["input_ids"][i, n - n_comp : n]
        if free_choice and rows[i]["task"] == "comparison":
            head = c[: c.index("<answer>Video ") + len("<answer>Video ")]
            letter = n - n_comp + len(tok(head, add_special_tokens=False)["input_ids"])
            labels[i, letter] = -100
    return inp, labels


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--manifests", nargs="+", required=True)
    ap.add_argument("--tasks", nargs="+", required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--style", choices=("full", "short"), default="short")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--free-choice", action="store_true", help="no loss on the comparison verdict letter")
    add_media_args(ap)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch
    from tqdm import tqdm

    from ..models.load import load_model_and_processor

    if a.threads:
        torch.set_num_threads(a.threads)
    seed_everything(a.seed)
    scale = (a.scale[0], a.scale[1])
    model, processor = load_model_and_processor(a.base, dtype="float32", **processor_pixels(a))
    rows = to_records(select_rows(a.manifests, a.tasks, a.split, seed=a.seed))
    loader = MediaLoader(media_spec(a))
    rng = np.random.default_rng(a.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    model.train()
    history = []
    for step in (bar := tqdm(range(a.steps), desc="warm start", unit="step", disable=None)):
        batch = [rows[int(i)] for i in rng.integers(0, len(rows), a.batch_size)]
        inp, labels = _batch(processor, batch, loader, a.style, scale, rng, a.free_choice)
        loss = model(**inp, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({"step": step + 1, "loss": float(loss)})
        bar.set_postfix(loss=f"{float(loss):.3f}")
        if step % 25 == 0 or step == a.steps - 1:
            log.info("step %d loss %.4f", step + 1, float(loss))
    save_atomically(model, processor, a.out)
    (a.out / "warmstart_curve.json").write_text(json.dumps(history))
    write_meta(
        a.out / "meta.json",
        {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        final_loss=history[-1]["loss"] if history else None,
        rows=len(rows),
    )
    log.info("saved warm-started model to %s", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
