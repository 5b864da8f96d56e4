"""GRPO training of the judge (stage 1: images; stage 2: video tasks with temporal and length rewards).

    accelerate launch --config_file config/accelerate/zero3.yaml --num_processes 8 -m vqinsight.grpo \\
        --recipe config/recipes/paper_stage2.yaml --model results/paper/grpo/stage1/model \\
        --manifests results/paper/manifests/visionreward.parquet --tasks comparison vqa \\
        --output-dir results/paper/grpo/stage2/comp/model \\
        --checkpoint-dir results/paper/grpo/stage2/comp/checkpoints \\
        --cache-dir results/paper/frames/cache --nframes 16 --max-pixels 100352

Checkpoints are written every `save_steps` to --checkpoint-dir (never to the output directory, which Snakemake
clears before a job); a checkpoint counts once its `COMPLETE` marker exists, and a rerun resumes from the newest
complete one. The final model, `curves.csv` (every logged metric per step), `eval.json` (held-out metrics before and
after) and `meta.json` go to --output-dir, written atomically.
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

from ..config import recipe_from_mapping
from ..media import MediaLoader, add_media_args, media_spec, processor_pixels
from ..provenance import atomic_write_json, atomic_write_text, write_meta
from ..records import select_rows, swapped, to_records
from ..training import (
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
from .reward_funcs import build_correctness, build_reward_funcs

log = logging.getLogger("vqinsight.grpo")


@dataclass
class Recipe:
    """A stage recipe (config/recipes/*.yaml). Every key is required to be known: typos are errors."""

    trainer: dict[str, Any]
    rewards: dict[str, Any]
    prompt_style: str = "full"
    temporal: dict[str, Any] = field(default_factory=lambda: {"enabled": False})
    limit: int | None = None
    eval: dict[str, Any] = field(default_factory=dict)
    #: policy-gradient weight of completion tokens outside <answer>...</answer> (1.0 = standard GRPO, the paper)
    outside_answer_weight: float = 1.0
    #: train every comparison pair in both orders, (A, B) and (B, A) with the label swapped (false = the paper)
    comparison_both_orders: bool = False
    #: rollout generation: "hf" (transformers generate()) or "static" (vqinsight.fastdecode.StaticDecoder)
    rollout_engine: str = "hf"
    #: torch.compile the static engine's decode step: true / false; absent = on CUDA only (docs/PERFORMANCE.md)
    rollout_compile: bool | None = None
    #: decode the frame-shuffled rollouts in the ordered rollouts' batch (static engine; docs/PERFORMANCE.md)
    merge_shuffled_rollouts: bool = True
    #: with trainer.gradient_checkpointing: recompute only the first N language-model layers, the rest keep their
    #: activations (more memory, less backward work; docs/PERFORMANCE.md); absent = every layer
    checkpoint_layers: int | None = None
    #: vision tower once per distinct image / video in the training forwards (same math, fewer tower calls)
    share_vision: bool = True
    #: attention kernels of the policy (and its reference): "sdpa", "eager", "flash_attention_2"; None keeps the
    #: transformers default (sdpa). The demo's tiny CPU model trains faster with "eager" (docs/PERFORMANCE.md)
    attn_implementation: str | None = None

    def __post_init__(self) -> None:
        if self.prompt_style not in ("full", "short"):
            raise ValueError(f"prompt_style must be 'full' or 'short', got {self.prompt_style!r}")
        for k in ("num_generations", "max_completion_length", "learning_rate", "beta"):
            if k not in self.trainer:
                raise ValueError(f"trainer.{k} is required (the paper fixes it; no silent default)")
        if self.attn_implementation not in (None, "sdpa", "eager", "flash_attention_2", "flash_attention_3"):
            raise ValueError(
                "attn_implementation must be sdpa, eager, flash_attention_2 or flash_attention_3 (or absent), "
                f"got {self.attn_implementation!r}"
            )
        if self.rollout_engine not in ("hf", "static", "batch"):
            raise ValueError(f"rollout_engine must be 'hf', 'static' or 'batch', got {self.rollout_engine!r}")
        if self.rollout_compile is not None and not isinstance(self.rollout_compile, bool):
            raise ValueError(f"rollout_compile must be true or false (or absent), got {self.rollout_compile!r}")
        if self.rollout_compile and self.rollout_engine != "static":
            raise ValueError("rollout_compile: true needs rollout_engine: static")
        if not isinstance(self.merge_shuffled_rollouts, bool):
            raise ValueError(f"merge_shuffled_rollouts must be true or false, got {self.merge_shuffled_rollouts!r}")
        if self.checkpoint_layers is not None:
            if isinstance(self.checkpoint_layers, bool) or not isinstance(self.checkpoint_layers, int):
                raise ValueError(f"checkpoint_layers must be an integer (or absent), got {self.checkpoint_layers!r}")
            if self.checkpoint_layers < 0:
                raise ValueError(f"checkpoint_layers must be >= 0, got {self.checkpoint_layers}")
            if not self.trainer.get("gradient_checkpointing"):
                raise ValueError("checkpoint_layers needs trainer.gradient_checkpointing: true")
        if not 0.0 <= float(self.outside_answer_weight) <= 1.0:
            raise ValueError(f"outside_answer_weight must be in [0, 1], got {self.outside_answer_weight!r}")
        unknown = set(self.temporal) - {"enabled", "rollouts", "alpha", "mu", "strict", "score_tolerance", "correct"}
        if unknown:
            raise ValueError(f"unknown temporal key(s) {sorted(unknown)}")
        if self.temporal.get("correct", "tolerance") not in ("tolerance", "reward"):
            raise ValueError(f"temporal.correct must be 'tolerance' or 'reward', got {self.temporal['correct']!r}")

    @classmethod
    def load(cls, path: str | Path, override: dict[str, Any] | None = None) -> Recipe:
        """The recipe file, with `override` (nested keys, e.g. an ablation's) deep-merged on top."""
        data = deep_merge(yaml.safe_load(Path(path).read_text()) or {}, override or {})
        return recipe_from_mapping(cls, data, path, trainer_config="GRPOConfig")


def with_both_orders(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with every comparison also in the swapped order (videos exchanged, label flipped), each copy right
    after its original; the copy's sample_id ends in ``|BA``. Balances the A/B labels exactly, so a constant answer
    earns no choice reward on average."""
    out: list[dict[str, Any]] = []
    for r in rows:
        out.append(r)
        if r.get("task") == "comparison":
            out.append({**swapped(r), "sample_id": f"{r['sample_id']}|BA"})
    return out


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` with `over` merged in: nested dicts merge key by key, anything else is replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", required=True, type=Path)
    ap.add_argument(
        "--recipe-override", type=json.loads, default=None, help="JSON object deep-merged into the recipe (ablations)"
    )
    ap.add_argument("--model", required=True, help="init model: hub id or local directory")
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
    recipe = Recipe.load(a.recipe, a.recipe_override)
    for m in [*a.manifests, *a.eval_manifests]:
        if not Path(m).is_file():
            log.error("%s: data manifest not found (run the manifest rule: snakemake %s)", m, m)
            return 2
    # torch and the modules that import it: here, not at the top, because the Snakefile imports this module's
    # Recipe at DAG start (rules/checks.smk), where a torch import would cost seconds per snakemake call
    import torch
    from trl import GRPOConfig

    from ..callbacks import trainer_callbacks
    from ..models.load import load_model_and_processor
    from .data import build_dataset
    from .heldout import evaluate
    from .trainer import VideoGRPOTrainer

    if a.threads:
        torch.set_num_threads(a.threads)
    seed_everything(a.seed)
    scale = (a.scale[0], a.scale[1])
    cuda = torch.cuda.is_available()
    tk = cpu_float32(dict(recipe.trainer), cuda, log)
    dtype = "bfloat16" if cuda and tk.get("bf16") else "float32"
    try:
        model, processor = load_model_and_processor(
            a.model,
            trust_remote_code=a.trust_remote_code,
            dtype=dtype,
            attn_implementation=recipe.attn_implementation,
            **processor_pixels(a),
        )
    except (FileNotFoundError, OSError) as e:
        log.error("%s", e)
        return 2
    loader = MediaLoader(media_spec(a))
    rows = to_records(select_rows(a.manifests, a.tasks, a.split, limit=recipe.limit, seed=a.seed))
    if recipe.comparison_both_orders:
        rows = with_both_orders(rows)
    dataset = build_dataset(rows, loader, recipe.prompt_style, scale)
    reward_spec = {
        **recipe.rewards,
        "score_min": scale[0],
        "score_max": scale[1],
        "group_size": recipe.trainer["num_generations"],
    }
    funcs, weights = build_reward_funcs(reward_spec)

    if int(os.environ.get("RANK", "0")) == 0:
        claim_checkpoint_dir(a.checkpoint_dir, run_fingerprint(a))
    eval_rows = held_out_rows(a, recipe.eval)
    gen_kw = {
        "batch_size": recipe.eval.get("batch_size", 32),
        "max_new_tokens": recipe.eval.get("max_new_tokens", tk["max_completion_length"]),
    }
    before_path = a.checkpoint_dir / "eval_before.json"
    is_main = int(os.environ.get("RANK", "0")) == 0
    if eval_rows and not before_path.exists() and is_main:
        model.to(training_device(cuda))  # the trainer has not placed it yet
        atomic_write_json(
            before_path, evaluate(model, processor, eval_rows, loader, recipe.prompt_style, scale, **gen_kw)
        )

    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(a.checkpoint_dir / "tensorboard"))
    tk.setdefault("save_steps", 50)
    tk.setdefault("logging_steps", 10)
    args = GRPOConfig(
        output_dir=str(a.checkpoint_dir),
        save_strategy="steps",
        seed=a.seed,
        use_cpu=not cuda,
        report_to=["tensorboard"],
        reward_weights=weights,
        remove_unused_columns=False,
        **tk,
    )
    t = recipe.temporal
    trainer = VideoGRPOTrainer(
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        callbacks=trainer_callbacks(a.checkpoint_dir / "curves.live.csv"),
        temporal=bool(t.get("enabled", False)),
        temporal_rollouts=t.get("rollouts"),
        alpha=t.get("alpha", 0.3),
        mu=t.get("mu", 0.8),
        strict=t.get("strict", True),
        score_tolerance=t.get("score_tolerance", 0.5),
        correctness=build_correctness(
            reward_spec, t.get("correct", "tolerance"), score_tolerance=t.get("score_tolerance", 0.5)
        ),
        outside_answer_weight=recipe.outside_answer_weight,
        rollout_engine=recipe.rollout_engine,
        rollout_compile=recipe.rollout_compile,
        merge_shuffled_rollouts=recipe.merge_shuffled_rollouts,
        checkpoint_layers=recipe.checkpoint_layers,
        share_vision=bool(recipe.share_vision),
    )
    resume = latest_checkpoint(a.checkpoint_dir)
    if resume is not None:
        log.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    out = save_final(trainer, processor, a.output_dir)  # collective under ZeRO-3
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
            global_step=trainer.state.global_step,
            resumed_from=result["resumed_from"],
        )
        log.info("saved %s (step %d)", out, trainer.state.global_step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
