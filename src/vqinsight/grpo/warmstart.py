"""Format-only warm start of the demo's tiny VLM (the `demo_base` rule): the demo's stand-in for a pretrained VLM.

    python -m vqinsight.grpo.warmstart --base results/demo/models/tiny --out results/demo/models/demo_base \\
        --manifests results/demo/manifests/koniq.parquet ... --tasks image_score video_score ... \\
        --cache-dir results/demo/frames/cache --nframes 4 --max-pixels 4704

A randomly initialised model cannot emit `<think>…</think><answer>…</answer>`, so GRPO would get no reward
signal. This supervised warm start teaches the answer FORMAT of each task only: the answers it is trained on
(scores, dimension scores, Video A/B, yes/no) are drawn at random, independent of the media, so any correlation
with quality that appears later was learned by GRPO. The think text is fixed ("ok"): with a tiny model, random
think text takes most of the policy-gradient variance (measured in the CPU feasibility run the demo follows).

By default (``--answers uniform``) each answer choice token (a score digit, a dimension score's digit, the verdict
letter) is trained towards the UNIFORM distribution over the task's choices rather than towards one sampled choice:
the expectation of the random-answer loss, without its noise. Trained on sampled answers, the last few batches'
draws leave the start with a skewed answer distribution that depends on the image (on the demo's seeds the most
likely digit got 0.27-0.30 of the mass, and some starts ranked the images against the score), and whether GRPO
learns from such a start depended on the seed and the CPU's float summation order (docs/DEMO_LEARNING.md).
``--answers free`` puts no loss on the choice tokens: a warm start from a trained model (stage 2's, from the stage-1
model) then teaches the new format and leaves the start model's own choices where they are, which is what the
paper's progressive training carries from one stage to the next. ``--answers sampled`` trains on sampled answers.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from ..answer_format import ANSWER_CLOSE, ANSWER_OPEN, DIMENSIONS, VIDEO_NAMES, YES_NO, completion, dimensions_answer
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
        values = (int(x) for x in rng.integers(lo, hi + 1, len(DIMENSIONS)))
        return dimensions_answer(dict(zip(DIMENSIONS, values, strict=True)), style, decimals=0)
    if task == "comparison":
        return VIDEO_NAMES["A"] if rng.random() < 0.5 else VIDEO_NAMES["B"]
    if task == "vqa":
        return YES_NO[0] if rng.random() < 0.5 else YES_NO[1]
    raise ValueError(f"no answer format for task {task!r}")


def completion_text(task: str, rng: np.random.Generator, scale: tuple[float, float], style: str = "full") -> str:
    return completion(THINK, random_answer(task, rng, scale, style))


def choice_positions(task: str, text: str, scale: tuple[float, float]) -> list[tuple[int, list[str]]]:
    """Character offsets of the answer CHOICES in a completion, each with the strings the choice ranges over.

    Score digits range over the scale's integers when each is one character (a 1-5 scale; a 0-100 scale has none),
    the verdict letter over "A"/"B". Yes/no answers differ in length, so they have none.
    """
    lo, hi = int(np.ceil(scale[0])), int(np.floor(scale[1]))
    digits = [str(d) for d in range(lo, hi + 1)] if 0 <= lo and hi <= 9 else []
    start = text.index(ANSWER_OPEN) + len(ANSWER_OPEN)
    end = text.index(ANSWER_CLOSE)
    if task in ("image_score", "video_score", "multidim_score"):
        return [(k, digits) for k in range(start, end) if digits and text[k] in digits]
    if task == "comparison":
        # the letter where the verdict names differ ("Video A" / "Video B")
        a, b = VIDEO_NAMES["A"], VIDEO_NAMES["B"]
        k = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
        at = text.index(a[:k], start) + k
        return [(at, [a[k], b[k]])]
    return []


def _batch(processor, rows, loader, style, scale, rng, free_choice: bool = False, answers: str = "sampled"):
    """Tokenised prompt+completion batch with labels on the completion tokens only.

    ``free_choice``: for comparisons, the verdict letter after "Video " carries no loss, so the warm start teaches
    the format without training the verdict towards a media-independent 50/50 (random labels would).
    ``answers``: "sampled" labels the sampled answer; "uniform" leaves the answer choice tokens unlabelled and returns
    them as ``(row, position, token ids)`` targets of a uniform distribution over the choices (see `loss`); "free"
    leaves them unlabelled with no target at all. Returns ``(inputs, labels, choices)``.
    """
    import torch

    tok = processor.tokenizer
    comps = [completion_text(r["task"], rng, scale, style) + tok.eos_token for r in rows]
    inp = encode_batch(processor, rows, loader, style, scale, suffixes=comps, padding_side="right")
    labels = torch.full_like(inp["input_ids"], -100)
    choices: list[tuple[int, int, list[int]]] = []

    def position(n: int, n_comp: int, head: str) -> int:
        return n - n_comp + len(tok(head, add_special_tokens=False)["input_ids"])

    for i, c in enumerate(comps):
        n_comp = len(tok(c, add_special_tokens=False)["input_ids"])
        n = int(inp["attention_mask"][i].sum())
        labels[i, n - n_comp : n] = inp["input_ids"][i, n - n_comp : n]
        if free_choice and rows[i]["task"] == "comparison":
            (k, _), *_ = choice_positions("comparison", c, scale)
            labels[i, position(n, n_comp, c[:k])] = -100
        if answers in ("uniform", "free"):
            for k, options in choice_positions(rows[i]["task"], c, scale):
                ids = [tok(o, add_special_tokens=False)["input_ids"] for o in options]
                if any(len(x) != 1 for x in ids):
                    continue  # a choice of several tokens: trained on the sampled answer
                pos = position(n, n_comp, c[:k])
                if labels[i, pos] == -100:  # freed by free_choice
                    continue
                labels[i, pos] = -100
                if answers == "uniform":
                    choices.append((i, pos, [x[0] for x in ids]))
    return inp, labels, choices


def loss(logits, labels, choices):
    """Mean next-token cross-entropy over the labelled tokens and the choice tokens, the latter against a uniform
    target over their options (the expectation of the loss on an answer sampled uniformly)."""
    import torch
    import torch.nn.functional as F

    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    target = labels[:, 1:]
    mask = target != -100
    total = -logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)[mask].sum()
    for i, pos, ids in choices:
        total = total - logp[i, pos - 1, torch.tensor(ids)].mean()
    return total / (int(mask.sum()) + len(choices))


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
    ap.add_argument(
        "--answers",
        choices=("uniform", "free", "sampled"),
        default="uniform",
        help="answer choice tokens (score digits, verdict letter) trained towards the uniform distribution over the "
        "choices, left free (no loss: the start model's own choice stays), or towards a sampled choice",
    )
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
        inp, labels, choices = _batch(processor, batch, loader, a.style, scale, rng, a.free_choice, a.answers)
        loss_value = loss(model(**inp).logits, labels, choices)
        opt.zero_grad()
        loss_value.backward()
        opt.step()
        history.append({"step": step + 1, "loss": float(loss_value)})
        bar.set_postfix(loss=f"{float(loss_value):.3f}")
        if step % 25 == 0 or step == a.steps - 1:
            log.info("step %d loss %.4f", step + 1, float(loss_value))
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
