"""Stage 3's prompt sets: a seeded selection of VidProM prompts, split into the training set (sampled, judged and
paired every round) and a held-out set (the generator evaluation).

    python -m vqinsight.stage3.prompt_sets --manifest results/demo/manifests/vidprom.parquet \\
        --train results/demo/stage3/prompts/train.jsonl --heldout results/demo/stage3/prompts/heldout.jsonl \\
        --n-train 16 --n-heldout 8 --seed 0

Prompts are de-duplicated (case- and whitespace-insensitive) before sampling, empty ones are skipped (counted), and
the two sets never share a prompt. Output lines: ``{"prompt_id": ..., "prompt": ...}``; prompt_id is the manifest's
sample_id with "/" replaced, so it can name a directory.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

import numpy as np

from ..data.manifest import load_manifest
from ..jsonl import dumps as jsonl_dumps
from ..provenance import atomic_write_text, write_meta

log = logging.getLogger("vqinsight.stage3.prompt_sets")


def prompt_id(sample_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", sample_id).strip("_")


def select_prompts(rows: list[tuple[str, str]], n_train: int, n_heldout: int, seed: int):
    """(train, heldout) lists of {prompt_id, prompt} from (sample_id, prompt) rows."""
    seen, unique, empty = set(), [], 0
    for sid, text in sorted(rows):
        t = " ".join((text or "").split())
        if not t:
            empty += 1
            continue
        if t.lower() in seen:
            continue
        seen.add(t.lower())
        unique.append({"prompt_id": prompt_id(sid), "prompt": t})
    if empty:
        log.warning("skipped %d empty prompt(s)", empty)
    need = n_train + n_heldout
    if len(unique) < need:
        raise ValueError(f"need {need} distinct prompts ({n_train} train + {n_heldout} held out), have {len(unique)}")
    order = np.random.default_rng(seed).permutation(len(unique))[:need]
    chosen = [unique[i] for i in order]
    ids = [c["prompt_id"] for c in chosen]
    if len(set(ids)) != len(ids):
        raise ValueError("two selected prompts map to the same prompt_id; their sample_ids differ only in symbols")
    return sorted(chosen[:n_train], key=lambda c: c["prompt_id"]), sorted(
        chosen[n_train:], key=lambda c: c["prompt_id"]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--manifest", required=True, type=Path, help="prompt manifest (task 'prompt'), e.g. VidProM")
    ap.add_argument("--train", required=True, type=Path)
    ap.add_argument("--heldout", required=True, type=Path)
    ap.add_argument("--n-train", type=int, required=True)
    ap.add_argument("--n-heldout", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        df = load_manifest(a.manifest)
        df = df.filter(df["task"] == "prompt")
        train, heldout = select_prompts(
            list(zip(df["sample_id"].to_list(), df["prompt"].to_list(), strict=True)), a.n_train, a.n_heldout, a.seed
        )
    except (FileNotFoundError, ValueError) as e:
        log.error("%s: %s", a.manifest, e)
        return 2
    atomic_write_text(a.train, jsonl_dumps(train))
    atomic_write_text(a.heldout, jsonl_dumps(heldout))
    write_meta(a.train.with_name(a.train.stem + ".meta.json"), {k: str(v) for k, v in vars(a).items()})
    log.info("wrote %d train and %d held-out prompts", len(train), len(heldout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
