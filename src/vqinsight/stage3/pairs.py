"""Stage 3 win/lose pairs: the judge's round robin over each prompt's generated videos, and the sets built from it.

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
(src/vqinsight/judge.py) judges every comparison row in both orders: key ``<sample_id>|AB`` with the media as in
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

**Tournament.** ``--mode tournament`` selects with the classic simultaneous max-min algorithm (pair the videos,
winners compete for the max, losers for the min: ⌈3N/2⌉ − 2 comparisons, Pohl 1972), here run on the round-robin
outcomes (``better(i, j) = W[i, j] > 0.5``; an exact tie favours the lower position), so that its agreement with
the round robin can be measured on the same judgments; the summary reports it in either mode. Both modes need the
predictions of every pair. Where a non-transitive judge makes the tournament's max and min the same video, the
round robin's choice is used for that prompt (counted as ``degenerate``).

**Outputs.** ``select`` writes one line per prompt, sorted by prompt_id: ``{"prompt_id", "prompt", "win",
"lose", "win_index", "lose_index", "indices", "wins", "margin"}`` (``wins`` aligned with ``indices``; ``margin``
is ``M[win, lose]``) and a summary JSON (counts, unparsable share, swap-flip rate: the share of pairs parsed in
both orders whose two verdicts name the same position, and the tournament's agreement with the round robin).

``refine`` builds the judge-refinement set Ĉ of the united finetuning: for every prompt of the previous round's
pairs C_r, the best of the new samples S (round robin over the judge's predictions on S's pair manifest) against
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
import math
import random
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..data.manifest import to_frame, validate_manifest
from ..jsonl import dumps as jsonl_dumps
from ..jsonl import iter_objects
from ..provenance import atomic_write_bytes, atomic_write_json, atomic_write_text, write_meta

log = logging.getLogger("vqinsight.stage3.pairs")

INDEX_FIELDS: dict[str, type] = {"prompt_id": str, "prompt": str, "index": int, "seed": int, "path": str}
UNLABELED = "unlabeled (generated pair)"
MODES = ("round_robin", "tournament")


# ----------------------------------------------------------------------------------------------- sample index


def read_index(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The sample-index rows of the given JSONL files, sorted by (prompt_id, index), each with ``source`` and ``line``.

    Every line must be a JSON object with the fields of INDEX_FIELDS (right types, index >= 0, non-empty prompt_id
    without "|", non-empty path); a (prompt_id, index) seen twice is an error naming both places, and so is one
    prompt_id with two different prompt texts.
    """
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[str, int], str] = {}
    texts: dict[str, tuple[str, str]] = {}
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no sample index files given")
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: sample index not found (run the sampling rule first)")
        for where, obj in iter_objects(path):
            ln = int(where.rsplit(":", 1)[1])
            for k, t in INDEX_FIELDS.items():
                if k not in obj:
                    raise ValueError(f"{where}: missing field {k!r}")
                v = obj[k]
                if not isinstance(v, t) or isinstance(v, bool):
                    raise ValueError(f"{where}: field {k!r} must be {t.__name__}, got {v!r}")
            pid, idx = obj["prompt_id"], obj["index"]
            if not pid.strip() or "|" in pid:
                raise ValueError(f"{where}: prompt_id must be non-empty and free of '|', got {pid!r}")
            if idx < 0:
                raise ValueError(f"{where}: index must be >= 0, got {idx}")
            if not obj["path"].strip():
                raise ValueError(f"{where}: empty path")
            key = (pid, idx)
            if key in seen:
                raise ValueError(f"duplicate sample (prompt_id {pid!r}, index {idx}): {seen[key]} and {where}")
            seen[key] = where
            if pid in texts and texts[pid][0] != obj["prompt"]:
                raise ValueError(f"{where}: prompt_id {pid!r} has another prompt text at {texts[pid][1]}")
            texts.setdefault(pid, (obj["prompt"], where))
            rows.append({**{k: obj[k] for k in INDEX_FIELDS}, "source": str(path), "line": ln})
    if not rows:
        raise ValueError(f"{', '.join(map(str, paths))}: no samples")
    rows.sort(key=lambda r: (r["prompt_id"], r["index"]))
    return rows


def by_prompt(index_rows: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Index rows grouped by prompt_id (sorted), each group sorted by index."""
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in index_rows:
        groups[r["prompt_id"]].append(r)
    return {pid: sorted(g, key=lambda r: r["index"]) for pid, g in sorted(groups.items())}


def pair_id(prompt_id: str, i: int, j: int) -> str:
    """The manifest sample_id of the comparison of videos i and j (index values, i < j) of a prompt."""
    return f"{prompt_id}|{i:02d}-{j:02d}"


def _comparison_row(sample_id: str, dataset: str, split: str, media: list[str], prompt: str, **kw: Any) -> dict:
    return {
        "sample_id": sample_id,
        "dataset": dataset,
        "split": split,
        "task": "comparison",
        "media_type": "video",
        "media": media,
        "prompt": prompt,
        "question": None,
        "gt_score": None,
        "raw_score": None,
        "gt_scores": None,
        "raw_scores": None,
        "gt_choice": kw.get("gt_choice", "tie"),
        "preference": kw.get("preference", 0),
        "raw_label": kw.get("raw_label", UNLABELED),
        "source_file": kw.get("source_file", ""),
        "source_row": kw.get("source_row"),
    }


def pair_manifest(
    index_rows: Iterable[Mapping[str, Any]], dataset: str = "stage3", split: str = "all", source_file: str = ""
) -> pl.DataFrame:
    """All i < j comparison rows of every prompt (unlabeled: gt_choice "tie", preference 0), validated.

    ``source_file`` defaults to the index file of the pair's first video; ``source_row`` is the pair's position
    in the manifest (0-based, sorted by sample_id).
    """
    rows: list[dict[str, Any]] = []
    single = []
    for pid, group in by_prompt(index_rows).items():
        if len(group) < 2:
            single.append(pid)
        for a in range(len(group)):
            for b in range(a + 1, len(group)):
                ra, rb = group[a], group[b]
                rows.append(
                    _comparison_row(
                        pair_id(pid, ra["index"], rb["index"]),
                        dataset,
                        split,
                        [ra["path"], rb["path"]],
                        ra["prompt"],
                        source_file=source_file or ra.get("source", ""),
                        source_row=len(rows),
                    )
                )
    if single:
        log.warning("%d prompt(s) have a single video and no pair: %s", len(single), single[:5])
    if not rows:
        raise ValueError("no prompt has two or more videos: nothing to compare")
    df = to_frame(rows)
    validate_manifest(df, where=f"{dataset} pair manifest")
    return df


# ----------------------------------------------------------------------------------------------- outcomes


def index_records(records: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Prediction records by key; a record without a string key or a repeated key is an error."""
    out: dict[str, Mapping[str, Any]] = {}
    for n, r in enumerate(records, 1):
        key = r.get("key") if isinstance(r, Mapping) else None
        if not isinstance(key, str):
            raise ValueError(f"prediction record {n}: no string 'key'")
        if key in out:
            raise ValueError(f"prediction key {key!r} appears twice (record {n})")
        out[key] = r
    return out


def _first_minus_second(rec: Mapping[str, Any], order: str) -> float | None:
    """P(first video of the manifest row better) − P(second better) from one order's probabilities, or None."""
    p = rec.get("p")
    if p is None:
        return None
    if not isinstance(p, Mapping):
        raise ValueError(f"prediction {rec.get('key')!r}: 'p' must be an object, got {p!r}")
    a, b = p.get("A"), p.get("B")
    if a is None or b is None:
        return None
    try:
        d = float(a) - float(b)
    except (TypeError, ValueError) as e:
        raise ValueError(f"prediction {rec.get('key')!r}: 'p' values must be numbers, got {p!r}") from e
    if not math.isfinite(d):
        raise ValueError(f"prediction {rec.get('key')!r}: 'p' values must be finite, got {p!r}")
    return d if order == "AB" else -d


@dataclass(frozen=True)
class PairOutcome:
    """The judged outcome of one manifest pair (first vs second video) from its two orders."""

    first: float  # 1: the first video won, 0: the second, 0.5: exact tie
    margin: float  # mean over orders of P(first better) − P(second better), in [−1, 1]
    decided_by: str  # "both_orders", "margin" (split or unparsable verdicts) or "tie" (margin exactly 0)
    flip: bool | None  # the two verdicts name the same position (None unless both are parsable)
    unparsable: int  # orders (0-2) whose verdict is not "A" or "B"


def pair_outcome(ab: Mapping[str, Any], ba: Mapping[str, Any]) -> PairOutcome:
    """Combine the AB record (media as in the row) and the BA record (media swapped) of one pair."""
    va, vb = ab.get("pred"), ba.get("pred")
    win_ab = {"A": 1, "B": -1}.get(va) if isinstance(va, str) else None  # +1: the first video won this order
    win_ba = {"A": -1, "B": 1}.get(vb) if isinstance(vb, str) else None
    diffs = [d for d in (_first_minus_second(ab, "AB"), _first_minus_second(ba, "BA")) if d is not None]
    m = float(np.mean(diffs)) if diffs else float(np.mean([w or 0 for w in (win_ab, win_ba)]))
    if win_ab is not None and win_ab == win_ba:
        first, how = (1.0 if win_ab > 0 else 0.0), "both_orders"
    elif m != 0:
        first, how = (1.0 if m > 0 else 0.0), "margin"
    else:
        first, how = 0.5, "tie"
    flip = None if win_ab is None or win_ba is None else va == vb
    return PairOutcome(first, m, how, flip, (win_ab is None) + (win_ba is None))


def _pair_records(
    by_key: Mapping[str, Mapping[str, Any]], sid: str
) -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]:
    return by_key.get(f"{sid}|AB"), by_key.get(f"{sid}|BA")


def _matrix(
    by_key: Mapping[str, Mapping[str, Any]], prompt_id: str, indices: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, list[PairOutcome]]:
    k = len(indices)
    W, M = np.zeros((k, k)), np.zeros((k, k))
    outcomes, missing = [], []
    for a in range(k):
        for b in range(a + 1, k):
            sid = pair_id(prompt_id, indices[a], indices[b])
            ab, ba = _pair_records(by_key, sid)
            if ab is None or ba is None:
                missing.append(f"{sid} (no {'/'.join(o for o, r in (('AB', ab), ('BA', ba)) if r is None)})")
                continue
            o = pair_outcome(ab, ba)
            W[a, b], W[b, a] = o.first, 1.0 - o.first
            M[a, b], M[b, a] = o.margin, -o.margin
            outcomes.append(o)
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(f"prompt {prompt_id}: no judgment for pair(s) {', '.join(missing[:5])}{more}")
    return W, M, outcomes


def win_matrix(
    records: Iterable[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]],
    prompt_id: str,
    n: int | Sequence[int],
) -> tuple[np.ndarray, np.ndarray]:
    """(W, M) of one prompt's videos: ``n`` videos indexed 0..n-1, or the given index values in order.

    ``W[a, b]`` is 1 if video a beat video b, 0.5 for an exact tie; ``M`` the antisymmetric margin matrix
    (module doc). ``records`` are prediction records or a mapping key -> record (index_records). A pair
    without both orders' records is an error naming it.
    """
    indices = list(range(n)) if isinstance(n, int) else list(n)
    by_key = records if isinstance(records, Mapping) else index_records(records)
    W, M, _ = _matrix(by_key, prompt_id, indices)
    return W, M


@dataclass
class PromptResult:
    prompt_id: str
    rows: list[Mapping[str, Any]]  # index rows sorted by index
    W: np.ndarray
    M: np.ndarray
    outcomes: list[PairOutcome]

    @property
    def indices(self) -> list[int]:
        return [r["index"] for r in self.rows]


def win_matrices(
    records: Iterable[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]],
    index_rows: Iterable[Mapping[str, Any]],
    prompts: Iterable[str] | None = None,
) -> dict[str, PromptResult]:
    """The round robin of every prompt of the index (or only of ``prompts``), sorted by prompt_id."""
    by_key = records if isinstance(records, Mapping) else index_records(records)
    groups = by_prompt(index_rows)
    wanted = sorted(groups) if prompts is None else sorted(set(prompts))
    unknown = [pid for pid in wanted if pid not in groups]
    if unknown:
        raise ValueError(f"prompt(s) not in the sample index: {unknown[:10]}")
    out = {}
    for pid in wanted:
        W, M, outcomes = _matrix(by_key, pid, [r["index"] for r in groups[pid]])
        out[pid] = PromptResult(pid, groups[pid], W, M, outcomes)
    return out


# ----------------------------------------------------------------------------------------------- selection


def select_win_lose(W: np.ndarray, M: np.ndarray) -> tuple[int, int, np.ndarray]:
    """(best, worst, wins) positions from a win matrix (paper Eq. 8): wins = W.sum(1).

    best: most wins, ties broken by the larger margin sum ``M.sum(1)``, then the lower position; worst: fewest
    wins, ties broken by the smaller margin sum, then the higher position. Margin sums are compared rounded to
    12 decimals so that summation order cannot break a true tie.
    """
    W, M = np.asarray(W, dtype=float), np.asarray(M, dtype=float)
    if W.ndim != 2 or W.shape[0] != W.shape[1] or M.shape != W.shape:
        raise ValueError(f"W and M must be square matrices of one shape, got {W.shape} and {M.shape}")
    n = W.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 videos to pick a win and a lose video, got {n}")
    wins = W.sum(axis=1)
    msum = np.round(M.sum(axis=1), 12)
    best = min(range(n), key=lambda i: (-wins[i], -msum[i], i))
    worst = min(range(n), key=lambda i: (wins[i], msum[i], -i))
    if best == worst:  # impossible for n >= 2 with the tie-breaks above; kept as a guard
        raise ValueError(f"win and lose video coincide (position {best}); wins {wins.tolist()}")
    return best, worst, wins


def tournament(n: int, better: Callable[[int, int], bool]) -> tuple[int, int, int]:
    """(best, worst, comparisons) of n items by the simultaneous max-min algorithm: ⌈3n/2⌉ − 2 comparisons.

    Items are compared in pairs (0, 1), (2, 3), ...; the pair winners compete for the max, the losers for the
    min, and with odd n the last item joins both. ``better(i, j)`` is True when i is better than j.
    """
    if n < 1:
        raise ValueError(f"need at least one item, got {n}")
    count = 0

    def beats(i: int, j: int) -> bool:
        nonlocal count
        count += 1
        return bool(better(i, j))

    winners, losers = [], []
    for k in range(0, n - 1, 2):
        a, b = (k, k + 1) if beats(k, k + 1) else (k + 1, k)
        winners.append(a)
        losers.append(b)
    if n % 2:
        winners.append(n - 1)
        losers.append(n - 1)
    best = winners[0]
    for w in winners[1:]:
        if beats(w, best):
            best = w
    worst = losers[0]
    for lo in losers[1:]:
        if beats(worst, lo):
            worst = lo
    return best, worst, count


def tournament_comparisons(n: int) -> int:
    """⌈3n/2⌉ − 2, the comparisons of ``tournament`` (and the optimum for max and min together)."""
    return max(0, math.ceil(3 * n / 2) - 2)


def matrix_better(W: np.ndarray) -> Callable[[int, int], bool]:
    """The comparator of the round-robin outcomes: i better than j if it beat j; an exact tie favours the lower i."""
    return lambda i, j: bool(W[i, j] > 0.5 or (W[i, j] == 0.5 and i < j))


def select(results: Mapping[str, PromptResult], mode: str = "round_robin") -> tuple[list[dict], dict[str, Any]]:
    """(win/lose lines, summary) for round-robin results (module doc)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    lines = []
    agree_best = agree_worst = agree_both = degenerate = t_comparisons = 0
    outcomes: list[PairOutcome] = []
    small = [pid for pid, r in results.items() if len(r.rows) < 2]
    if small:
        raise ValueError(f"prompt(s) with fewer than 2 videos: {small[:10]}")
    for pid, r in results.items():
        best, worst, wins = select_win_lose(r.W, r.M)
        tb, tw, c = tournament(len(r.rows), matrix_better(r.W))
        t_comparisons += c
        agree_best += tb == best
        agree_worst += tw == worst
        agree_both += tb == best and tw == worst
        if mode == "tournament":
            if tb == tw:
                degenerate += 1
            else:
                best, worst = tb, tw
        outcomes += r.outcomes
        lines.append(
            {
                "prompt_id": pid,
                "prompt": r.rows[0]["prompt"],
                "win": r.rows[best]["path"],
                "lose": r.rows[worst]["path"],
                "win_index": r.rows[best]["index"],
                "lose_index": r.rows[worst]["index"],
                "indices": r.indices,
                "wins": [float(x) for x in wins],
                "margin": float(r.M[best, worst]),
            }
        )
    n_prompts, n_pairs = len(results), len(outcomes)
    flips = [o.flip for o in outcomes if o.flip is not None]
    decided = Counter(o.decided_by for o in outcomes)
    summary = {
        "mode": mode,
        "n_prompts": n_prompts,
        "n_videos": sum(len(r.rows) for r in results.values()),
        "n_pairs": n_pairs,
        "n_judgments": 2 * n_pairs,
        "unparsable_share": sum(o.unparsable for o in outcomes) / (2 * n_pairs) if n_pairs else None,
        "swap_flip_rate": float(np.mean(flips)) if flips else None,
        "n_both_orders_parsed": len(flips),
        "decided_by": {k: decided.get(k, 0) for k in ("both_orders", "margin", "tie")},
        "tournament": {
            "agree_best": agree_best / n_prompts if n_prompts else None,
            "agree_worst": agree_worst / n_prompts if n_prompts else None,
            "agree_both": agree_both / n_prompts if n_prompts else None,
            "comparisons": t_comparisons,
            "round_robin_comparisons": n_pairs,
            "degenerate": degenerate,
        },
    }
    return lines, summary


# ----------------------------------------------------------------------------------------------- refinement set


def read_pairs(path: str | Path) -> list[dict[str, Any]]:
    """The lines of a ``select`` output, each with its line number (``line``); fields are checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: win/lose pairs not found (run the select step first)")
    out, seen = [], {}
    need = {"prompt_id": str, "prompt": str, "lose": str, "lose_index": int}
    for where, obj in iter_objects(path):
        ln = int(where.rsplit(":", 1)[1])
        for k, t in need.items():
            if not isinstance(obj.get(k), t) or isinstance(obj.get(k), bool):
                raise ValueError(f"{where}: field {k!r} must be {t.__name__}, got {obj.get(k)!r}")
        if obj["prompt_id"] in seen:
            raise ValueError(f"{where}: prompt_id {obj['prompt_id']!r} already on line {seen[obj['prompt_id']]}")
        seen[obj["prompt_id"]] = ln
        out.append({**obj, "line": ln})
    return out


def refine_manifest(
    pairs: Sequence[Mapping[str, Any]],
    index_rows: Iterable[Mapping[str, Any]],
    records: Iterable[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]],
    dataset: str,
    seed: int,
    source_file: str = "",
) -> pl.DataFrame:
    """Ĉ: for each prompt of ``pairs`` (C_r), the round-robin best of the new samples vs C_r's lose video."""
    groups = by_prompt(index_rows)
    missing = sorted(p["prompt_id"] for p in pairs if p["prompt_id"] not in groups)
    if missing:
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise ValueError(f"prompt(s) of the pairs without new samples: {missing[:10]}{more}")
    small = sorted(p["prompt_id"] for p in pairs if len(groups[p["prompt_id"]]) < 2)
    if small:
        raise ValueError(f"prompt(s) with fewer than 2 new samples, no round robin possible: {small[:10]}")
    results = win_matrices(records, index_rows, [p["prompt_id"] for p in pairs])
    rows = []
    for p in sorted(pairs, key=lambda p: p["prompt_id"]):
        pid = p["prompt_id"]
        r = results[pid]
        if r.rows[0]["prompt"] != p["prompt"]:
            raise ValueError(f"prompt {pid}: the new samples' prompt text differs from the pairs' ({p['prompt']!r})")
        best, _, _ = select_win_lose(r.W, r.M)
        new = r.rows[best]
        first_new = random.Random(f"{seed}|{pid}").random() < 0.5
        media = [new["path"], p["lose"]] if first_new else [p["lose"], new["path"]]
        rows.append(
            _comparison_row(
                f"{dataset}/train/{pid}",
                dataset,
                "train",
                media,
                p["prompt"],
                gt_choice="A" if first_new else "B",
                preference=1 if first_new else -1,
                raw_label=f"new best (index {new['index']}) over the previous lose video (index {p['lose_index']})",
                source_file=source_file,
                source_row=p.get("line"),
            )
        )
    df = to_frame(rows)
    validate_manifest(df, where=f"{dataset} refinement manifest")
    return df


# ----------------------------------------------------------------------------------------------- win rate


def winrate_manifest(
    a_rows: Iterable[Mapping[str, Any]], b_rows: Iterable[Mapping[str, Any]], dataset: str = "winrate"
) -> pl.DataFrame:
    """One unlabeled comparison row [a_path, b_path] per (prompt_id, index) present on both sides."""
    a = {(r["prompt_id"], r["index"]): r for r in a_rows}
    b = {(r["prompt_id"], r["index"]): r for r in b_rows}
    common = sorted(set(a) & set(b))
    only_a, only_b = len(set(a) - set(b)), len(set(b) - set(a))
    if only_a or only_b:
        log.warning("%d sample(s) only in a and %d only in b are left out", only_a, only_b)
    if not common:
        raise ValueError("the two sample sets share no (prompt_id, index)")
    rows = []
    for pid, idx in common:
        ra, rb = a[(pid, idx)], b[(pid, idx)]
        if ra["prompt"] != rb["prompt"]:
            raise ValueError(f"prompt {pid}: the two sides have different prompt texts")
        rows.append(
            _comparison_row(
                f"{pid}|{idx:02d}",
                dataset,
                "all",
                [ra["path"], rb["path"]],
                ra["prompt"],
                source_file=ra.get("source", ""),
                source_row=len(rows),
            )
        )
    df = to_frame(rows)
    validate_manifest(df, where=f"{dataset} win-rate manifest")
    return df


def bootstrap_ci(outcomes: Sequence[float], n_boot: int = 10000, seed: int = 0, level: float = 0.95):
    """Percentile bootstrap CI of the mean of outcomes in {0, 0.5, 1} (resampling pairs, seeded).

    Resampling n pairs with replacement is a multinomial draw of the counts of the three outcome values, which is
    how it is computed (exactly the same distribution, without an n_boot x n array).
    """
    x = np.asarray(outcomes, dtype=float)
    if x.size == 0:
        return None, None
    values = np.array([0.0, 0.5, 1.0])
    if not np.all(np.isin(x, values)):
        raise ValueError("outcomes must be 0, 0.5 or 1")
    counts = np.array([(x == v).sum() for v in values])
    draws = np.random.default_rng(seed).multinomial(x.size, counts / x.size, size=n_boot)
    means = draws @ values / x.size
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def winrate(records: Iterable[Mapping[str, Any]], n_boot: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Win rate of side a (first media) over side b from both orders of every judged pair, with a 95% CI."""
    by_key = index_records(records)
    sids: dict[str, set[str]] = defaultdict(set)
    for key in by_key:
        sid, _, order = key.rpartition("|")
        if order not in ("AB", "BA") or not sid:
            raise ValueError(f"prediction key {key!r} does not end in |AB or |BA")
        sids[sid].add(order)
    incomplete = sorted(s for s, o in sids.items() if len(o) < 2)
    if incomplete:
        raise ValueError(f"pair(s) judged in one order only: {incomplete[:10]}")
    if not sids:
        raise ValueError("no predictions")
    outs = [pair_outcome(by_key[f"{sid}|AB"], by_key[f"{sid}|BA"]) for sid in sorted(sids)]
    firsts = [o.first for o in outs]
    flips = [o.flip for o in outs if o.flip is not None]
    lo, hi = bootstrap_ci(firsts, n_boot, seed)
    decided = Counter(o.decided_by for o in outs)
    return {
        "n": len(outs),
        "winrate": float(np.mean(firsts)),
        "ci95": [lo, hi],
        "n_boot": n_boot,
        "seed": seed,
        "a_wins": sum(f == 1.0 for f in firsts),
        "b_wins": sum(f == 0.0 for f in firsts),
        "ties": sum(f == 0.5 for f in firsts),
        "decided_by": {k: decided.get(k, 0) for k in ("both_orders", "margin", "tie")},
        "mean_margin": float(np.mean([o.margin for o in outs])),
        "unparsable_share": sum(o.unparsable for o in outs) / (2 * len(outs)),
        "swap_flip_rate": float(np.mean(flips)) if flips else None,
    }


# ----------------------------------------------------------------------------------------------- CLI


def _write_parquet(path: Path, df: pl.DataFrame) -> None:
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", statistics=False)
    atomic_write_bytes(path, buf.getvalue())


def _load_predictions(path: Path) -> dict[str, Mapping[str, Any]]:
    from ..records import load_predictions

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
    results = win_matrices(by_key, rows)
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
    df = refine_manifest(pairs, rows, by_key, a.dataset, a.seed, source_file=str(a.pairs))
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
