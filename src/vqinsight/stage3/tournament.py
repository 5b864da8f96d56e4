"""Stage 3's adaptive tournament: judge only the pairs of each prompt's max-min tournament, round by round.

With ``pairing: tournament`` the stage-3 judge job (``python -m vqinsight.judge --tournament`` on a prompt-pair
manifest) does not judge all C(N, 2) pairs of a prompt's N videos. It plays ``selection.MaxMin`` for every prompt at
once: round 1 judges the pairs (0, 1), (2, 3), ... of every prompt; each later round judges the next knockout
comparisons of the max bracket (the pair winners) and the min bracket (the pair losers) of every prompt whose
tournament is not finished. A round's comparisons of all prompts are one list of judgments, handed to the judge in
chunks of ``batch_size`` (the judge job's ``--batch-size``), each comparison in both orders, as the round robin.
Per prompt that is ⌈3N/2⌉ − 2 comparisons (13 of 45 at N = 10: 26 judgments instead of 90) in 1 + ⌈log2 ⌈N/2⌉⌉
rounds (4 at N = 10).

A comparison's outcome is ``selection.pair_outcome`` of its two orders, as ``stage3.pairs select`` reads it: a
video wins when both orders name it; when the orders split (or a verdict is unparsable) the sign of the mean over
the orders of P(first better) − P(second better) decides; an exact 0 favours the lower position
(``selection.matrix_better``). So ``select --mode tournament`` on the written records replays the same tournament
and picks the same best and worst.

**Resumable.** Records are appended to ``<out>.partial`` chunk by chunk (``records.append_records``, fsynced), each
with the round it was judged in (``"round"``). A restarted job reads them back, replays the rounds they decide and
judges only what is missing, so a crash loses at most the chunk in flight.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..records import Item, append_records, expand, load_predictions, read_done
from .index import pair_id, parse_pair_id
from .selection import MaxMin, index_records, matrix_better, pair_outcome, tournament_comparisons, tournament_rounds

log = logging.getLogger("vqinsight.stage3.tournament")

Judge = Callable[[list[Item]], list[dict[str, Any]]]


@dataclass
class PromptTournament:
    """One prompt's videos (index values, sorted), its pair-manifest rows and its tournament's state."""

    prompt_id: str
    indices: list[int]
    rows: dict[tuple[int, int], Mapping[str, Any]]  # (i, j) index values, i < j -> manifest row
    t: MaxMin = field(init=False)
    W: np.ndarray = field(init=False)  # outcomes of the judged comparisons, by position (selection.win_matrix)

    def __post_init__(self) -> None:
        self.t = MaxMin(len(self.indices))
        self.W = np.zeros((len(self.indices), len(self.indices)))

    def sample_id(self, a: int, b: int) -> str:
        """The manifest row of the videos at positions a < b."""
        return pair_id(self.prompt_id, self.indices[a], self.indices[b])

    def items(self) -> list[Item]:
        """This round's judgments: each pending comparison in both orders."""
        return expand([dict(self.rows[(self.indices[a], self.indices[b])]) for a, b in self.t.pending()])


def plan(rows: Iterable[Mapping[str, Any]]) -> dict[str, PromptTournament]:
    """The tournaments of a stage-3 pair manifest's rows (``stage3.index.pair_manifest``), by prompt_id.

    Every row must be a comparison with a pair id, and every prompt must have all its C(N, 2) pairs (the manifest
    is the round robin's; the tournament picks its rows from it) with consistent media paths.
    """
    groups: dict[str, dict[tuple[int, int], Mapping[str, Any]]] = {}
    for r in rows:
        if r.get("task") != "comparison":
            raise ValueError(f"{r.get('sample_id')}: the tournament judges comparison rows only, got {r.get('task')}")
        pid, i, j = parse_pair_id(r["sample_id"])
        groups.setdefault(pid, {})[(i, j)] = r
    if not groups:
        raise ValueError("no comparison rows to play a tournament on")
    out = {}
    for pid in sorted(groups):
        pairs = groups[pid]
        indices = sorted({x for ij in pairs for x in ij})
        missing = [(i, j) for k, i in enumerate(indices) for j in indices[k + 1 :] if (i, j) not in pairs]
        if missing:
            raise ValueError(
                f"prompt {pid}: the manifest lacks pair(s) {[pair_id(pid, i, j) for i, j in missing[:5]]}; "
                "the tournament needs a prompt's full pair manifest (stage3.pairs manifest)"
            )
        paths: dict[int, str] = {}
        for (i, j), r in pairs.items():
            for x, path in zip((i, j), r["media"], strict=True):
                if paths.setdefault(x, path) != path:
                    raise ValueError(f"prompt {pid}: video {x} has two paths, {paths[x]!r} and {path!r}")
        out[pid] = PromptTournament(pid, indices, pairs)
    return out


def total_judgments(tournaments: Mapping[str, PromptTournament]) -> int:
    """2 (⌈3N/2⌉ − 2) judgments per prompt."""
    return sum(2 * tournament_comparisons(len(p.indices)) for p in tournaments.values())


def total_rounds(tournaments: Mapping[str, PromptTournament]) -> int:
    """The rounds of the largest prompt's tournament: 1 + ⌈log2 ⌈N/2⌉⌉."""
    return max(tournament_rounds(len(p.indices)) for p in tournaments.values())


def _advance(p: PromptTournament, have: Mapping[str, Mapping[str, Any]]) -> None:
    outcomes = []
    better = matrix_better(p.W)
    for a, b in p.t.pending():
        sid = p.sample_id(a, b)
        o = pair_outcome(have[f"{sid}|AB"], have[f"{sid}|BA"])
        p.W[a, b], p.W[b, a] = o.first, 1.0 - o.first
        outcomes.append(better(a, b))
    p.t.advance(outcomes)


def _verdict(rec: Mapping[str, Any]) -> dict[str, Any]:
    """What a comparison's outcome reads of a record (the reasoning text stays in the file only)."""
    return {k: rec[k] for k in ("key", "pred", "p") if k in rec}


def load_partial(partial: Path) -> dict[str, Mapping[str, Any]]:
    """The verdicts of an interrupted run by key (a torn last line is cut off first, as the judge does)."""
    read_done(partial)
    return {k: _verdict(r) for k, r in index_records(load_predictions(partial)).items()} if partial.exists() else {}


def replay(tournaments: Mapping[str, PromptTournament], have: Mapping[str, Mapping[str, Any]]) -> int:
    """Advance every tournament through the rounds whose records are all in ``have``; the judgments of ``have``
    that the tournaments used or need next (what a restarted run does not judge again)."""
    used = 0
    for p in tournaments.values():
        while not p.t.done:
            keys = [it.key for it in p.items()]
            present = sum(k in have for k in keys)
            used += present
            if present < len(keys):
                break
            _advance(p, have)
    return used


def judge_rounds(
    tournaments: Mapping[str, PromptTournament],
    judge: Judge,
    partial: Path,
    have: dict[str, Mapping[str, Any]],
    *,
    batch_size: int,
    on_judged: Callable[[int], Any] | None = None,
) -> dict[str, Any]:
    """Play every tournament to its end (after ``replay``): per round, the missing judgments of all prompts' pending
    comparisons are judged in chunks of ``batch_size`` and appended to ``partial`` (and to ``have``); then every
    prompt advances. Returns the counts per round of this call (comparisons, judgments judged now)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rounds = []
    while True:
        active = [p for p in tournaments.values() if not p.t.done]
        if not active:
            break
        number = 1 + max(p.t.rounds for p in active)  # after a resumed crash a few prompts may be one round ahead
        round_of = {it.key: p.t.rounds + 1 for p in active for it in p.items()}
        items = [it for p in active for it in p.items()]
        todo = [it for it in items if it.key not in have]
        for s in range(0, len(todo), batch_size):
            chunk = todo[s : s + batch_size]
            recs = judge(chunk)
            if [r.get("key") for r in recs] != [it.key for it in chunk]:
                raise RuntimeError(f"the judge returned {len(recs)} record(s) not matching the {len(chunk)} judgments")
            for r in recs:
                r["round"] = round_of[r["key"]]
            append_records(partial, recs)
            have.update((r["key"], _verdict(r)) for r in recs)
            if on_judged is not None:
                on_judged(len(chunk))
        for p in active:
            _advance(p, have)
        rounds.append({"round": number, "prompts": len(active), "comparisons": len(items) // 2, "judged": len(todo)})
        log.info("tournament round %d: %d prompt(s), %d comparison(s), %d judgment(s) judged now (%d resumed)",
                 number, len(active), len(items) // 2, len(todo), len(items) - len(todo))  # fmt: skip
    return {
        "rounds": rounds,
        "judged_now": sum(r["judged"] for r in rounds),
        "comparisons": sum(p.t.comparisons for p in tournaments.values()),
        "max_rounds": max(p.t.rounds for p in tournaments.values()),
    }


def picks(tournaments: Mapping[str, PromptTournament]) -> dict[str, tuple[int, int]]:
    """(best, worst) index values of every finished tournament."""
    return {pid: (p.indices[p.t.best], p.indices[p.t.worst]) for pid, p in tournaments.items()}
