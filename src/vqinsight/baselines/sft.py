"""Qwen-SFT baseline: supervised finetuning of the base VLM on a GRPO task model's training data (TRL SFTTrainer).

    accelerate launch --config_file config/accelerate/zero3.yaml --num_processes 8 -m vqinsight.baselines.sft \\
        --recipe config/recipes/paper_sft.yaml --model resources/models/Qwen2.5-VL-7B-Instruct \\
        --manifests results/paper/manifests/visionreward.parquet --tasks comparison vqa \\
        --eval-manifests results/paper/manifests/visionreward.parquet \\
        --output-dir results/paper/baselines/sft/comp/model \\
        --checkpoint-dir results/paper/baselines/sft/comp/checkpoints \\
        --cache-dir results/paper/frames/cache --nframes 16 --max-pixels 100352

The rows, prompts (recipe `prompt_style`) and media are exactly those the GRPO judge sees (`grpo.data`); the target
of each row is its ground truth in the judge's answer format with an empty reasoning block,
`<think></think><answer>{answer}</answer>` + eos, and the loss covers those completion tokens only.

TRL's SFTTrainer (trl==1.16.0) collates images only (`DataCollatorForVisionLanguageModeling` never passes videos to
the processor), so this module gives it its own collator (`VideoSFTCollator`), which builds the processor inputs with
`grpo.data.encode_batch` (videos, images, the chat template) and the completion-only labels. The training dataset
holds plain row fields; `dataset_kwargs={"skip_prepare_dataset": True}` skips TRL's tokenisation and
`remove_unused_columns=False` keeps the fields for the collator.

Checkpoints, resuming, `curves.csv`, `eval.json` (held-out metrics before and after, `grpo.heldout.evaluate`) and
`meta.json` work as in `vqinsight.grpo.train`: both use `vqinsight.training` and `vqinsight.callbacks`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..answer_format import DIMENSIONS, VIDEO_NAMES, completion, dimensions_answer, score_answer
from ..config import recipe_from_mapping
from ..media import MediaLoader, add_media_args, media_spec, processor_pixels
from ..provenance import atomic_write_json, atomic_write_text, write_meta
from ..records import select_rows, to_records
from ..training import (
    CheckpointResume,
    claim_checkpoint_dir,
    cpu_float32,
    curves_table,
    held_out_rows,
    is_zero3,
    latest_checkpoint,
    run_fingerprint,
    save_final,
    seed_everything,
    training_device,
)

log = logging.getLogger("vqinsight.baselines.sft")

# Set by this command; a recipe that sets them is an error rather than silently overridden.
RESERVED_TRAINER_KEYS = (
    "output_dir",
    "seed",
    "use_cpu",
    "save_strategy",
    "report_to",
    "remove_unused_columns",
    "dataset_kwargs",
)
EVAL_KEYS = ("n", "batch_size", "max_new_tokens")


@dataclass
class SFTRecipe:
    """An SFT recipe (config/recipes/*_sft.yaml); `trainer` holds keyword arguments of `trl.SFTConfig`.

    Every key is required to be known: typos are errors.
    """

    trainer: dict[str, Any]
    prompt_style: str = "full"
    limit: int | None = None
    eval: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.prompt_style not in ("full", "short"):
            raise ValueError(f"prompt_style must be 'full' or 'short', got {self.prompt_style!r}")
        if "learning_rate" not in self.trainer:
            raise ValueError("trainer.learning_rate is required (no silent default)")
        if "max_steps" not in self.trainer and "num_train_epochs" not in self.trainer:
            raise ValueError("trainer.max_steps or trainer.num_train_epochs is required (no silent default)")
        reserved = sorted(set(self.trainer) & set(RESERVED_TRAINER_KEYS))
        if reserved:
            raise ValueError(f"trainer key(s) {reserved} are set by the command, not by the recipe")
        unknown = sorted(set(self.eval) - set(EVAL_KEYS))
        if unknown:
            raise ValueError(f"unknown eval key(s) {unknown}; known: {list(EVAL_KEYS)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be positive or null, got {self.limit}")

    @classmethod
    def load(cls, path: str | Path) -> SFTRecipe:
        return recipe_from_mapping(cls, yaml.safe_load(Path(path).read_text()) or {}, path, trainer_config="SFTConfig")


# ---------------------------------------------------------------------------------------------------------------
# targets
# ---------------------------------------------------------------------------------------------------------------
def answer_text(row: dict[str, Any], style: str = "full") -> str:
    """The row's ground truth as the judge answers it (scores with two decimals, 'Video A'/'Video B', yes/no).

    Multi-dimension scores are a JSON object, or three numbers (spatial temporal alignment) in the short style.
    """
    task, sid = row["task"], row.get("sample_id")
    if task in ("image_score", "video_score"):
        if row.get("gt_score") is None:
            raise ValueError(f"{sid}: {task} row without gt_score")
        return score_answer(row["gt_score"])
    if task == "multidim_score":
        d = row.get("gt_scores") or {}
        if any(d.get(k) is None for k in DIMENSIONS):
            raise ValueError(f"{sid}: multidim_score row without all of gt_scores.{'/'.join(DIMENSIONS)}")
        return dimensions_answer(d, style)
    if task == "comparison":
        choice = row.get("gt_choice")
        if choice not in ("A", "B"):
            raise ValueError(
                f"{sid}: comparison target must be gt_choice 'A' or 'B' (ties are dropped), got {choice!r}"
            )
        return VIDEO_NAMES[choice]
    if task == "vqa":
        choice = row.get("gt_choice")
        if choice not in ("yes", "no"):
            raise ValueError(f"{sid}: vqa target must be gt_choice 'yes' or 'no', got {choice!r}")
        return choice
    raise ValueError(f"{sid}: no SFT target for task {task!r}")


def target_text(row: dict[str, Any], style: str = "full") -> str:
    """`<think></think><answer>{answer}</answer>` (the eos token is appended by the collator)."""
    return completion("", answer_text(row, style))


# ---------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------
ROW_FIELDS = ("sample_id", "task", "media_type", "media", "prompt_text", "question")


def build_sft_dataset(rows: list[dict[str, Any]], style: str = "full"):
    """A plain `datasets.Dataset` of the row fields the prompt needs plus the `completion` text (no media decoded)."""
    from datasets import Dataset

    table: dict[str, list] = {c: [r[c] for r in rows] for c in ROW_FIELDS}
    table["completion"] = [target_text(r, style) for r in rows]
    return Dataset.from_dict(table)


@dataclass
class VideoSFTCollator:
    """Batches of SFT rows → processor inputs (videos and images decoded) with labels on the completion only.

    The prompt is the GRPO judge's chat (`encode_batch`); the completion (target + eos) is appended to the rendered
    chat text and the batch is right-padded. The labels are the last `len(completion tokens)` real tokens of each row;
    the collator checks that these are exactly the completion tokenised on its own (what the model generates), so a
    tokenizer merge across the prompt/completion boundary is an error instead of a silently shifted mask.
    """

    processor: Any
    loader: Any
    style: str
    scale: tuple[float, float]

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        from ..grpo.data import encode_batch

        tok = self.processor.tokenizer
        comps = [f["completion"] + tok.eos_token for f in features]
        rows = [{k: f[k] for k in ROW_FIELDS} for f in features]
        inp = encode_batch(
            self.processor, rows, self.loader, self.style, self.scale, suffixes=comps, padding_side="right"
        )
        ids = inp["input_ids"]
        labels = torch.full_like(ids, -100)
        for i, c in enumerate(comps):
            comp_ids = torch.tensor(tok(c, add_special_tokens=False)["input_ids"], dtype=ids.dtype)
            n = int(inp["attention_mask"][i].sum())
            span = ids[i, n - len(comp_ids) : n]
            if not torch.equal(span, comp_ids):
                raise ValueError(
                    f"{features[i]['sample_id']}: the completion {c!r} tokenises differently after the prompt than on "
                    "its own; the completion-only label mask would be misaligned"
                )
            labels[i, n - len(comp_ids) : n] = span
        return {**inp, "labels": labels}


# ---------------------------------------------------------------------------------------------------------------
# command
# ---------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m vqinsight.baselines.sft", description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", required=True, type=Path)
    ap.add_argument("--model", required=True, help="base model: hub id or local directory")
    ap.add_argument("--manifests", nargs="+", required=True)
    ap.add_argument("--tasks", nargs="+", required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--output-dir", required=True, type=Path)
    ap.add_argument("--checkpoint-dir", required=True, type=Path)
    ap.add_argument("--eval-manifests", nargs="*", default=[])
    ap.add_argument("--eval-split", default="test")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    ap.add_argument("--trust-remote-code", action="store_true")
    add_media_args(ap)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not a.recipe.is_file():
        log.error("%s: recipe not found", a.recipe)
        return 2
    try:
        recipe = SFTRecipe.load(a.recipe)
    except ValueError as e:
        log.error("%s", e)
        return 2
    for m in [*a.manifests, *a.eval_manifests]:
        if not Path(m).is_file():
            log.error("%s: data manifest not found (run the manifest rule: snakemake %s)", m, m)
            return 2
    # torch and the modules that import it: here, not at the top, because the Snakefile imports this module's
    # SFTRecipe at DAG start (rules/checks.smk)
    import torch
    from trl import SFTConfig, SFTTrainer

    from ..callbacks import trainer_callbacks
    from ..grpo.heldout import evaluate
    from ..models.load import load_model_and_processor

    if a.threads:
        torch.set_num_threads(a.threads)
    seed_everything(a.seed)
    scale = (a.scale[0], a.scale[1])
    cuda = torch.cuda.is_available()
    tk = cpu_float32(dict(recipe.trainer), cuda, log)
    dtype = "bfloat16" if cuda and tk.get("bf16") else "float32"
    try:
        model, processor = load_model_and_processor(
            a.model, trust_remote_code=a.trust_remote_code, dtype=dtype, **processor_pixels(a)
        )
    except (FileNotFoundError, OSError) as e:
        log.error("%s", e)
        return 2
    loader = MediaLoader(media_spec(a))
    rows = to_records(select_rows(a.manifests, a.tasks, a.split, limit=recipe.limit, seed=a.seed))
    dataset = build_sft_dataset(rows, recipe.prompt_style)
    log.info("SFT target example: %r", dataset[0]["completion"])

    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        claim_checkpoint_dir(a.checkpoint_dir, run_fingerprint(a))
    eval_rows = held_out_rows(a, recipe.eval)
    gen_kw = {"batch_size": recipe.eval.get("batch_size", 32), "max_new_tokens": recipe.eval.get("max_new_tokens", 64)}
    before_path = a.checkpoint_dir / "eval_before.json"
    if eval_rows and not before_path.exists() and rank == 0:
        model.to(training_device(cuda))  # the trainer has not placed it yet
        atomic_write_json(
            before_path, evaluate(model, processor, eval_rows, loader, recipe.prompt_style, scale, **gen_kw)
        )

    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(a.checkpoint_dir / "tensorboard"))
    tk.setdefault("save_steps", 50)
    tk.setdefault("logging_steps", 10)
    tk.setdefault("max_length", None)  # the collator never truncates: a cut would drop the completion
    try:
        args = SFTConfig(
            output_dir=str(a.checkpoint_dir),
            save_strategy="steps",
            seed=a.seed,
            use_cpu=not cuda,
            report_to=["tensorboard"],
            remove_unused_columns=False,  # the collator needs the row fields, which are no model inputs
            dataset_kwargs={"skip_prepare_dataset": True},  # no TRL tokenisation: the collator builds the inputs
            **tk,
        )
    except TypeError as e:
        log.error("%s: trainer: %s", a.recipe, e)
        return 2
    # resuming loads every weight of the checkpoint (CheckpointResume)
    trainer = type("VideoSFTTrainer", (CheckpointResume, SFTTrainer), {})(
        model=model,
        args=args,
        data_collator=VideoSFTCollator(processor, loader, recipe.prompt_style, scale),
        train_dataset=dataset,
        processing_class=processor,
        callbacks=trainer_callbacks(a.checkpoint_dir / "curves.live.csv"),
    )
    resume = latest_checkpoint(a.checkpoint_dir)
    if resume is not None:
        log.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    out = save_final(trainer, processor, a.output_dir)
    if trainer.accelerator.is_main_process:
        atomic_write_text(out / "curves.csv", curves_table(trainer.state.log_history))
        result: dict[str, Any] = {
            "resumed_from": str(resume) if resume else None,
            "global_step": trainer.state.global_step,
        }
        if eval_rows:
            eval_model = trainer.model
            if is_zero3(trainer):  # partitioned parameters: evaluate the gathered weights just saved
                eval_model = load_model_and_processor(str(out), dtype=dtype)[0].to(trainer.args.device)
            result["before"] = json.loads(before_path.read_text())
            result["after"] = evaluate(eval_model, processor, eval_rows, loader, recipe.prompt_style, scale, **gen_kw)
        atomic_write_json(out / "eval.json", result)
        write_meta(
            out / "meta.json",
            {"recipe": asdict(recipe), "args": {k: str(v) for k, v in vars(a).items()}},
            method="Qwen-SFT",
            train_rows=len(rows),
            global_step=trainer.state.global_step,
            resumed_from=result["resumed_from"],
        )
        log.info("saved %s (step %d)", out, trainer.state.global_step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
