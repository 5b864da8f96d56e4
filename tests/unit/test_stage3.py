"""Unit tests for stage 3: pair manifests, win/lose selection, tournament, refinement set, win rate, VBench pieces."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from vqinsight.data.manifest import SCHEMA, validate_manifest
from vqinsight.stage3 import pairs, vbench
from vqinsight.stage3.index import by_prompt, pair_id, pair_manifest, read_index, winrate_manifest
from vqinsight.stage3.selection import (
    bootstrap_ci,
    refine_manifest,
    select_win_lose,
    tournament,
    tournament_comparisons,
    win_matrix,
    winrate,
)
from vqinsight.stage3.vbench import parse_vbench_results, temporal_flickering, vbench_final_scores

# ----------------------------------------------------------------------------------------------- helpers


def _index_rows(prompts: dict[str, int], root: str = "v") -> list[dict]:
    return [
        {
            "prompt_id": pid,
            "prompt": f"a prompt about {pid}",
            "index": i,
            "seed": 100 + i,
            "path": f"{root}/{pid}/{i}.mp4",
        }
        for pid, n in prompts.items()
        for i in range(n)
    ]


def _write_index(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rec(sid: str, order: str, pred: str | None, pa: float | None = None) -> dict:
    r = {"key": f"{sid}|{order}", "sample_id": sid, "order": order, "pred": pred}
    if pa is not None:
        r["p"] = {"A": pa, "B": 1.0 - pa}
    return r


def _judge(sid: str, q_first: float, q_second: float) -> list[dict]:
    """Consistent synthetic judge: the better video wins both orders with probability 0.5 + (q gap) / 2."""
    d = float(np.clip(q_first - q_second, -1, 1))
    p_first = 0.5 + d / 2
    ab = _rec(sid, "AB", "A" if d > 0 else "B", p_first)
    ba = _rec(sid, "BA", "B" if d > 0 else "A", 1.0 - p_first)  # media swapped: "A" is the second video
    return [ab, ba]


def _judge_prompts(rows: list[dict], quality: dict[tuple[str, int], float]) -> list[dict]:
    out = []
    for pid, group in by_prompt(rows).items():
        for ra, rb in itertools.combinations(group, 2):
            sid = pair_id(pid, ra["index"], rb["index"])
            out += _judge(sid, quality[(pid, ra["index"])], quality[(pid, rb["index"])])
    return out


# ----------------------------------------------------------------------------------------------- read_index


def test_read_index_sorts_and_keeps_source(tmp_path: Path) -> None:
    rows = _index_rows({"p1": 2, "p0": 3})
    a = _write_index(tmp_path / "a.jsonl", rows[3:] + rows[:1])
    b = _write_index(tmp_path / "b.jsonl", rows[1:3])
    out = read_index([a, b])
    assert [(r["prompt_id"], r["index"]) for r in out] == [("p0", 0), ("p0", 1), ("p0", 2), ("p1", 0), ("p1", 1)]
    assert out[0]["source"] == str(b) and out[1]["source"] == str(a) and out[-1]["line"] == 1


def test_read_index_duplicate_names_both_files(tmp_path: Path) -> None:
    rows = _index_rows({"p0": 2})
    a = _write_index(tmp_path / "a.jsonl", rows)
    b = _write_index(tmp_path / "b.jsonl", rows[1:])
    with pytest.raises(ValueError, match=r"a\.jsonl:2 and .*b\.jsonl:1"):
        read_index([a, b])


@pytest.mark.parametrize(
    "line,msg",
    [
        ("{not json", "not valid JSON"),
        ('{"prompt_id": "p", "prompt": "x", "index": 0, "seed": 1}', "missing field 'path'"),
        ('{"prompt_id": "p", "prompt": "x", "index": "0", "seed": 1, "path": "a"}', "'index' must be int"),
        ('{"prompt_id": "p|q", "prompt": "x", "index": 0, "seed": 1, "path": "a"}', "free of"),
        ('{"prompt_id": "p", "prompt": "x", "index": -1, "seed": 1, "path": "a"}', ">= 0"),
    ],
)
def test_read_index_bad_lines(tmp_path: Path, line: str, msg: str) -> None:
    f = tmp_path / "i.jsonl"
    f.write_text('{"prompt_id": "p", "prompt": "x", "index": 5, "seed": 1, "path": "a"}\n' + line + "\n")
    with pytest.raises(ValueError, match=rf"i\.jsonl:2: .*{msg}"):
        read_index([f])


def test_read_index_conflicting_prompt_text(tmp_path: Path) -> None:
    rows = _index_rows({"p0": 2})
    rows[1]["prompt"] = "something else"
    with pytest.raises(ValueError, match="another prompt text"):
        read_index([_write_index(tmp_path / "i.jsonl", rows)])


# ----------------------------------------------------------------------------------------------- pair manifest


def test_pair_manifest_has_all_pairs_and_validates() -> None:
    rows = _index_rows({"p0": 4, "p1": 3, "p2": 1})
    df = pair_manifest(rows, dataset="stage3_r0")
    validate_manifest(df)
    assert df.schema == pl.Schema(SCHEMA)
    counts = dict(df.group_by(pl.col("sample_id").str.split("|").list.first()).len().iter_rows())
    assert counts == {"p0": math.comb(4, 2), "p1": math.comb(3, 2)}
    r = df.filter(pl.col("sample_id") == "p0|01-03").row(0, named=True)
    assert r["media"] == ["v/p0/1.mp4", "v/p0/3.mp4"] and r["prompt"] == "a prompt about p0"
    assert (r["task"], r["media_type"], r["gt_choice"], r["preference"]) == ("comparison", "video", "tie", 0)
    assert r["raw_label"] == "unlabeled (generated pair)" and r["dataset"] == "stage3_r0" and r["split"] == "all"
    assert df["source_row"].to_list() == list(range(df.height))


def test_pair_manifest_needs_a_pair() -> None:
    with pytest.raises(ValueError, match="nothing to compare"):
        pair_manifest(_index_rows({"p0": 1}))


# ----------------------------------------------------------------------------------------------- win matrix


def test_win_matrix_agreeing_split_and_tie() -> None:
    recs = [
        # (0, 1): both orders name video 0 -> W = 1 whatever the margin sign
        _rec("p|00-01", "AB", "A", 0.45),
        _rec("p|00-01", "BA", "B", 0.40),
        # (0, 2): orders split (both say "A"); margin = mean(0.6-0.4, 0.1-0.9) = -0.3 -> video 2 wins
        _rec("p|00-02", "AB", "A", 0.6),
        _rec("p|00-02", "BA", "A", 0.9),
        # (1, 2): split with margin exactly 0 -> 0.5 each
        _rec("p|01-02", "AB", "B", 0.25),
        _rec("p|01-02", "BA", "B", 0.25),
    ]
    W, M = win_matrix(recs, "p", 3)
    assert W.tolist() == [[0.0, 1.0, 0.0], [0.0, 0.0, 0.5], [1.0, 0.5, 0.0]]
    assert M[0, 1] == pytest.approx(0.5 * ((0.45 - 0.55) + (0.60 - 0.40)))
    assert M[0, 2] == pytest.approx(-0.3) and M[1, 2] == pytest.approx(0.0)
    np.testing.assert_allclose(M, -M.T)


def test_win_matrix_unparsable_verdict_uses_margin_and_verdicts_without_probs() -> None:
    recs = [_rec("p|00-01", "AB", None, 0.3), _rec("p|00-01", "BA", "B", 0.6)]  # margin mean(-0.4, -0.2) < 0
    W, _ = win_matrix(recs, "p", 2)
    assert W[1, 0] == 1.0
    recs = [_rec("p|00-01", "AB", "B"), _rec("p|00-01", "BA", "A")]  # no probabilities, both name video 1
    W, M = win_matrix(recs, "p", 2)
    assert W[1, 0] == 1.0 and M[1, 0] == 1.0


def test_win_matrix_uses_index_values() -> None:
    recs = _judge("p|03-07", 0.2, 0.9)
    W, M = win_matrix(recs, "p", [3, 7])
    assert W.tolist() == [[0.0, 0.0], [1.0, 0.0]] and M[1, 0] > 0


def test_win_matrix_missing_record_names_the_pair() -> None:
    recs = _judge("p|00-01", 1, 0) + [_rec("p|00-02", "AB", "A", 0.9)]
    with pytest.raises(ValueError, match=r"p\|00-02 \(no BA\).*p\|01-02 \(no AB/BA\)"):
        win_matrix(recs, "p", 3)


def test_win_matrix_duplicate_key() -> None:
    with pytest.raises(ValueError, match="appears twice"):
        win_matrix(_judge("p|00-01", 1, 0) * 2, "p", 2)


# ----------------------------------------------------------------------------------------------- selection


def test_select_win_lose_known_matrix() -> None:
    W = np.array([[0, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 1], [1, 0, 0, 0]], dtype=float)
    M = np.zeros((4, 4))
    best, worst, wins = select_win_lose(W, M)
    assert wins.tolist() == [2, 2, 1, 1]
    assert (best, worst) == (0, 3)  # equal margins: lower index best, higher index worst
    M[1, 0], M[0, 1] = 0.2, -0.2  # video 1 now has the larger margin sum (0 the smaller)
    M[2, 3], M[3, 2] = -0.1, 0.1  # video 2 has the smaller margin sum among the 1-win videos
    best, worst, _ = select_win_lose(W, M)
    assert (best, worst) == (1, 2)


def test_select_win_lose_errors() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        select_win_lose(np.zeros((1, 1)), np.zeros((1, 1)))
    with pytest.raises(ValueError, match="square"):
        select_win_lose(np.zeros((2, 3)), np.zeros((2, 3)))


@pytest.mark.parametrize("n", range(2, 13))
def test_tournament_matches_round_robin_on_transitive_orders(n: int) -> None:
    rng = np.random.default_rng(n)
    for _ in range(20):
        quality = rng.permutation(n)
        calls = []

        def better(i: int, j: int, q=quality, c=calls) -> bool:
            c.append((i, j))
            return bool(q[i] > q[j])

        best, worst, count = tournament(n, better)
        assert count == len(calls) == math.ceil(3 * n / 2) - 2 == tournament_comparisons(n)
        assert quality[best] == n - 1 and quality[worst] == 0
        W = (quality[:, None] > quality[None, :]).astype(float)
        rb, rw, _ = select_win_lose(W, W - W.T)
        assert (rb, rw) == (best, worst)


def test_tournament_single_item() -> None:
    assert tournament(1, lambda i, j: True) == (0, 0, 0)


# ----------------------------------------------------------------------------------------------- select CLI


def test_select_cli_end_to_end(tmp_path: Path) -> None:
    rows = _index_rows({"p0": 5, "p1": 4, "p2": 3})
    idx = _write_index(tmp_path / "shard0.jsonl", rows)
    rng = np.random.default_rng(0)
    quality = {(r["prompt_id"], r["index"]): float(rng.uniform(0, 1)) for r in rows}
    recs = _judge_prompts(rows, quality)
    # one split pair: p0's (0, 1) AB verdict flipped to the other video; margin keeps the consistent sign
    i = next(k for k, r in enumerate(recs) if r["key"] == "p0|00-01|AB")
    recs[i]["pred"] = "B" if recs[i]["pred"] == "A" else "A"
    recs.append({"key": "other|00-01|AB", "pred": "A"})
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out, summ = tmp_path / "wl.jsonl", tmp_path / "wl.summary.json"
    rc = pairs.main(
        ["select", "--index", str(idx), "--predictions", str(pred), "--out", str(out), "--summary", str(summ)]
    )
    assert rc == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [ln["prompt_id"] for ln in lines] == ["p0", "p1", "p2"]
    for ln in lines:
        q = {i: quality[(ln["prompt_id"], i)] for i in ln["indices"]}
        assert ln["win_index"] == max(q, key=q.get) and ln["lose_index"] == min(q, key=q.get)
        assert ln["win"] == f"v/{ln['prompt_id']}/{ln['win_index']}.mp4" and ln["margin"] > 0
        assert sorted(ln["wins"]) == list(range(len(q)))  # transitive judge: 0, 1, ..., n-1 wins
    s = json.loads(summ.read_text())
    n_pairs = 10 + 6 + 3
    assert (s["n_prompts"], s["n_pairs"], s["n_judgments"], s["n_videos"]) == (3, n_pairs, 2 * n_pairs, 12)
    assert s["unparsable_share"] == 0 and s["swap_flip_rate"] == pytest.approx(1 / n_pairs)
    assert s["decided_by"] == {"both_orders": n_pairs - 1, "margin": 1, "tie": 0}
    assert s["tournament"]["agree_both"] == 1.0 and s["tournament"]["comparisons"] == 6 + 4 + 3
    assert s["n_extra_records"] == 1
    assert (tmp_path / "wl.meta.json").is_file()
    # tournament mode picks the same videos on a transitive judge
    out2 = tmp_path / "wl2.jsonl"
    args = ["select", "--index", str(idx), "--predictions", str(pred), "--out", str(out2), "--summary", str(summ)]
    assert pairs.main([*args, "--mode", "tournament"]) == 0
    assert [json.loads(x)["win"] for x in out2.read_text().splitlines()] == [ln["win"] for ln in lines]


def test_select_cli_missing_pair_fails(tmp_path: Path) -> None:
    rows = _index_rows({"p0": 3})
    idx = _write_index(tmp_path / "i.jsonl", rows)
    recs = _judge_prompts(rows, {("p0", i): i for i in range(3)})[:-1]
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps(r) + "\n" for r in recs))
    args = ["--out", str(tmp_path / "o.jsonl"), "--summary", str(tmp_path / "s.json")]
    assert pairs.main(["select", "--index", str(idx), "--predictions", str(pred), *args]) == 2
    assert not (tmp_path / "o.jsonl").exists()


def test_manifest_cli_writes_parquet_and_meta(tmp_path: Path) -> None:
    idx = _write_index(tmp_path / "i.jsonl", _index_rows({"p0": 3, "p1": 2}))
    out = tmp_path / "pairs.parquet"
    assert pairs.main(["manifest", "--index", str(idx), "--out", str(out)]) == 0
    df = pl.read_parquet(out)
    validate_manifest(df)
    assert df.height == 4 and json.loads((tmp_path / "pairs.meta.json").read_text())["rows"] == 4


# ----------------------------------------------------------------------------------------------- refine


def _refine_inputs(n_prompts: int = 12):
    prompts = {f"p{k:02d}": 3 for k in range(n_prompts)}
    new = _index_rows(prompts, root="new")
    quality = {(r["prompt_id"], r["index"]): float((r["index"] * 7 + int(r["prompt_id"][1:])) % 3) for r in new}
    recs = _judge_prompts(new, quality)
    old = [
        {
            "prompt_id": pid,
            "prompt": f"a prompt about {pid}",
            "lose": f"old/{pid}/4.mp4",
            "lose_index": 4,
            "line": k + 1,
        }
        for k, pid in enumerate(prompts)
    ]
    best = {pid: max(range(3), key=lambda i, p=pid: quality[(p, i)]) for pid in prompts}
    return old, new, recs, best


def test_refine_rows_labelled_and_order_randomised_reproducibly() -> None:
    old, new, recs, best = _refine_inputs()
    df = refine_manifest(old, new, recs, dataset="refine_r1", seed=3, source_file="wl.jsonl")
    validate_manifest(df)
    assert df.height == 12 and set(df["split"]) == {"train"} and set(df["task"]) == {"comparison"}
    for r in df.iter_rows(named=True):
        pid = r["sample_id"].split("/")[-1]
        new_path = f"new/{pid}/{best[pid]}.mp4"
        winner = r["media"][0] if r["gt_choice"] == "A" else r["media"][1]
        assert winner == new_path and f"old/{pid}/4.mp4" in r["media"]
        assert r["preference"] == (1 if r["gt_choice"] == "A" else -1)
        assert r["source_file"] == "wl.jsonl"
    firsts = df["gt_choice"].to_list()
    assert 0 < firsts.count("A") < 12  # both orders occur
    again = refine_manifest(old, new, recs, dataset="refine_r1", seed=3)
    assert again["gt_choice"].to_list() == firsts
    other = refine_manifest(old, new, recs, dataset="refine_r1", seed=4)
    assert other["gt_choice"].to_list() != firsts
    # a prompt's order does not depend on the other prompts
    sub = refine_manifest(old[5:6], new, recs, dataset="refine_r1", seed=3)
    assert sub["gt_choice"].to_list() == [firsts[5]]


def test_refine_missing_prompt_named() -> None:
    old, new, recs, _ = _refine_inputs(3)
    old.append({"prompt_id": "gone", "prompt": "x", "lose": "old/gone.mp4", "lose_index": 0, "line": 9})
    with pytest.raises(ValueError, match=r"without new samples: \['gone'\]"):
        refine_manifest(old, new, recs, dataset="r", seed=0)


def test_refine_cli(tmp_path: Path) -> None:
    old, new, recs, _ = _refine_inputs(4)
    wl = tmp_path / "wl.jsonl"
    wl.write_text("".join(json.dumps({k: v for k, v in o.items() if k != "line"}) + "\n" for o in old))
    idx = _write_index(tmp_path / "s.jsonl", new)
    pred = tmp_path / "p.jsonl"
    pred.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "refine.parquet"
    args = ["refine", "--pairs", str(wl), "--index", str(idx), "--predictions", str(pred), "--out", str(out)]
    assert pairs.main([*args, "--dataset", "ref", "--seed", "1"]) == 0
    df = pl.read_parquet(out)
    assert df.height == 4 and df["source_row"].to_list() == [1, 2, 3, 4]


# ----------------------------------------------------------------------------------------------- win rate


def test_winrate_manifest_pairs_common_samples() -> None:
    a = _index_rows({"p0": 3, "p1": 2}, root="a")
    b = _index_rows({"p0": 2, "p2": 2}, root="b")
    df = winrate_manifest(a, b)
    validate_manifest(df)
    assert df["sample_id"].to_list() == ["p0|00", "p0|01"]
    assert df.row(1, named=True)["media"] == ["a/p0/1.mp4", "b/p0/1.mp4"]


def test_winrate_on_synthetic_records() -> None:
    recs = []
    recs += _judge("p|00", 1.0, 0.0) + _judge("p|01", 1.0, 0.0) + _judge("p|02", 1.0, 0.0)  # a wins both orders
    recs += _judge("p|03", 0.0, 1.0)  # b wins
    recs += [_rec("p|04", "AB", "A", 0.9), _rec("p|04", "BA", "A", 0.3)]  # split, margin (0.8 + 0.4)/2 > 0: a
    recs += [_rec("p|05", "AB", "A", 0.6), _rec("p|05", "BA", "A", 0.6)]  # split, margin 0: 0.5
    res = winrate(recs, n_boot=2000, seed=1)
    assert res["n"] == 6 and res["winrate"] == pytest.approx(4.5 / 6)
    assert (res["a_wins"], res["b_wins"], res["ties"]) == (4, 1, 1)
    lo, hi = res["ci95"]
    assert 0 <= lo < res["winrate"] < hi <= 1
    assert winrate(recs, n_boot=2000, seed=1)["ci95"] == [lo, hi]
    assert res["swap_flip_rate"] == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match=r"one order only: \['p\|09'\]"):
        winrate([*recs, _rec("p|09", "AB", "A", 0.9)])


def test_bootstrap_ci_narrows_with_n() -> None:
    small = bootstrap_ci([1.0, 0.0] * 10, n_boot=4000, seed=0)
    big = bootstrap_ci([1.0, 0.0] * 1000, n_boot=4000, seed=0)
    assert small[0] < big[0] < 0.5 < big[1] < small[1]
    assert big[1] - big[0] == pytest.approx(2 * 1.96 * 0.5 / math.sqrt(2000), rel=0.1)


def test_winrate_cli(tmp_path: Path) -> None:
    a = _write_index(tmp_path / "a.jsonl", _index_rows({"p0": 2}, root="a"))
    b = _write_index(tmp_path / "b.jsonl", _index_rows({"p0": 2}, root="b"))
    man = tmp_path / "wr.parquet"
    assert pairs.main(["winrate-manifest", "--a", str(a), "--b", str(b), "--out", str(man)]) == 0
    recs = [r for sid in pl.read_parquet(man)["sample_id"] for r in _judge(sid, 1.0, 0.0)]
    pred = tmp_path / "p.jsonl"
    pred.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "wr.json"
    assert pairs.main(["winrate", "--predictions", str(pred), "--out", str(out), "--n-boot", "500"]) == 0
    assert json.loads(out.read_text())["winrate"] == 1.0


# ----------------------------------------------------------------------------------------------- VBench


def test_temporal_flickering_constant_and_known_difference() -> None:
    still = np.full((5, 4, 6, 3), 77, dtype=np.uint8)
    assert temporal_flickering(still) == 1.0
    f = np.zeros((3, 2, 2, 3), dtype=np.uint8)
    f[1] = 51  # |f1 - f0| = 51 everywhere
    f[2, 0] = 51  # |f2 - f1| = 0 on row 0, 51 on row 1 -> mean 25.5
    assert temporal_flickering(f) == pytest.approx((255 - (51 + 25.5) / 2) / 255)
    flip = np.stack([np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 3), 255, np.uint8)] * 2)
    assert temporal_flickering(flip) == 0.0  # no uint8 wrap-around
    with pytest.raises(ValueError, match="at least 2 frames"):
        temporal_flickering(still[:1])
    with pytest.raises(ValueError, match="uint8"):
        temporal_flickering(still.astype(np.float32))


def test_vbench_final_scores_hand_values() -> None:
    raw = {d: 1.0 for d in vbench.DIMENSIONS}  # every dimension at its max except where max < 1
    raw.update({"temporal_flickering": 0.6293 + 0.5 * (1 - 0.6293), "dynamic_degree": 0.4, "scene": 0.8222 / 2})
    raw["motion smoothness"] = raw.pop("motion_smoothness") * 0.9975  # space form accepted; normalises to 1
    raw["appearance_style"], raw["temporal_style"], raw["overall_consistency"] = 0.2855, 0.364, 0.364
    s = vbench_final_scores(raw)
    # quality: (1 + 1 + 0.5 + 1 + 1 + 1 + 0.5*0.4) / (6 + 0.5)
    assert s["quality_score"] == pytest.approx(5.7 / 6.5)
    # semantic: (1*5 + 0.5 + 1*3) / 9 with scene at half its range
    assert s["semantic_score"] == pytest.approx(8.5 / 9)
    assert s["total_score"] == pytest.approx((4 * 5.7 / 6.5 + 8.5 / 9) / 5)
    assert s["missing"] == []
    partial = vbench_final_scores({"dynamic_degree": 0.6306, "scene": 0.5225, "not_a_dim": 3})
    assert partial["quality_score"] is None and partial["total_score"] is None and partial["ignored"] == ["not_a_dim"]
    assert partial["normalized_weighted"]["dynamic_degree"] == pytest.approx(0.3153)
    with pytest.raises(ValueError, match="finite"):
        vbench_final_scores({"scene": float("nan")})


def test_vbench_constants_match_source() -> None:
    assert len(vbench.DIMENSIONS) == 16 and set(vbench.NORMALIZE) == set(vbench.DIMENSIONS)
    assert vbench.DIM_WEIGHT["dynamic_degree"] == 0.5 and sum(vbench.DIM_WEIGHT.values()) == 15.5
    assert (vbench.QUALITY_WEIGHT, vbench.SEMANTIC_WEIGHT) == (4, 1)
    assert len(vbench.QUALITY_DIMS) == 7 and len(vbench.SEMANTIC_DIMS) == 9


def test_parse_vbench_results_fixture(tmp_path: Path) -> None:
    f = tmp_path / "dpo_eval_results.json"
    data = {
        "dynamic_degree": [0.625, [{"video_path": "v/a-0.mp4", "video_results": True}]],
        "temporal_flickering": [0.97, [{"video_path": "v/a-0.mp4", "video_results": 0.97}]],
        "scene": [0.5, []],
    }
    f.write_text(json.dumps(data))
    assert parse_vbench_results(f) == {"dynamic_degree": 0.625, "temporal_flickering": 0.97, "scene": 0.5}
    f.write_text(json.dumps({"scene": ["high", []]}))
    with pytest.raises(ValueError, match=r"dpo_eval_results\.json: dimension 'scene'"):
        parse_vbench_results(f)
    f.write_text(json.dumps({"scene": 0.5}))
    with pytest.raises(ValueError, match="expected \\[aggregate_score"):
        parse_vbench_results(f)


def test_check_dimensions_custom_mode() -> None:
    assert vbench.check_dimensions(["dynamic degree"], "custom_input") == ["dynamic_degree"]
    with pytest.raises(ValueError, match="standard prompt suite"):
        vbench.check_dimensions(["scene", "dynamic_degree"], "custom_input")
    with pytest.raises(ValueError, match="unknown VBench dimension"):
        vbench.check_dimensions(["sharpness"], "vbench_standard")


def test_vbench_demo_cli(tmp_path: Path) -> None:
    from vqinsight.video import write_video

    still = np.full((6, 16, 16, 3), 90, dtype=np.uint8)
    moving = np.stack([np.full((16, 16, 3), 40 * t, dtype=np.uint8) for t in range(6)])
    write_video(tmp_path / "still.mp4", still, fps=8, crf=0)
    write_video(tmp_path / "moving.mp4", moving, fps=8, crf=0)
    rows = [
        {"prompt_id": "p0", "prompt": "x", "index": 0, "seed": 0, "path": str(tmp_path / "still.mp4")},
        {"prompt_id": "p0", "prompt": "x", "index": 1, "seed": 1, "path": str(tmp_path / "moving.mp4")},
    ]
    idx = _write_index(tmp_path / "i.jsonl", rows)
    out = tmp_path / "m.json"
    assert vbench.main(["demo", "--index", str(idx), "--out", str(out), "--generator", "tiny"]) == 0
    res = json.loads(out.read_text())
    assert res["computed_by"] == "vqinsight (no VBench weights)" and res["n_videos"] == 2
    per = {v["index"]: v["temporal_flickering"] for v in res["per_video"]}
    assert per[0] == pytest.approx(1.0, abs=1e-3)
    assert per[1] == pytest.approx((255 - 40) / 255, abs=0.01)  # near-lossless grey steps of 40
    assert res["dimensions"]["temporal_flickering"] == pytest.approx((per[0] + per[1]) / 2)


def test_run_vbench_without_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import builtins

    real = builtins.__import__

    def no_vbench(name, *a, **k):
        if name == "vbench":
            raise ImportError("No module named 'vbench'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_vbench)
    with pytest.raises(RuntimeError, match="pip install vbench.*downloads its own model weights"):
        vbench.run_vbench(tmp_path, "x", ["dynamic_degree"], tmp_path / "out", "cpu")
