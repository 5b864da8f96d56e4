"""Stage 3's win/lose selection from the judge's predictions on a prompt's round robin (paper Eq. 8) or on the
pairs of its max-min tournament (``MaxMin``, played round by round by ``stage3.tournament``), the judge-refinement
set, and the win rate of one generator over another with a bootstrap CI. ``vqinsight.stage3.pairs`` (the command)
describes the rules.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from ..data.manifest import to_frame, validate_manifest
from .index import by_prompt, comparison_row, pair_id

MODES = ("round_robin", "tournament")


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
    by_key: Mapping[str, Mapping[str, Any]], prompt_id: str, indices: Sequence[int], complete: bool = True
) -> tuple[np.ndarray, np.ndarray, list[PairOutcome], np.ndarray]:
    k = len(indices)
    W, M, judged = np.zeros((k, k)), np.zeros((k, k)), np.zeros((k, k), dtype=bool)
    outcomes, missing = [], []
    for a in range(k):
        for b in range(a + 1, k):
            sid = pair_id(prompt_id, indices[a], indices[b])
            ab, ba = _pair_records(by_key, sid)
            if ab is None or ba is None:
                if complete or ab is not None or ba is not None:  # one order only is an error in either mode
                    missing.append(f"{sid} (no {'/'.join(o for o, r in (('AB', ab), ('BA', ba)) if r is None)})")
                continue
            o = pair_outcome(ab, ba)
            W[a, b], W[b, a] = o.first, 1.0 - o.first
            M[a, b], M[b, a] = o.margin, -o.margin
            judged[a, b] = judged[b, a] = True
            outcomes.append(o)
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(f"prompt {prompt_id}: no judgment for pair(s) {', '.join(missing[:5])}{more}")
    return W, M, outcomes, judged


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
    W, M, _, _ = _matrix(by_key, prompt_id, indices)
    return W, M


@dataclass
class PromptResult:
    prompt_id: str
    rows: list[Mapping[str, Any]]  # index rows sorted by index
    W: np.ndarray
    M: np.ndarray
    outcomes: list[PairOutcome]
    judged: np.ndarray | None = None  # (n, n) bool: pairs with both orders judged; None: every pair

    @property
    def indices(self) -> list[int]:
        return [r["index"] for r in self.rows]

    @property
    def complete(self) -> bool:
        """Every pair of the prompt judged (a round robin)."""
        return self.judged is None or bool(self.judged.sum() == len(self.rows) * (len(self.rows) - 1))


def win_matrices(
    records: Iterable[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]],
    index_rows: Iterable[Mapping[str, Any]],
    prompts: Iterable[str] | None = None,
    complete: bool = True,
) -> dict[str, PromptResult]:
    """The round robin of every prompt of the index (or only of ``prompts``), sorted by prompt_id.

    ``complete=False`` accepts prompts of which only some pairs were judged (a tournament's): W and M hold the
    judged pairs, the others are 0 and ``judged`` tells them apart. A pair judged in one order only is an error.
    """
    by_key = records if isinstance(records, Mapping) else index_records(records)
    groups = by_prompt(index_rows)
    wanted = sorted(groups) if prompts is None else sorted(set(prompts))
    unknown = [pid for pid in wanted if pid not in groups]
    if unknown:
        raise ValueError(f"prompt(s) not in the sample index: {unknown[:10]}")
    out = {}
    for pid in wanted:
        W, M, outcomes, judged = _matrix(by_key, pid, [r["index"] for r in groups[pid]], complete)
        out[pid] = PromptResult(pid, groups[pid], W, M, outcomes, judged)
    return out


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


def _bracket_pairs(items: Sequence[int]) -> list[tuple[int, int]]:
    return [(items[k], items[k + 1]) for k in range(0, len(items) - 1, 2)]


def _knockout(items: Sequence[int], outcomes: Sequence[bool], keep_better: bool) -> list[int]:
    pairs = _bracket_pairs(items)
    out = [(i if o else j) if keep_better else (j if o else i) for (i, j), o in zip(pairs, outcomes, strict=True)]
    return out + ([items[-1]] if len(items) % 2 else [])


class MaxMin:
    """The simultaneous max-min tournament of n items (Pohl 1972), played round by round: ⌈3n/2⌉ − 2 comparisons.

    Round 1 pairs the items (0, 1), (2, 3), ...; with odd n the last item joins both brackets. Then the pair
    winners play a knockout for the max and the pair losers one for the min, each bracket paired in order with a bye
    for its last item when it is odd, both brackets in the same round: 1 + ⌈log2 ⌈n/2⌉⌉ rounds. ``pending()`` is a
    round's comparisons (i, j), always i < j; ``advance(outcomes)`` takes, for each, whether i is better than j.
    Every comparison is of a different pair, so a judged pair is never needed twice.
    """

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"need at least one item, got {n}")
        self.n, self.comparisons, self.rounds = n, 0, 0
        self.winners: list[int] | None = None  # the max bracket after round 1, then after each knockout round
        self.losers: list[int] | None = None

    @property
    def done(self) -> bool:
        return self.winners is not None and len(self.winners) == 1 and len(self.losers) == 1

    @property
    def best(self) -> int:
        if not self.done:
            raise ValueError("the tournament is not finished")
        return self.winners[0]

    @property
    def worst(self) -> int:
        if not self.done:
            raise ValueError("the tournament is not finished")
        return self.losers[0]

    def pending(self) -> list[tuple[int, int]]:
        """This round's comparisons: round 1's pairs, later the max bracket's pairs and then the min bracket's."""
        if self.done:
            return []
        if self.winners is None:
            return [(k, k + 1) for k in range(0, self.n - 1, 2)]
        return _bracket_pairs(self.winners) + _bracket_pairs(self.losers)

    def advance(self, outcomes: Sequence[bool]) -> None:
        """Play this round: ``outcomes[k]`` is True when the first item of ``pending()[k]`` is the better one."""
        todo = self.pending()
        if self.done:
            raise ValueError("the tournament is already finished")
        if len(outcomes) != len(todo):
            raise ValueError(f"round {self.rounds + 1} has {len(todo)} comparison(s), got {len(outcomes)} outcome(s)")
        self.comparisons += len(todo)
        self.rounds += 1
        if self.winners is None:
            self.winners = [i if o else j for (i, j), o in zip(todo, outcomes, strict=True)]
            self.losers = [j if o else i for (i, j), o in zip(todo, outcomes, strict=True)]
            if self.n % 2:
                self.winners.append(self.n - 1)
                self.losers.append(self.n - 1)
            return
        k = len(self.winners) // 2
        self.winners = _knockout(self.winners, outcomes[:k], keep_better=True)
        self.losers = _knockout(self.losers, outcomes[k:], keep_better=False)


def tournament(n: int, better: Callable[[int, int], bool]) -> tuple[int, int, int]:
    """(best, worst, comparisons) of n items by ``MaxMin``, round by round; ``better(i, j)`` is True when i is
    better than j."""
    t = MaxMin(n)
    while not t.done:
        t.advance([bool(better(i, j)) for i, j in t.pending()])
    return t.best, t.worst, t.comparisons


def tournament_rounds(n: int) -> int:
    """1 + ⌈log2 ⌈n/2⌉⌉, the rounds of ``MaxMin`` (n ≥ 2)."""
    return 1 + math.ceil(math.log2(math.ceil(n / 2))) if n >= 2 else 1


def tournament_comparisons(n: int) -> int:
    """⌈3n/2⌉ − 2, the comparisons of ``tournament`` (and the optimum for max and min together)."""
    return max(0, math.ceil(3 * n / 2) - 2)


def matrix_better(W: np.ndarray) -> Callable[[int, int], bool]:
    """The comparator of the round-robin outcomes: i better than j if it beat j; an exact tie favours the lower i."""
    return lambda i, j: bool(W[i, j] > 0.5 or (W[i, j] == 0.5 and i < j))


def judged_better(r: PromptResult) -> Callable[[int, int], bool]:
    """``matrix_better`` of a prompt's judged pairs; asking for a pair that was not judged is an error naming it."""
    better = matrix_better(r.W)

    def f(i: int, j: int) -> bool:
        if r.judged is not None and not r.judged[i, j]:
            a, b = sorted((r.indices[i], r.indices[j]))
            sid = pair_id(r.prompt_id, a, b)
            raise ValueError(f"prompt {r.prompt_id}: the tournament needs pair {sid}, which was not judged")
        return better(i, j)

    return f


def pick(r: PromptResult, mode: str) -> tuple[int, int, tuple[int, int, int] | None]:
    """(best, worst, the tournament's (best, worst, comparisons) or None) positions of one prompt in a mode.

    round_robin: ``select_win_lose``. tournament: ``tournament`` on the judged pairs; where a non-transitive judge
    makes its max and min the same video, ``select_win_lose`` over the judged pairs decides (with every pair judged,
    the round robin's choice).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    n = len(r.rows)
    if mode == "round_robin" and not r.complete:
        raise ValueError(f"prompt {r.prompt_id}: round robin needs all {n * (n - 1) // 2} pairs judged")
    best, worst, _ = select_win_lose(r.W, r.M)
    t = tournament(n, judged_better(r)) if (mode == "tournament" or r.complete) else None
    if mode == "tournament" and t[0] != t[1]:
        best, worst = t[0], t[1]
    return best, worst, t


def select(results: Mapping[str, PromptResult], mode: str = "round_robin") -> tuple[list[dict], dict[str, Any]]:
    """(win/lose lines, summary) for the judged pairs of each prompt (module doc; ``pick`` per prompt)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    lines = []
    agree_best = agree_worst = agree_both = degenerate = t_comparisons = n_complete = rr_comparisons = 0
    outcomes: list[PairOutcome] = []
    small = [pid for pid, r in results.items() if len(r.rows) < 2]
    if small:
        raise ValueError(f"prompt(s) with fewer than 2 videos: {small[:10]}")
    for pid, r in results.items():
        n = len(r.rows)
        best, worst, t = pick(r, mode)
        rr_comparisons += n * (n - 1) // 2
        if t is not None:
            t_comparisons += t[2]
            degenerate += mode == "tournament" and t[0] == t[1]
        if r.complete:  # the tournament's agreement with the round robin on the same verdicts
            rb, rw, _ = select_win_lose(r.W, r.M)
            n_complete += 1
            agree_best += t[0] == rb
            agree_worst += t[1] == rw
            agree_both += t[0] == rb and t[1] == rw
        wins = r.W.sum(axis=1)
        judged = r.judged is None or bool(r.judged[best, worst])
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
                "margin": float(r.M[best, worst]) if judged else None,
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
            "agree_best": agree_best / n_complete if n_complete else None,
            "agree_worst": agree_worst / n_complete if n_complete else None,
            "agree_both": agree_both / n_complete if n_complete else None,
            "comparisons": t_comparisons,
            "round_robin_comparisons": rr_comparisons,
            "degenerate": degenerate,
        },
    }
    if n_complete != n_prompts:
        summary["tournament"]["prompts_with_every_pair"] = n_complete
    return lines, summary


def refine_manifest(
    pairs: Sequence[Mapping[str, Any]],
    index_rows: Iterable[Mapping[str, Any]],
    records: Iterable[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]],
    dataset: str,
    seed: int,
    source_file: str = "",
    mode: str = "round_robin",
) -> pl.DataFrame:
    """Ĉ: for each prompt of ``pairs`` (C_r), the best of the new samples (``pick`` in ``mode``: the round robin's,
    or the tournament's from its judged pairs) vs C_r's lose video."""
    groups = by_prompt(index_rows)
    missing = sorted(p["prompt_id"] for p in pairs if p["prompt_id"] not in groups)
    if missing:
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise ValueError(f"prompt(s) of the pairs without new samples: {missing[:10]}{more}")
    small = sorted(p["prompt_id"] for p in pairs if len(groups[p["prompt_id"]]) < 2)
    if small:
        raise ValueError(f"prompt(s) with fewer than 2 new samples, no round robin possible: {small[:10]}")
    results = win_matrices(records, index_rows, [p["prompt_id"] for p in pairs], complete=mode == "round_robin")
    rows = []
    for p in sorted(pairs, key=lambda p: p["prompt_id"]):
        pid = p["prompt_id"]
        r = results[pid]
        if r.rows[0]["prompt"] != p["prompt"]:
            raise ValueError(f"prompt {pid}: the new samples' prompt text differs from the pairs' ({p['prompt']!r})")
        best, _, _ = pick(r, mode)
        new = r.rows[best]
        first_new = random.Random(f"{seed}|{pid}").random() < 0.5
        media = [new["path"], p["lose"]] if first_new else [p["lose"], new["path"]]
        rows.append(
            comparison_row(
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
