"""Stage 3's adaptive tournament (``pairing: tournament``): only the max-min tournament's pairs are judged, round by
round for all prompts together; ``stage3.pairs select --mode tournament`` picks from those records what
``selection.tournament`` picks on the same verdicts; a crash keeps the finished rounds; the rules render it."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from vqinsight.records import Item, to_records
from vqinsight.stage3 import pairs, tournament
from vqinsight.stage3.index import pair_id, pair_manifest, parse_pair_id
from vqinsight.stage3.selection import (
    MaxMin,
    matrix_better,
    pair_outcome,
    tournament_comparisons,
    tournament_rounds,
)
from vqinsight.stage3.selection import (
    tournament as sync_tournament,
)

ROOT = Path(__file__).resolve().parents[2]


def _index(prompts: dict[str, int]) -> list[dict[str, Any]]:
    return [
        {"prompt_id": pid, "prompt": f"about {pid}", "index": i, "seed": i, "path": f"v/{pid}/{i}.mp4"}
        for pid, n in prompts.items()
        for i in range(n)
    ]


def _rows(index: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stage-3 pair manifest's rows as the judge job reads them."""
    return sorted(to_records(pair_manifest(index)), key=lambda r: r["sample_id"])


def _video(path: str) -> tuple[str, int]:
    _, pid, name = path.split("/")
    return pid, int(name.split(".")[0])


class FakeJudge:
    """Records like ``Judge.judge``'s: ``verdict(pid, i, j, order)`` gives (pred, P(A)) for the row's media
    (i, j) in the order shown. Calls are logged."""

    def __init__(self, verdict) -> None:
        self.verdict, self.calls = verdict, []

    def __call__(self, items: list[Item]) -> list[dict[str, Any]]:
        self.calls.append([it.key for it in items])
        out = []
        for it in items:
            (pid, i), (_, j) = (_video(m) for m in it.row["media"])
            pred, pa = self.verdict(pid, i, j, it.order)
            out.append({"key": it.key, "sample_id": it.row["sample_id"], "order": it.order, "pred": pred,
                        "p": {"A": pa, "B": 1.0 - pa}})  # fmt: skip
        return out

    @property
    def keys(self) -> list[str]:
        return [k for c in self.calls for k in c]


def _quality_judge(quality: dict[tuple[str, int], float]) -> FakeJudge:
    """The video shown first wins when its hidden quality is higher, in either order."""

    def verdict(pid: str, i: int, j: int, order: str) -> tuple[str, float]:
        d = quality[(pid, i)] - quality[(pid, j)]
        return ("A" if d > 0 else "B"), 0.5 + float(np.clip(d, -1, 1)) / 2

    return FakeJudge(verdict)


def _cyclic_judge(seed: int) -> FakeJudge:
    """Non-transitive: each unordered pair gets its own random verdicts, split between orders in a third of the
    pairs (the margin decides), and an exact tie (split, both P = 0.5) in a tenth."""
    cache: dict[tuple[str, int, int], tuple[str, float, str, float]] = {}

    def verdict(pid: str, i: int, j: int, order: str) -> tuple[str, float]:
        lo, hi = min(i, j), max(i, j)
        if (pid, lo, hi) not in cache:
            r = random.Random(f"{seed}|{pid}|{lo}|{hi}")
            u = r.random()
            p_lo = r.uniform(0.05, 0.95)  # P(lo better) in the (lo, hi) order
            ab = "A" if r.random() < 0.5 else "B"
            if u < 0.1:
                cache[(pid, lo, hi)] = ("A", 0.5, "A", 0.5)  # split, margin exactly 0
            elif u < 0.4:
                cache[(pid, lo, hi)] = (ab, p_lo, ab, r.uniform(0.05, 0.95))  # the same position twice: split
            else:
                cache[(pid, lo, hi)] = (ab, p_lo, "B" if ab == "A" else "A", 1.0 - p_lo)
        pa_ab, p_ab, pa_ba, p_ba = cache[(pid, lo, hi)]
        return (pa_ab, p_ab) if i == lo else (pa_ba, p_ba)

    return FakeJudge(verdict)


def _play(rows, judge, partial: Path, batch_size: int = 10_000) -> tuple[dict, dict]:
    plan = tournament.plan(rows)
    have = tournament.load_partial(partial)
    tournament.replay(plan, have)
    stats = tournament.judge_rounds(plan, judge, partial, have, batch_size=batch_size)
    return plan, stats


def _select(tmp_path: Path, index: list[dict[str, Any]], predictions: Path, mode: str = "tournament"):
    idx = tmp_path / "index.jsonl"
    idx.write_text("".join(json.dumps(r) + "\n" for r in index))
    out, summary = tmp_path / f"sel_{predictions.stem}.jsonl", tmp_path / f"sel_{predictions.stem}.json"
    args = ["--predictions", str(predictions), "--out", str(out), "--summary", str(summary), "--mode", mode]
    assert pairs.main(["select", "--index", str(idx), *args]) == 0
    return {ln["prompt_id"]: ln for ln in map(json.loads, out.read_text().splitlines())}, json.loads(
        summary.read_text()
    )


# ----------------------------------------------------------------------------------------------- the schedule


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 9, 10, 16, 17])
def test_maxmin_plays_distinct_pairs_in_knockout_rounds(n: int) -> None:
    rng = np.random.default_rng(n)
    q = rng.permutation(n)
    t, seen, sizes = MaxMin(n), set(), []
    while not t.done:
        todo = t.pending()
        assert all(i < j for i, j in todo)
        assert not seen & set(todo), "a pair is never compared twice"
        seen |= set(todo)
        sizes.append(len(todo))
        t.advance([bool(q[i] > q[j]) for i, j in todo])
    assert t.comparisons == len(seen) == tournament_comparisons(n) == max(0, math.ceil(3 * n / 2) - 2)
    assert t.rounds == tournament_rounds(n) == (1 + math.ceil(math.log2(math.ceil(n / 2))) if n > 1 else 1)
    assert sizes[0] == n // 2
    assert (q[t.best], q[t.worst]) == (n - 1, 0)
    with pytest.raises(ValueError, match="finished"):
        t.advance([])


def test_maxmin_rejects_a_wrong_number_of_outcomes() -> None:
    t = MaxMin(4)
    with pytest.raises(ValueError, match="2 comparison"):
        t.advance([True])


def test_parse_pair_id_inverts_pair_id() -> None:
    assert parse_pair_id(pair_id("a|b", 3, 12)) == ("a|b", 3, 12)
    for bad in ("p0", "p0|3-1", "|01-02", "p0|01_02"):
        with pytest.raises(ValueError, match="pair id"):
            parse_pair_id(bad)


# ----------------------------------------------------------------------------------------------- the judging


def test_only_the_tournament_pairs_are_judged_round_by_round_and_best_worst_are_exact(tmp_path: Path) -> None:
    sizes = {"p2": 2, "p3": 3, "p4": 4, "p5": 5, "p10": 10}
    index = _index(sizes)
    rng = np.random.default_rng(0)
    quality = {(r["prompt_id"], r["index"]): float(rng.uniform()) for r in index}
    judge = _quality_judge(quality)
    partial = tmp_path / "judged.jsonl.partial"
    plan, stats = _play(_rows(index), judge, partial)

    per_prompt: dict[str, set[str]] = {}
    for key in judge.keys:
        sid, _, order = key.rpartition("|")
        per_prompt.setdefault(parse_pair_id(sid)[0], set()).add(sid)
    for pid, n in sizes.items():
        assert len(per_prompt[pid]) == math.ceil(3 * n / 2) - 2 == plan[pid].t.comparisons
    assert len(judge.keys) == len(set(judge.keys)) == 2 * sum(math.ceil(3 * n / 2) - 2 for n in sizes.values())
    assert len(judge.keys) == tournament.total_judgments(plan) == 2 * (1 + 3 + 4 + 6 + 13)
    # one call per round (the batch holds a whole round of every prompt), both orders of each comparison together
    assert len(judge.calls) == stats["max_rounds"] == tournament_rounds(10) == 4
    assert [r["comparisons"] for r in stats["rounds"]] == [1 + 1 + 2 + 2 + 5, 2 + 2 + 2 + 4, 2 + 2, 2]
    for call in judge.calls:
        assert {k.rsplit("|", 1)[0] + "|AB" for k in call} == {k for k in call if k.endswith("|AB")}
        assert len(call) == 2 * len({k.rsplit("|", 1)[0] for k in call})
    for pid, (best, worst) in tournament.picks(plan).items():
        q = {i: quality[(pid, i)] for i in range(sizes[pid])}
        assert (best, worst) == (max(q, key=q.get), min(q, key=q.get))
    # the records are enough for select --mode tournament, which picks the same videos
    recs = [json.loads(x) for x in partial.read_text().splitlines()]
    assert [r["round"] for r in recs] == sorted(r["round"] for r in recs)
    lines, summary = _select(tmp_path, index, partial)
    assert {pid: (ln["win_index"], ln["lose_index"]) for pid, ln in lines.items()} == tournament.picks(plan)
    assert summary["n_pairs"] == summary["tournament"]["comparisons"] == 1 + 3 + 4 + 6 + 13
    assert summary["tournament"]["round_robin_comparisons"] == 1 + 3 + 6 + 10 + 45
    # N = 2 and 3: the tournament judges every pair, so its agreement with the round robin is measured there
    assert summary["tournament"]["prompts_with_every_pair"] == 2 and summary["tournament"]["agree_both"] == 1.0
    # round robin refuses the tournament's records: it needs every pair
    idx = tmp_path / "index.jsonl"
    args = ["--out", str(tmp_path / "rr.jsonl"), "--summary", str(tmp_path / "rr.json")]
    assert pairs.main(["select", "--index", str(idx), "--predictions", str(partial), *args]) == 2


@pytest.mark.parametrize("seed", range(6))
def test_non_transitive_judge_gives_the_pick_of_selection_tournament_on_the_same_verdicts(tmp_path, seed) -> None:
    sizes = {"a": 10, "b": 9, "c": 5, "d": 4, "e": 3, "f": 2, "g": 7}
    index = _index(sizes)
    judge = _cyclic_judge(seed)
    partial = tmp_path / "t.jsonl.partial"
    plan, _ = _play(_rows(index), judge, partial, batch_size=7)
    # every pair's verdicts from the same judge: selection.tournament on the round robin's matrix
    full = _cyclic_judge(seed)
    full_path = tmp_path / "all.jsonl"
    from vqinsight.records import expand

    recs = full(expand(_rows(index)))
    full_path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    by_key = {r["key"]: r for r in recs}
    expected, degenerate = {}, 0
    for pid, n in sizes.items():
        W = np.zeros((n, n))
        for i in range(n):
            for j in range(i + 1, n):
                o = pair_outcome(by_key[f"{pair_id(pid, i, j)}|AB"], by_key[f"{pair_id(pid, i, j)}|BA"])
                W[i, j], W[j, i] = o.first, 1 - o.first
        best, worst, _ = sync_tournament(n, matrix_better(W))
        expected[pid] = (best, worst)
        degenerate += best == worst
    assert tournament.picks(plan) == expected
    # select --mode tournament on only the tournament's records, and on every pair's, picks the same where the
    # tournament is not degenerate (a degenerate prompt falls back to the round-robin rule over the judged pairs)
    lines, summary = _select(tmp_path, index, partial)
    lines_all, summary_all = _select(tmp_path, index, full_path)
    assert summary["tournament"]["degenerate"] == summary_all["tournament"]["degenerate"] == degenerate
    for pid, (best, worst) in expected.items():
        if best != worst:
            assert (lines[pid]["win_index"], lines[pid]["lose_index"]) == (best, worst)
            assert (lines_all[pid]["win_index"], lines_all[pid]["lose_index"]) == (best, worst)
        else:
            assert lines[pid]["win_index"] != lines[pid]["lose_index"]
    assert summary["decided_by"]["margin"] + summary["decided_by"]["tie"] > 0, "split verdicts were exercised"


def test_refine_in_tournament_mode_takes_the_tournaments_best_of_the_new_samples(tmp_path: Path) -> None:
    sizes = {"p0": 10, "p1": 5}
    index = _index(sizes)
    rng = np.random.default_rng(2)
    quality = {(r["prompt_id"], r["index"]): float(rng.uniform()) for r in index}
    partial = tmp_path / "new.partial"
    plan, _ = _play(_rows(index), _quality_judge(quality), partial)
    old = [{"prompt_id": pid, "prompt": f"about {pid}", "lose": f"old/{pid}.mp4", "lose_index": 0} for pid in sizes]
    wl, idx, out = tmp_path / "wl.jsonl", tmp_path / "new.jsonl", tmp_path / "refine.parquet"
    wl.write_text("".join(json.dumps(o) + "\n" for o in old))
    idx.write_text("".join(json.dumps(r) + "\n" for r in index))
    args = ["refine", "--pairs", str(wl), "--index", str(idx), "--predictions", str(partial), "--out", str(out),
            "--dataset", "united_r1", "--seed", "0"]  # fmt: skip
    assert pairs.main([*args, "--mode", "tournament"]) == 0
    got = {}
    for r in pl.read_parquet(out).iter_rows(named=True):
        new = r["media"][0] if r["gt_choice"] == "A" else r["media"][1]
        got[r["sample_id"].split("/")[-1]] = _video(new)[1]
    assert got == {pid: best for pid, (best, _) in tournament.picks(plan).items()}
    assert pairs.main(args) == 2, "the round robin needs every pair"


class Crash(RuntimeError):
    pass


def test_a_crash_keeps_the_finished_rounds_and_the_restart_judges_only_the_rest(tmp_path: Path) -> None:
    sizes = {"p0": 10, "p1": 7, "p2": 4}
    index = _index(sizes)
    rng = np.random.default_rng(1)
    quality = {(r["prompt_id"], r["index"]): float(rng.uniform()) for r in index}
    rows = _rows(index)
    ref_judge = _quality_judge(quality)
    ref_plan, _ = _play(rows, ref_judge, tmp_path / "ref.partial")

    judge = _quality_judge(quality)
    partial = tmp_path / "run.partial"
    plan = tournament.plan(rows)
    with pytest.raises(Crash):
        tournament.judge_rounds(plan, _crash_after(judge, calls=1), partial, {}, batch_size=10_000)
    round1 = {json.loads(x)["key"] for x in partial.read_text().splitlines()}
    assert len(round1) == 2 * (5 + 3 + 2) and {json.loads(x)["round"] for x in partial.read_text().splitlines()} == {1}
    with open(partial, "a") as f:
        f.write('{"key": "p0|00-01|A')  # a torn line from the killed write

    again = _quality_judge(quality)
    plan2, stats = _play(rows, again, partial)
    assert not round1 & set(again.keys), "round 1 is not judged again"
    assert [r["round"] for r in stats["rounds"]] == [2, 3, 4]
    assert sorted(round1 | set(again.keys)) == sorted(ref_judge.keys)
    assert tournament.picks(plan2) == tournament.picks(ref_plan)

    # a crash in the middle of round 2 (small chunks): the restart judges only the chunks not yet written
    judge = _quality_judge(quality)
    partial = tmp_path / "mid.partial"
    with pytest.raises(Crash):  # round 1's 20 judgments are chunks 6, 6, 6, 2; the 5th call is round 2's first
        tournament.judge_rounds(tournament.plan(rows), _crash_after(judge, calls=5), partial, {}, batch_size=6)
    written = {json.loads(x)["key"] for x in partial.read_text().splitlines()}
    assert len(written) == 20 + 6 and written > round1
    again = _quality_judge(quality)
    plan3 = tournament.plan(rows)
    have = tournament.load_partial(partial)
    assert tournament.replay(plan3, have) == len(written)
    tournament.judge_rounds(plan3, again, partial, have, batch_size=6)
    assert not written & set(again.keys) and len(written) + len(again.keys) == len(ref_judge.keys)
    assert tournament.picks(plan3) == tournament.picks(ref_plan)


def _crash_after(judge: FakeJudge, calls: int):
    def f(items):
        if len(judge.calls) >= calls:
            raise Crash("killed")
        return judge(items)

    return f


def test_plan_needs_a_full_pair_manifest() -> None:
    rows = _rows(_index({"p0": 4}))
    with pytest.raises(ValueError, match="lacks pair"):
        tournament.plan(rows[1:])
    with pytest.raises(ValueError, match="pair id"):
        tournament.plan([{**rows[0], "sample_id": "p0"}])


# ----------------------------------------------------------------------------------------------- the judge job


@pytest.mark.slow
def test_judge_job_with_tournament_on_the_tiny_model(tmp_path: Path) -> None:
    """python -m vqinsight.judge --tournament with the tiny judge: only the tournament's pairs, select works."""
    import torch

    from vqinsight.judge import __main__ as judge_cli
    from vqinsight.models.tiny import build_tiny
    from vqinsight.video import write_video

    torch.set_num_threads(1)
    model = build_tiny(tmp_path / "tiny", seed=0, video_pixels=(784, 4704), image_pixels=(784, 4704))
    index = []
    for pid, n in (("p0", 5), ("p1", 3)):
        for i in range(n):
            path = tmp_path / f"{pid}_{i}.mp4"
            write_video(path, np.full((4, 56, 84, 3), 30 + 40 * i, np.uint8), fps=4)
            index.append({"prompt_id": pid, "prompt": f"about {pid}", "index": i, "seed": i, "path": str(path)})
    manifest = tmp_path / "pairs.parquet"
    pair_manifest(index).write_parquet(manifest)
    out = tmp_path / "judged.jsonl"
    media = ["--cache-dir", str(tmp_path / "cache"), "--nframes", "4", "--max-pixels", "4704", "--min-pixels", "784",
             "--image-max-pixels", "4704", "--scale", "1", "5"]  # fmt: skip
    args = ["--model", str(model), "--manifest", str(manifest), "--task", "comparison", "--split", "all",
            "--out", str(out), "--style", "short", "--batch-size", "64", "--max-new-tokens", "6", "--threads", "1",
            "--tournament", *media]  # fmt: skip
    assert judge_cli.main([*args, "--limit", "3"]) == 2, "--limit would cut prompts' pair sets"
    assert judge_cli.main(args) == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    per: dict[str, set] = {}
    for r in recs:
        pid, i, j = parse_pair_id(r["sample_id"])
        per.setdefault(pid, set()).add((i, j))
    assert (len(per["p0"]), len(per["p1"])) == (6, 3) and len(recs) == 2 * 9
    assert all(r["pred"] in ("A", "B", None) and set(r["p"]) == {"A", "B"} for r in recs)
    meta = json.loads((tmp_path / "judged.jsonl.meta.json").read_text())
    assert meta["pairing"] == "tournament" and meta["n_judgments"] == 18 and meta["comparisons"] == 9
    lines, summary = _select(tmp_path, index, out)
    assert set(lines) == {"p0", "p1"} and summary["n_judgments"] == 18
    # a rerun over the finished file's records (as .partial) judges nothing and loads no model
    os.replace(out, tmp_path / "judged.jsonl.partial")
    assert judge_cli.main(["--model", str(tmp_path / "missing-model"), *args[2:]]) == 0
    assert [json.loads(x) for x in out.read_text().splitlines()] == recs


# ----------------------------------------------------------------------------------------------- the rules


@pytest.mark.slow
def test_dry_run_renders_the_tournament_commands(tmp_path: Path) -> None:
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}

    def commands(*overlay: str) -> list[str]:
        p = subprocess.run(
            [snakemake, "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "-n", "-p",
             "--configfile", str(ROOT / "config" / "demo.yaml"), *overlay, "--", "stage3"],
            capture_output=True, text=True, env=env, timeout=600, check=False,
        )  # fmt: skip
        assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
        return [ln for ln in p.stdout.splitlines() if "vqinsight.judge " in ln or "stage3.pairs " in ln]

    overlay = tmp_path / "tournament.yaml"
    overlay.write_text("stage3: {pairing: tournament}\n")
    default, tour = commands(), commands(str(overlay))
    judge = [c for c in tour if "vqinsight.judge " in c and "/samples/" in c]
    assert judge and all("--tournament" in c for c in judge)
    assert not any("--tournament" in c for c in tour if "/eval/winrate/" in c), "the win-rate judge is unchanged"
    picks = [c for c in tour if " select " in c or " refine " in c]
    assert len(picks) >= 2 and all("--mode tournament" in c for c in picks)
    assert not any("--tournament" in c or "--mode tournament" in c for c in default)
    undo = [c.replace(" --tournament", "").replace("--mode tournament", "--mode round_robin") for c in tour]
    assert sorted(undo) == sorted(default), "nothing else changes"
