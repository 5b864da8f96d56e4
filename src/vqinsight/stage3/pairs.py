"""Stage 3 win/lose pairs: the judge's round robin over each prompt's generated videos, and the sets built from it.

The command; the library is ``stage3.index`` (sample index, pair manifests) and ``stage3.selection`` (win
matrices, selection, tournament, win rate).

    python -m vqinsight.stage3.pairs manifest --index results/demo/stage3/r0/samples/shard0.jsonl \\
        --out results/demo/stage3/r0/pairs.parquet
    python -m vqinsight.stage3.pairs select --index results/demo/stage3/r0/samples/shard0.jsonl \\
        --predictions results/demo/stage3/r0/pairs.predictions.jsonl \\
        --out results/demo/stage3/r0/winlose.jsonl --summary results/demo/stage3/r0/winlose.summary.json
    python -m vqinsight.stage3.pairs refine --pairs results/demo/stage3/r0/winlose.jsonl \\
        --index results/demo/stage3/r1/samples/shard0.jsonl \\
        --predictions results/demo/stage3/r1/pairs.predictions.jsonl \\
        --out results/demo/stage3/r1/refine.parquet --dataset stage3_refine_r1 --seed 0
    python -m vqinsight.stage3.pairs winrate-manifest --a results/demo/stage3/dpo/heldout.jsonl \\
        --b results/demo/stage3/base/heldout.jsonl --out results/demo/stage3/winrate/pairs.parquet
    python -m vqinsight.stage3.pairs winrate --predictions results/demo/stage3/winrate/pairs.predictions.jsonl \\
        --out results/demo/stage3/winrate/winrate.json --seed 0

**Inputs.** A sample index (one JSONL per sampling shard, written by the generator's sampling CLI) has lines
``{"prompt_id", "prompt", "index", "seed", "path"}``; ``(prompt_id, index)`` is unique over all shards. The judge
(``python -m vqinsight.judge``) judges every comparison row in both orders: key ``<sample_id>|AB`` with the media as in
the manifest and ``<sample_id>|BA`` with them swapped; ``pred`` is "A"/"B"/null and ``p`` the normalised answer
probabilities ``{"A": .., "B": ..}``.

**Round robin (paper Eq. 8).** ``manifest`` writes, for each prompt with N videos, the C(N, 2) rows
``<prompt_id>|<i>-<j>`` (i < j, the videos' index values, two digits) with media ``[video_i, video_j]``. For a
pair, video i wins an order when that order's verdict names it (AB: "A"; BA: "B"). The margin is
``m_ij = mean over the orders with probabilities of P(i better) − P(j better)`` (AB: ``p[A] − p[B]``, BA:
``p[B] − p[A]``; from the verdicts, ±1 or 0, when no order has probabilities), so M is antisymmetric. i beats j
(``W[i, j] = 1``) when it wins both orders; when the orders split or a verdict is unparsable the sign of
``m_ij`` decides (the tie broken by the tie-calibrated margin, as in the evaluation), and ``m_ij == 0`` exactly
gives ``W = 0.5`` to both. ``wins = W.sum(1)``; the win video is the argmax (ties: larger margin sum
``M.sum(1)``, then lower position), the lose video the argmin (ties: smaller margin sum, then higher position).

**Tournament.** ``--mode tournament`` selects with the simultaneous max-min algorithm (Pohl 1972;
``selection.MaxMin``): round 1 pairs the videos (positions 0-1, 2-3, ...; with odd N the last joins both brackets),
then the pair winners play a knockout for the best and the pair losers one for the worst, ⌈3N/2⌉ − 2 comparisons in
1 + ⌈log2 ⌈N/2⌉⌉ rounds. A comparison is the pair's outcome above (both orders, a split decided by the margin); an
exact tie favours the lower position. The predictions may hold only the tournament's pairs (the stage-3 judge job
with ``pairing: tournament`` judges just those, round by round: ``stage3.tournament``) or every pair (then the
summary also gives the tournament's agreement with the round robin on the same verdicts). Where a non-transitive
judge makes the tournament's max and min the same video, the round-robin rule over the judged pairs decides for
that prompt (with every pair judged, the round robin's choice; counted as ``degenerate``).

**Outputs.** ``select`` writes one line per prompt, sorted by prompt_id: ``{"prompt_id", "prompt", "win",
"lose", "win_index", "lose_index", "indices", "wins", "margin"}`` (``wins`` aligned with ``indices``; ``margin``
is ``M[win, lose]``) and a summary JSON (counts, unparsable share, swap-flip rate: the share of pairs parsed in
both orders whose two verdicts name the same position, and the tournament's agreement with the round robin). In
tournament mode ``wins`` counts the judged pairs only and ``margin`` is null where the win and lose videos were
never compared.

``refine`` builds the judge-refinement set Ĉ of the united finetuning: for every prompt of the previous round's
pairs C_r, the best of the new samples S (by ``--mode``, as in ``select``, over the judge's predictions on S) against
C_r's lose video, labelled as won by the new video. The media order is drawn per prompt from a RNG seeded with
``(seed, prompt_id)`` (gt_choice "A", preference 1 when the new video is first; "B", −1 otherwise), so a prompt's
order does not depend on which other prompts are present. Rows: ``<dataset>/train/<prompt_id>``, split "train".

``winrate-manifest`` pairs two generators' videos of the same (prompt_id, index) (media ``[a, b]``); ``winrate``
scores side a against b from both orders (a wins both: 1, b wins both: 0, otherwise the sign of the margin, an
exact 0: 0.5), with a seeded 95% percentile bootstrap CI over the pairs.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from ..jsonl import dumps as jsonl_dumps
from ..provenance import atomic_write_bytes, atomic_write_json, atomic_write_text, write_meta
from ..records import load_predictions
from .index import by_prompt, pair_id, pair_manifest, read_index, read_pairs, winrate_manifest
from .selection import MODES, index_records, refine_manifest, select, win_matrices, winrate

log = logging.getLogger("vqinsight.stage3.pairs")


# ----------------------------------------------------------------------------------------------- CLI


def _write_parquet(path: Path, df: pl.DataFrame) -> None:
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", statistics=False)
    atomic_write_bytes(path, buf.getvalue())


def _load_predictions(path: Path) -> dict[str, Mapping[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: predictions not found (run the judge on the pair manifest first)")
    try:
        return index_records(load_predictions(path))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def _config(a: argparse.Namespace) -> dict[str, Any]:
    return {
        k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if isinstance(v, list) else v)
        for k, v in vars(a).items()
    }


def cmd_manifest(a: argparse.Namespace) -> int:
    rows = read_index(a.index)
    df = pair_manifest(rows, dataset=a.dataset, split=a.split)
    _write_parquet(a.out, df)
    n_prompts = len(by_prompt(rows))
    write_meta(a.out.with_suffix(".meta.json"), _config(a), rows=df.height, prompts=n_prompts, videos=len(rows))
    log.info("%d pair(s) of %d prompt(s) -> %s", df.height, n_prompts, a.out)
    return 0


def cmd_select(a: argparse.Namespace) -> int:
    rows = read_index(a.index)
    by_key = _load_predictions(a.predictions)
    results = win_matrices(by_key, rows, complete=a.mode == "round_robin")
    lines, summary = select(results, a.mode)
    used = {
        f"{pair_id(pid, r.indices[x], r.indices[y])}|{o}"
        for pid, r in results.items()
        for x in range(len(r.rows))
        for y in range(x + 1, len(r.rows))
        for o in ("AB", "BA")
    }
    extra = len(set(by_key) - used)
    if extra:
        log.warning("%s: %d prediction(s) are not pairs of the index and are ignored", a.predictions, extra)
    summary["n_extra_records"] = extra
    atomic_write_text(a.out, jsonl_dumps(lines))
    atomic_write_json(a.summary, summary)
    write_meta(a.out.with_suffix(".meta.json"), _config(a), prompts=len(lines))
    log.info(
        "%d win/lose pair(s) -> %s; %s",
        len(lines),
        a.out,
        {k: summary[k] for k in ("n_pairs", "unparsable_share", "swap_flip_rate")},
    )
    return 0


def cmd_refine(a: argparse.Namespace) -> int:
    pairs = read_pairs(a.pairs)
    rows = read_index(a.index)
    by_key = _load_predictions(a.predictions)
    df = refine_manifest(pairs, rows, by_key, a.dataset, a.seed, source_file=str(a.pairs), mode=a.mode)
    _write_parquet(a.out, df)
    first_new = int((df["gt_choice"] == "A").sum())
    write_meta(a.out.with_suffix(".meta.json"), _config(a), rows=df.height, new_video_first=first_new)
    log.info("%d refinement row(s) (%d with the new video first) -> %s", df.height, first_new, a.out)
    return 0


def cmd_winrate_manifest(a: argparse.Namespace) -> int:
    df = winrate_manifest(read_index(a.a), read_index(a.b), dataset=a.dataset)
    _write_parquet(a.out, df)
    write_meta(a.out.with_suffix(".meta.json"), _config(a), rows=df.height)
    log.info("%d a-vs-b pair(s) -> %s", df.height, a.out)
    return 0


def cmd_winrate(a: argparse.Namespace) -> int:
    by_key = _load_predictions(a.predictions)
    res = winrate(list(by_key.values()), n_boot=a.n_boot, seed=a.seed)
    atomic_write_json(a.out, res)
    write_meta(a.out.with_suffix(".meta.json"), _config(a))
    log.info("win rate a over b: %.4f [%s, %s] over %d pairs -> %s", res["winrate"], *res["ci95"], res["n"], a.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("manifest", help="all within-prompt pairs of the samples, as an unlabeled comparison manifest")
    p.add_argument("--index", nargs="+", required=True, type=Path, help="sample index JSONL file(s)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--dataset", default="stage3")
    p.add_argument("--split", default="all")
    p.set_defaults(func=cmd_manifest)

    p = sub.add_parser("select", help="win/lose video per prompt from the judge's predictions")
    p.add_argument("--index", nargs="+", required=True, type=Path)
    p.add_argument("--predictions", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="win/lose pairs (JSONL)")
    p.add_argument("--summary", required=True, type=Path, help="summary JSON")
    p.add_argument("--mode", choices=MODES, default="round_robin")
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("refine", help="judge-refinement set: new best vs the previous round's lose video")
    p.add_argument("--pairs", required=True, type=Path, help="the previous round's win/lose pairs (select output)")
    p.add_argument("--index", nargs="+", required=True, type=Path, help="sample index of the new samples")
    p.add_argument("--predictions", required=True, type=Path, help="judge predictions on the new samples' pairs")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--dataset", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--mode", choices=MODES, default="round_robin", help="how the new samples' best is chosen")
    p.set_defaults(func=cmd_refine)

    p = sub.add_parser("winrate-manifest", help="a-vs-b comparison rows for the same (prompt_id, index)")
    p.add_argument("--a", nargs="+", required=True, type=Path, help="sample index of side a")
    p.add_argument("--b", nargs="+", required=True, type=Path, help="sample index of side b")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--dataset", default="winrate")
    p.set_defaults(func=cmd_winrate_manifest)

    p = sub.add_parser("winrate", help="win rate of side a over side b with a bootstrap CI")
    p.add_argument("--predictions", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--n-boot", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_winrate)

    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return a.func(a)
    except (FileNotFoundError, ValueError) as e:
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
