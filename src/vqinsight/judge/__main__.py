"""Judge inference over a manifest: score, multi-dimension score, pairwise comparison and yes/no answers.

    python -m vqinsight.judge --model results/demo/grpo/stage2/comp/model \\
        --manifest results/demo/manifests/monetbench.parquet --task comparison --split test \\
        --out results/demo/eval/predictions/vqinsight/monetbench.jsonl --style short <media args>

One JSON line per (row, order). Comparisons are judged in both orders, (A, B) and (B, A), so the report can give
the swap-flip rate and the margin is free of position bias. The margin (``--margin prob`` or ``votes``) is described
in ``vqinsight.judge.engine``; the record layout and the resumable ``<out>.partial`` file in ``vqinsight.records``.

``--tournament`` (stage 3's ``pairing: tournament``) judges only the pairs of each prompt's max-min tournament of a
stage-3 pair manifest, round by round (``vqinsight.stage3.tournament``): ⌈3N/2⌉ − 2 of its C(N, 2) pairs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from transformers import AutoConfig

from ..media import add_media_args, media_spec, processor_pixels
from ..models.load import load_processor, vision_token_ids
from ..progress import progress
from ..prompts import TASKS
from ..provenance import write_meta
from ..records import append_records, expand, read_done, select_rows, to_records
from ..stage3 import tournament
from ..training import seed_everything
from ..vllm_engine import VLLMJudgeEngine
from .engine import ENGINES, MAX_BATCH, MAX_NEW_TOKENS, open_judge
from .formats import FORMATS

log = logging.getLogger("vqinsight.judge")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="judge model: hub id or local directory")
    ap.add_argument("--manifest", required=True, help="dataset manifest (parquet)")
    ap.add_argument("--task", required=True, choices=TASKS)
    ap.add_argument("--split", default="test", help="manifest split to judge")
    ap.add_argument("--out", required=True, type=Path, help="predictions (JSON lines)")
    ap.add_argument("--format", default="vqinsight", choices=FORMATS, help="prompt format of the judge")
    ap.add_argument("--style", default="full", choices=("full", "short"), help="vqinsight prompt style")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    ap.add_argument(
        "--engine",
        choices=ENGINES,
        default="batch",
        help="batch: vision features once per media item + batchdecode.BatchDecoder, continuous batching over "
        "--max-batch cache slots with the system prompt and first video shared (default; give it large "
        "--batch-size chunks); static: the same features + fastdecode.StaticDecoder, one fixed batch of "
        "--batch-size at a time; hf: per-row processor + transformers generate(); vllm: vLLM (optional, not "
        "installed by the project; vqinsight/vllm_engine.py)",
    )
    ap.add_argument("--max-batch", type=int, default=MAX_BATCH, help="engine batch: cache slots, rows decoded at once")
    ap.add_argument(
        "--vllm-args",
        default=None,
        help="engine vllm: extra vllm.LLM keyword arguments as JSON, e.g. '{\"tensor_parallel_size\": 2}'",
    )
    ap.add_argument("--vision-cache", type=int, default=64, help="media items kept by the batch/static engines' cache")
    ap.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the static engine's decode step (default: on CUDA only; ~40-55 s once on the 7B; "
        "docs/PERFORMANCE.md)",
    )
    ap.add_argument(
        "--margin-from-cache",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="engine static: score the margin's answer strings from the greedy generation's KV cache instead of "
        "prefilling prompt + completion again (default: on CUDA only; docs/PERFORMANCE.md)",
    )
    ap.add_argument("--margin", choices=("prob", "votes"), default="prob", help="comparison margin (module doc)")
    ap.add_argument("--votes", type=int, default=8, help="K sampled judgments per order for --margin votes")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--limit", type=int, default=None, help="judge only the first N rows (seeded order)")
    ap.add_argument(
        "--tournament",
        action="store_true",
        help="judge only the max-min tournament's pairs of each prompt of a stage-3 pair manifest, round by round "
        "(the rounds of all prompts together, in chunks of --batch-size; vqinsight.stage3.tournament)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    ap.add_argument("--trust-remote-code", action="store_true")
    add_media_args(ap)
    return ap.parse_args(argv)


def _vllm_engine(a: argparse.Namespace, rows: list[dict[str, Any]]):
    """(processor, VLLMJudgeEngine) for ``--engine vllm``: the weights are vLLM's, the prompts the project's."""
    pixels = processor_pixels(a)
    processor = load_processor(a.model, trust_remote_code=a.trust_remote_code, **pixels)
    config = AutoConfig.from_pretrained(a.model, trust_remote_code=a.trust_remote_code)
    images_only = all(r["media_type"] == "image" for r in rows)
    lo, hi = pixels["image_pixels" if images_only else "video_pixels"]
    try:
        extra = json.loads(a.vllm_args) if a.vllm_args else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"--vllm-args must be a JSON object of vllm.LLM keyword arguments: {e}") from e
    if not isinstance(extra, dict):
        raise ValueError(f"--vllm-args must be a JSON object, got {a.vllm_args!r}")
    engine = VLLMJudgeEngine(
        a.model,
        max_new_tokens=a.max_new_tokens,
        suppress_token_ids=vision_token_ids(SimpleNamespace(config=config)),
        seed=a.seed,
        mm_processor_kwargs={"min_pixels": lo, "max_pixels": hi},
        llm_kwargs=extra,
    )
    return processor, engine


def _open_judge(a: argparse.Namespace, rows: list[dict[str, Any]]):
    """The judge of the arguments, loaded when the first judgment is to be made."""
    model = processor = engine = None
    if a.engine == "vllm":
        try:
            processor, engine = _vllm_engine(a, rows)
        except (RuntimeError, ValueError) as e:
            raise OSError(str(e)) from e
    return open_judge(
        a.model,
        media_spec(a),
        fmt=a.format,
        style=a.style,
        scale=(a.scale[0], a.scale[1]),
        max_new_tokens=a.max_new_tokens,
        engine=a.engine,
        max_batch=a.max_batch,
        cache_items=a.vision_cache,
        compile=a.compile,
        margin_from_cache=a.margin_from_cache,
        dtype=a.dtype,
        trust_remote_code=a.trust_remote_code,
        vllm=(model, processor, engine) if engine is not None else None,
    )


def _tournament_plan(a: argparse.Namespace, rows: list[dict[str, Any]], partial: Path):
    """(tournaments, records by key, judgments reused, judgments in all) of ``--tournament``: the rounds that the
    records of an interrupted run decide are replayed."""
    if a.limit is not None:
        raise ValueError("--limit takes rows out of the prompts' pair sets; it does not go with --tournament")
    plan = tournament.plan(rows)
    have = tournament.load_partial(partial)
    resumed = tournament.replay(plan, have)
    total = tournament.total_judgments(plan)
    log.info("tournament: %d prompt(s), %d judgments in %d rounds (round robin: %d), %d already done in %s",
             len(plan), total, tournament.total_rounds(plan), 2 * len(rows), resumed, partial)  # fmt: skip
    return plan, have, resumed, total


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not Path(a.manifest).is_file():
        log.error("%s: data manifest not found (build it first: snakemake %s)", a.manifest, a.manifest)
        return 2
    if a.threads:
        torch.set_num_threads(a.threads)
    seed_everything(a.seed)
    try:
        df = select_rows([a.manifest], [a.task], a.split, limit=a.limit, seed=a.seed, drop_ties=False)
    except ValueError as e:
        log.error("%s", e)
        return 2
    rows = sorted(to_records(df), key=lambda r: r["sample_id"])
    a.out.parent.mkdir(parents=True, exist_ok=True)
    partial = a.out.with_name(a.out.name + ".partial")
    if a.tournament:
        try:
            plan, have, resumed, total = _tournament_plan(a, rows, partial)
        except ValueError as e:
            log.error("%s", e)
            return 2
        needed = any(not p.t.done for p in plan.values())
    else:
        items = expand(rows)
        done = read_done(partial)
        todo = [it for it in items if it.key not in done]
        log.info("%d judgments (%d rows), %d already done in %s", len(items), len(rows), len(done), partial)
        needed, total, resumed = bool(todo), len(items), len(done)
    extra: dict[str, Any] = {}
    if needed:
        try:
            judge = _open_judge(a, rows)
        except (FileNotFoundError, OSError) as e:
            log.error("%s", e)
            return 2
        with progress(total=total, initial=resumed, desc=f"judge {a.out.stem}", unit="judgment") as bar:
            if a.tournament:
                stats = tournament.judge_rounds(
                    plan,
                    lambda batch: judge.judge(batch, margin=a.margin, votes_k=a.votes, temperature=a.temperature),
                    partial,
                    have,
                    batch_size=a.batch_size,
                    on_judged=bar.update,
                )
                extra = {"pairing": "tournament", "comparisons": stats["comparisons"], "rounds": stats["rounds"]}
            else:
                for s in range(0, len(todo), a.batch_size):
                    batch = todo[s : s + a.batch_size]
                    append_records(
                        partial, judge.judge(batch, margin=a.margin, votes_k=a.votes, temperature=a.temperature)
                    )
                    bar.update(len(batch))
        if judge.margin_from_cache:
            log.info("margins: %s (rows scored from the generation's cache / prefilled again)", judge.margin_stats)
    elif a.tournament:
        extra = {"pairing": "tournament", "comparisons": sum(p.t.comparisons for p in plan.values())}
    partial.touch()
    write_meta(
        a.out.with_name(a.out.name + ".meta.json"),
        {k: str(v) for k, v in vars(a).items()},
        n_rows=len(rows),
        n_judgments=total,
        resumed_with=resumed,
        **extra,
    )
    os.replace(partial, a.out)
    log.info("wrote %s (%d judgments)", a.out, total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
