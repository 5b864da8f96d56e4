"""Judge inference and benchmark metrics: answer parsing per prompt format, margin extraction, both-order
aggregation (margin and swap flips), and resumable prediction files (torn lines, restarts)."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch

from vqinsight import records
from vqinsight.answer_format import answer_prefix
from vqinsight.evaluate import comparison_pairs, compute
from vqinsight.evaluate import main as evaluate_main
from vqinsight.judge import __main__ as judge_cli
from vqinsight.judge import engine as judge_engine
from vqinsight.judge import formats


# ----------------------------------------------------------------------------------------------- pure pieces
@pytest.mark.parametrize(
    ("completion", "prefix"),
    [
        ("<think>x</think><answer>Video A</answer>", "<think>x</think><answer>"),
        ("<think>x</think> <answer> B", "<think>x</think> <answer>"),
        ("<think>never answers</think>", "<think>never answers</think><answer>"),
        ("<think>t</think>Video A</answer>", "<think>t</think>Video A<answer>"),
        ("", "<answer>"),
    ],
)
def test_answer_prefix(completion: str, prefix: str) -> None:
    assert answer_prefix(completion) == prefix


def test_expand_judges_comparisons_in_both_orders() -> None:
    rows = [
        {"sample_id": "p1", "task": "comparison", "media": ["a.mp4", "b.mp4"], "gt_choice": "A"},
        {"sample_id": "p2", "task": "comparison", "media": ["c.mp4", "d.mp4"], "gt_choice": "tie"},
        {"sample_id": "s1", "task": "video_score", "media": ["e.mp4"], "gt_score": 3.0},
    ]
    items = records.expand(rows)
    assert [it.key for it in items] == ["p1|AB", "p1|BA", "p2|AB", "p2|BA", "s1"]
    ba = items[1].row
    assert ba["media"] == ["b.mp4", "a.mp4"] and ba["gt_choice"] == "B"
    assert items[3].row["gt_choice"] == "tie"
    assert rows[0]["media"] == ["a.mp4", "b.mp4"], "swapping must not modify the manifest row"


@pytest.mark.parametrize(
    ("task", "completion", "fmt", "expected"),
    [
        ("video_score", "<think>a</think><answer>3.25</answer>", "vqinsight", 3.25),
        ("video_score", "<think>a</think><answer>75</answer>", "release", 4.0),  # 0-100 -> 1-5
        ("image_score", '<think>a</think><answer>{"rating": 2.5}</answer>', "q_insight", 2.5),
        ("video_score", "<think>a</think><answer>good</answer>", "vqinsight", None),
        ("comparison", "<think>a</think><answer>Video B</answer>", "vqinsight", "B"),
        ("comparison", "<think>a</think><answer>B</answer>", "release", "B"),
        ("comparison", "<think>a</think><answer>yes</answer>", "vqinsight", None),
        ("vqa", "<think>a</think><answer>no</answer>", "vqinsight", "no"),
        ("comparison", "<think>a</think><answer>Video 2 is better</answer>", "unifiedreward_think", "B"),
        ("comparison", "<think>a</think><answer>video 1 is better.</answer>", "unifiedreward_think", "A"),
        # a score off the scale the prompt asked for is unparsed (never a point that dominates PLCC)
        ("video_score", "<think>a</think><answer>3333333</answer>", "vqinsight", None),
        ("video_score", "<think>a</think><answer>6.0</answer>", "vqinsight", None),
        ("video_score", "<think>a</think><answer>5</answer>", "vqinsight", 5.0),
        ("video_score", "<think>a</think><answer>100</answer>", "release", 5.0),  # on the release's 0-100
        ("video_score", "<think>a</think><answer>101</answer>", "release", None),
        ("image_score", '<think>a</think><answer>{"rating": 7}</answer>', "q_insight", None),
        ("multidim_score", '<answer>{"spatial": 3, "temporal": 4, "alignment": 9}</answer>', "vqinsight", None),
    ],
)
def test_parse_prediction(task: str, completion: str, fmt: str, expected) -> None:
    assert formats.parse_prediction(task, completion, fmt, (1.0, 5.0))[1] == expected


def test_parse_prediction_multidim_release_scale() -> None:
    comp = '<answer>{"spatial": 50, "temporal": 100, "consistency": 0}</answer>'
    assert formats.parse_prediction("multidim_score", comp, "release", (1.0, 5.0))[1] == {
        "spatial": 3.0,
        "temporal": 5.0,
        "alignment": 1.0,
    }


def _rec(sid: str, order: str, gt: str, p_a: float, pred: str | None) -> dict:
    """A comparison record as the judge writes it, in the given order's frame (gt already swapped for BA)."""
    if order == "BA":
        gt = {"A": "B", "B": "A"}.get(gt, gt)
    return {"key": f"{sid}|{order}", "sample_id": sid, "task": "comparison", "order": order, "completion": "",
            "pred": pred, "gt": gt, "p": {"A": p_a, "B": 1 - p_a}}  # fmt: skip


def test_margin_averages_both_orders_in_the_original_frame() -> None:
    # Pair 1: the judge prefers the ORIGINAL first video in both orders (0.8, then 0.3 for "A" = original second).
    # Pair 2: pure position bias (always "A" with 0.9): the two orders cancel, margin 0, and the verdict flips.
    recs = [
        _rec("p1", "AB", "A", 0.8, "A"),
        _rec("p1", "BA", "A", 0.3, "B"),
        _rec("p2", "AB", "B", 0.9, "A"),
        _rec("p2", "BA", "B", 0.9, "A"),
    ]
    pairs = {p["sample_id"]: p for p in comparison_pairs(recs)}
    assert pairs["p1"]["human"] == 1 and pairs["p2"]["human"] == -1
    assert pairs["p1"]["margin"] == pytest.approx(((2 * 0.8 - 1) + (2 * 0.7 - 1)) / 2)
    assert pairs["p2"]["margin"] == pytest.approx(0.0)
    assert pairs["p1"]["flip"] is False and pairs["p2"]["flip"] is True


def test_margin_sources_votes_baseline_and_verdict_fallback() -> None:
    a = _rec("p", "AB", "A", 0.5, "A") | {"votes": {"k": 4, "first": 3, "valid": 4}}
    b = _rec("p", "BA", "A", 0.5, "B") | {"votes": {"k": 4, "first": 1, "valid": 3}}  # 2 of 4 for the original A
    (pair,) = comparison_pairs([a, b], margin="votes")
    assert pair["margin"] == pytest.approx(((2 * 0.75 - 1) + (2 * 0.5 - 1)) / 2)
    clip = {"sample_id": "q", "task": "comparison", "order": "AB", "gt": "B", "pred": None, "margin": -0.2}
    assert comparison_pairs([clip])[0]["margin"] == pytest.approx(-0.2)
    no_p = [{"sample_id": "r", "order": "AB", "gt": "A", "pred": "A"}, {"sample_id": "r", "order": "BA", "gt": "B"}]
    assert comparison_pairs(no_p)[0]["margin"] == pytest.approx(0.5)  # one verdict for A, one unparsed
    with pytest.raises(ValueError, match="human label"):
        comparison_pairs([{"sample_id": "s", "order": "AB", "gt": "maybe", "pred": None}])


def test_comparison_metrics_tau_diff_and_swap_flip() -> None:
    # 4 pairs: two confident correct, one human tie with a tiny margin, one wrong; the tie is recovered by epsilon.
    recs = []
    cases = (("a", "A", 0.9, 0.1), ("b", "B", 0.2, 0.8), ("c", "tie", 0.52, 0.51), ("d", "A", 0.3, 0.6))
    for sid, gt, p_ab, p_ba in cases:
        recs.append(_rec(sid, "AB", gt, p_ab, "A" if p_ab > 0.5 else "B"))
        recs.append(_rec(sid, "BA", gt, p_ba, "A" if p_ba > 0.5 else "B"))
    res, points, counts = compute(recs, "comparison", (1, 5))
    assert counts["n"] == 4 and res["n_human_ties"] == 1
    assert res["diff"] == pytest.approx(2 / 3)
    assert res["tau"] == pytest.approx(3 / 4) and res["tau_epsilon"] == pytest.approx(0.01)
    assert res["swap_flip_rate"] == pytest.approx(1 / 4)  # only pair c flips: "A" in both orders
    curve = res["eps_curve"]
    assert curve["epsilon"][0] == 0.0 and max(curve["accuracy"]) == pytest.approx(res["tau"])
    assert {p["sample_id"] for p in points} == {"a", "b", "c", "d"}


def test_score_metrics_count_unparsed_as_midpoint() -> None:
    gt = [1.0, 2.0, 3.0, 4.0, 5.0]
    recs = [{"sample_id": str(i), "pred": g + 0.1, "gt": g, "completion": "<think>x</think><answer>1</answer>"}
            for i, g in enumerate(gt)]  # fmt: skip
    recs[4]["pred"] = None
    res, points, counts = compute(recs, "video_score", (1, 5))
    assert counts["unparsed"] == 1 and counts["format_rate"] == 1.0
    assert points[4]["pred"] == 3.0
    assert res["srcc"] == pytest.approx(0.7)  # the midpoint ties the third item
    assert set(res) == {"srcc", "krcc", "plcc", "plcc_logistic"}
    const = [{"sample_id": str(i), "pred": 3.0, "gt": g, "completion": None} for i, g in enumerate(gt)]
    res, _, counts = compute(const, "video_score", (1, 5))
    assert res["srcc"] is None and counts["format_rate"] is None


def test_score_metrics_count_off_scale_as_unparsed() -> None:
    # a prediction file written before the judge checked the scale (or by hand): 3333333 on a 1-5 scale would carry
    # PLCC alone; it is counted as unparsed and takes the midpoint, as an unparsable answer does
    gt = [1.0, 2.0, 3.0, 4.0, 5.0, 2.5]
    preds = [1.2, 2.1, 2.9, 4.2, 4.8, 3333333.0]
    recs = [{"sample_id": str(i), "pred": p, "gt": g} for i, (p, g) in enumerate(zip(preds, gt, strict=True))]
    res, points, counts = compute(recs, "video_score", (1, 5))
    assert counts["unparsed"] == 1 and points[5]["pred"] == 3.0
    assert res["plcc"] == pytest.approx(float(np.corrcoef(preds[:5] + [3.0], gt)[0, 1]))
    raw, _, raw_counts = compute(recs, "video_score", (1, 5), pred_scale="raw")  # a metric's own scale: kept
    assert raw_counts["unparsed"] == 0 and raw["srcc"] == pytest.approx(1.0 - 6 * 12 / (6 * 35))  # ranks kept
    dims = [{"spatial": 3.0, "temporal": 4.0, "alignment": a} for a in (1.0, 2.0, 6.0, 4.0)]
    recs = [{"sample_id": str(i), "pred": d, "gt": d} for i, d in enumerate(dims)]
    _, points, counts = compute(recs, "multidim_score", (1, 5))
    assert counts["unparsed"] == 1 and {p["pred"] for p in points if p["sample_id"] == "2"} == {3.0}


def test_multidim_and_vqa_metrics() -> None:
    gts = [{"spatial": s, "temporal": 6 - s, "alignment": 3.0 + (s % 2)} for s in (1.0, 2.0, 3.0, 4.0, 5.0)]
    recs = [{"sample_id": str(i), "pred": dict(g), "gt": g, "completion": None} for i, g in enumerate(gts)]
    res, points, _ = compute(recs, "multidim_score", (1, 5))
    assert res["spatial"]["srcc"] == pytest.approx(1.0) and res["temporal"]["srcc"] == pytest.approx(1.0)
    assert len(points) == 15
    only_spatial = [{"sample_id": str(i), "pred": {"spatial": g["spatial"]}, "gt": g} for i, g in enumerate(gts)]
    res, _, _ = compute(only_spatial, "multidim_score", (1, 5))
    assert set(res) == {"spatial"}  # a one-dimension baseline (CLIP-IQA) fills only its column
    vqa = [{"sample_id": "1", "pred": "yes", "gt": "yes"}, {"sample_id": "2", "pred": None, "gt": "no"}]
    assert compute(vqa, "vqa", (1, 5))[0]["accuracy"] == 0.5


# ----------------------------------------------------------------------------------------------- resumable files
def test_read_done_drops_a_torn_last_line(tmp_path: Path) -> None:
    part = tmp_path / "p.jsonl.partial"
    records.append_records(part, [{"key": "a", "x": 1}, {"key": "b", "x": 2}])
    with open(part, "a") as f:
        f.write('{"key": "c", "x"')  # killed mid-write
    assert records.read_done(part) == {"a", "b"}
    assert part.read_text().endswith('"x": 2}\n'), "the torn line is cut off so appends start on a clean line"
    records.append_records(part, [{"key": "c", "x": 3}])
    assert [r["key"] for r in records.load_predictions(part)] == ["a", "b", "c"]


def test_read_done_refuses_a_corrupt_middle_line(tmp_path: Path) -> None:
    part = tmp_path / "p.jsonl.partial"
    part.write_text('{"key": "a"}\ngarbage\n{"key": "b"}\n')
    with pytest.raises(ValueError, match="line 2"):
        records.read_done(part)


def test_load_predictions_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    p.write_text('{"key": "a"}\n{oops\n')
    with pytest.raises(ValueError, match=r"x\.jsonl: line 2"):
        records.load_predictions(p)


# ----------------------------------------------------------------------------------------------- with a model
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """Tiny model, 3 videos, a comparison manifest (2 pairs) and a score manifest (3 videos)."""
    from vqinsight.data.manifest import SCHEMA
    from vqinsight.models.tiny import build_tiny
    from vqinsight.video import write_video

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("judge")
    model = build_tiny(root / "tiny", seed=0, video_pixels=(784, 4704), image_pixels=(784, 4704))
    vids = []
    for i in range(3):
        frames = np.full((4, 56, 84, 3), 40 + 80 * i, np.uint8)
        write_video(root / f"v{i}.mp4", frames, fps=4)
        vids.append(str(root / f"v{i}.mp4"))

    def manifest(name: str, rows: list[dict]) -> Path:
        full = [{c: r.get(c) for c in SCHEMA} for r in rows]
        path = root / f"{name}.parquet"
        pl.DataFrame(full, schema=SCHEMA).write_parquet(path)
        return path

    base = {"dataset": "x", "split": "test", "media_type": "video", "source_file": "f", "source_row": 0}
    pair = base | {"task": "comparison"}
    comp = manifest(
        "comp",
        [
            pair | {"sample_id": "x/test/p0", "media": vids[:2], "gt_choice": "B", "preference": -1},
            pair | {"sample_id": "x/test/p1", "media": vids[1:], "gt_choice": "tie", "preference": 0},
        ],
    )
    one = base | {"task": "video_score"}
    score = manifest(
        "score", [one | {"sample_id": f"x/test/s{i}", "media": [v], "gt_score": 1.0 + i} for i, v in enumerate(vids)]
    )
    return {"root": root, "model": model, "comp": comp, "score": score}


def _media(root: Path) -> list[str]:
    return ["--cache-dir", str(root / "cache"), "--nframes", "4", "--max-pixels", "4704", "--min-pixels", "784",
            "--image-max-pixels", "4704", "--scale", "1", "5"]  # fmt: skip


def _judge(world, manifest: str, task: str, out: Path, *extra: str) -> int:
    return judge_cli.main(["--model", str(world["model"]), "--manifest", str(world[manifest]), "--task", task,
                   "--out", str(out), "--style", "short", "--batch-size", "2", "--max-new-tokens", "6",
                   "--threads", "1", *extra, *_media(world["root"])])  # fmt: skip


def test_candidate_probs_match_a_direct_forward(world) -> None:
    from vqinsight.media import MediaLoader, MediaSpec
    from vqinsight.models.load import load_model_and_processor
    from vqinsight.records import select_rows, to_records

    model, proc = load_model_and_processor(str(world["model"]), video_pixels=(784, 4704), image_pixels=(784, 4704))
    loader = MediaLoader(MediaSpec(str(world["root"] / "cache"), 4, 4704, 784))
    rows = to_records(select_rows([world["comp"]], ["comparison"], "test", drop_ties=False))
    judge = judge_engine.Judge(model, proc, loader, style="short", max_new_tokens=6)
    prefix = "<think>ok</think><answer>"
    probs = judge.candidate_probs(rows, [prefix] * len(rows), formats.CANDIDATES["comparison"])
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1.0)
    # Direct: log-likelihood of each answer string by one forward per string, masses summed per verdict.
    mass = []
    for s in ("Video A", "A", "Video B", "B"):
        enc, texts = judge._encode(rows[:1], [prefix + s])
        n = len(proc.tokenizer(s, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            lp = torch.log_softmax(model(**enc).logits[0, -n - 1 : -1].float(), -1)
        ids = enc["input_ids"][0, -n:]
        mass.append(math.exp(float(lp.gather(-1, ids[:, None]).sum())))
    p_a = (mass[0] + mass[1]) / sum(mass)
    assert probs[0, 0] == pytest.approx(p_a, rel=1e-4)


def test_release_records_keep_the_released_scale(world, monkeypatch) -> None:
    """The official checkpoints answer on 0-100 (keys spatial / temporal / consistency): a record keeps that answer
    and the linear map onto the run's scale that gave `pred`."""
    from vqinsight.media import MediaLoader, MediaSpec
    from vqinsight.models.load import load_model_and_processor
    from vqinsight.records import select_rows, to_records

    model, proc = load_model_and_processor(str(world["model"]), video_pixels=(784, 4704), image_pixels=(784, 4704))
    loader = MediaLoader(MediaSpec(str(world["root"] / "cache"), 4, 4704, 784))
    rows = to_records(select_rows([world["score"]], ["video_score"], "test"))[:2]
    judge = judge_engine.Judge(model, proc, loader, fmt="release", scale=(1.0, 5.0), max_new_tokens=4)
    monkeypatch.setattr(judge, "generate", lambda rows, **kw: ["<answer>75</answer>", "<answer>250</answer>"])
    recs = judge.judge([records.Item(r["sample_id"], r, None) for r in rows])
    assert [(r["pred_released"], r["pred"]) for r in recs] == [(75.0, 4.0), (None, None)]  # 250: off 0-100
    assert recs[0]["scale_map"] == {"from": [0.0, 100.0], "to": [1.0, 5.0]}
    comp = '<answer>{"spatial": 50, "temporal": 100, "consistency": 0}</answer>'
    want = {"spatial": 50.0, "temporal": 100.0, "consistency": 0.0}
    assert formats.released_prediction("multidim_score", comp) == want


def test_judge_cli_writes_both_orders_and_resumes(world, tmp_path: Path) -> None:
    out = tmp_path / "pred" / "comp.jsonl"
    assert _judge(world, "comp", "comparison", out) == 0
    recs = records.load_predictions(out)
    assert [r["key"] for r in recs] == ["x/test/p0|AB", "x/test/p0|BA", "x/test/p1|AB", "x/test/p1|BA"]
    for r in recs:
        assert set(r["p"]) == {"A", "B"} and r["p"]["A"] + r["p"]["B"] == pytest.approx(1.0)
        assert isinstance(r["completion"], str), "the reasoning text is kept"
    assert recs[1]["gt"] == "A", "gt in the BA order is the swapped human label"
    assert (out.parent / "comp.jsonl.meta.json").exists() and not (out.parent / "comp.jsonl.partial").exists()

    # Restart after a kill: a partial file with the first record and a torn second line.
    out2 = tmp_path / "pred" / "comp2.jsonl"
    partial = out2.with_name("comp2.jsonl.partial")
    sentinel = dict(recs[0], completion="FROM BEFORE THE KILL")
    partial.write_text(json.dumps(sentinel) + "\n" + '{"key": "x/test/p0|BA", "sam')
    assert _judge(world, "comp", "comparison", out2) == 0
    again = records.load_predictions(out2)
    assert [r["key"] for r in again] == [r["key"] for r in recs]
    assert again[0]["completion"] == "FROM BEFORE THE KILL", "finished rows are skipped, not recomputed"
    for a, b in zip(again[1:], recs[1:], strict=True):
        assert a["p"]["A"] == pytest.approx(b["p"]["A"], abs=1e-5), "greedy judging is deterministic"
    meta = json.loads((out2.parent / "comp2.jsonl.meta.json").read_text())
    assert meta["resumed_with"] == 1


def test_evaluate_cli_on_judge_output(world, tmp_path: Path) -> None:
    pred = tmp_path / "score.jsonl"
    assert _judge(world, "score", "video_score", pred) == 0
    assert len(records.load_predictions(pred)) == 3
    out = tmp_path / "m" / "score.json"
    args = [
        "--predictions",
        str(pred),
        "--benchmark",
        "b",
        "--task",
        "video_score",
        "--system",
        "s",
        "--out",
        str(out),
    ]
    assert evaluate_main([*args, "--demo", "--label", "S (demo)"]) == 0
    m = json.loads(out.read_text())
    assert m["n"] == 3 and m["demo"] is True and m["label"] == "S (demo)" and m["kind"] == "ours"
    assert set(m["metrics"]) == {"srcc", "krcc", "plcc", "plcc_logistic"}
    assert out.with_suffix(".points.csv").read_text().startswith("sample_id,pred,gt\n")
    assert evaluate_main([*args[:1], str(tmp_path / "missing.jsonl"), *args[2:]]) == 2


def test_judge_cli_errors_name_the_missing_path(world, tmp_path: Path, caplog) -> None:
    assert judge_cli.main(["--model", str(world["model"]), "--manifest", str(tmp_path / "nope.parquet"), "--task",
                   "video_score", "--out", str(tmp_path / "o.jsonl"), *_media(world["root"])]) == 2  # fmt: skip
    assert "nope.parquet" in caplog.text
    assert _judge({**world, "model": tmp_path / "no_model"}, "score", "video_score", tmp_path / "o.jsonl") == 2
    assert "no_model" in caplog.text


@pytest.mark.parametrize(
    ("fmt", "task", "n_video_parts", "needle"),
    [
        ("vqinsight", "comparison", 2, "Which video is better?"),
        ("release", "comparison", 2, "Video A and Video B are results from two AIGC-generated methods"),
        ("release", "video_score", 1, "between 0 and 100"),
        ("q_insight", "video_score", 1, '"rating"'),
        ("unifiedreward_think", "comparison", 2, "'Video 1 is better'"),
    ],
)
def test_prompt_formats(fmt: str, task: str, n_video_parts: int, needle: str) -> None:
    row = {"task": task, "media_type": "video", "prompt_text": "a cat", "question": None}
    msgs = formats.messages(row, ["v1", "v2"][:n_video_parts], fmt, "full", (1.0, 5.0))
    parts = msgs[-1]["content"]
    assert sum(p["type"] == "video" for p in parts) == n_video_parts
    assert needle in " ".join(p.get("text", "") for p in parts)
    with pytest.raises(ValueError, match="no vqa prompt"):
        formats.messages({**row, "task": "vqa"}, ["v1"], fmt if fmt != "vqinsight" else "release", "full", (1.0, 5.0))


def test_static_engine_reuses_vision_features_and_equals_the_hf_engine(world) -> None:
    """Engine "static" (VisionCache + StaticDecoder): same model inputs, completions and margins as the per-pair
    transformers path, with each video processed and encoded once across pairs and both orders."""
    from vqinsight.media import MediaLoader, MediaSpec
    from vqinsight.models.load import load_model_and_processor
    from vqinsight.records import select_rows, to_records

    model, proc = load_model_and_processor(str(world["model"]), video_pixels=(784, 4704), image_pixels=(784, 4704))
    loader = MediaLoader(MediaSpec(str(world["root"] / "cache"), 4, 4704, 784))
    rows = to_records(select_rows([world["comp"]], ["comparison"], "test", drop_ties=False))
    items = records.expand(sorted(rows, key=lambda r: r["sample_id"]))  # 2 pairs x 2 orders over 3 videos
    hf = judge_engine.Judge(model, proc, loader, style="short", max_new_tokens=12)
    fast = judge_engine.Judge(model, proc, loader, style="short", max_new_tokens=12, engine="static", cache_items=8)
    batch = [it.row for it in items]
    ref, _ = hf._encode(batch)
    got, _ = fast._encode(batch)
    assert torch.equal(got["input_ids"], ref["input_ids"])
    assert torch.equal(got["attention_mask"], ref["attention_mask"])
    assert torch.equal(got["mm_token_type_ids"].long(), ref["mm_token_type_ids"].long())
    assert torch.equal(got["video_grid_thw"], ref["video_grid_thw"])
    assert torch.allclose(got["second_per_grid_ts"].float(), torch.as_tensor(ref["second_per_grid_ts"]).float())
    assert "pixel_values_videos" not in got and "mm_encoder_outputs" in got
    assert (fast.vision.misses, fast.vision.hits) == (3, 5)  # 8 video slots, 3 distinct videos
    with torch.no_grad():
        a = model(**ref).logits
        b = model(**got).logits
    assert torch.allclose(a, b, atol=1e-5)
    want = hf.judge(items)
    have = fast.judge(items)
    assert [r["completion"] for r in have] == [r["completion"] for r in want]
    for r, w in zip(have, want, strict=True):
        assert r["p"] == pytest.approx(w["p"], abs=1e-5)
    assert fast.vision.misses == 3  # nothing was encoded twice
    assert not fast.decoder.compiled, "the decode step is compiled on CUDA only by default"
    # --compile (compiles lazily, on first use)
    forced = judge_engine.Judge(model, proc, loader, engine="static", compile=True)
    assert forced.decoder.compiled
    with pytest.raises(ValueError, match="unknown engine"):
        judge_engine.Judge(model, proc, loader, engine="sglang")
    with pytest.raises(ValueError, match="vllm"):
        judge_engine.Judge(model, proc, loader, engine="vllm")  # no engine object


# ---------------------------------------------------------------------------------------------------------------
# engine "vllm" against a stand-in vllm module (vLLM itself cannot be installed here): the project's side of the
# contract - prompts, media, sampling settings, reading completions and prompt logprobs - on the tiny model


class _FakeSamplingParams:
    def __init__(self, **kw: Any) -> None:
        self.kw = kw
        self.__dict__.update(kw)


class _FakeLLM:
    """Executes vLLM-style requests with transformers: the HF processor over the prompt and its media (what vLLM
    runs inside), then generate() or a teacher-forced forward for ``prompt_logprobs``."""

    made: list[_FakeLLM] = []

    def __init__(self, model: str, **kw: Any) -> None:
        from vqinsight.models.load import load_model_and_processor

        mm = kw["mm_processor_kwargs"]
        pixels = (mm["min_pixels"], mm["max_pixels"])
        self.model, self.proc = load_model_and_processor(model, video_pixels=pixels, image_pixels=pixels)
        self.kw, self.requests = kw, []
        _FakeLLM.made.append(self)

    def generate(self, requests: list[dict], params: _FakeSamplingParams, use_tqdm: bool = True) -> list:
        from types import SimpleNamespace as NS

        outs = []
        for req in requests:
            self.requests.append(req)
            mm = req.get("multi_modal_data", {})
            enc = self.proc(text=[req["prompt"]], videos=mm.get("video"), images=mm.get("image"), return_tensors="pt")
            if getattr(params, "prompt_logprobs", None) is not None:
                with torch.no_grad():
                    lp = torch.log_softmax(self.model(**enc).logits[0].float(), -1)
                ids = enc["input_ids"][0].tolist()
                plp = [None] + [{ids[t]: NS(logprob=float(lp[t - 1, ids[t]]))} for t in range(1, len(ids))]
                outs.append(NS(prompt_token_ids=ids, prompt_logprobs=plp, outputs=[NS(text="")]))
                continue
            suppress = [t for t, b in (params.logit_bias or {}).items() if b <= -100]
            kw: dict[str, Any] = {"max_new_tokens": params.max_tokens, "suppress_tokens": suppress}
            if params.temperature == 0:
                kw["do_sample"] = False
            else:
                kw.update(do_sample=True, temperature=params.temperature, num_return_sequences=params.n, top_k=0)
            with torch.no_grad():
                seq = self.model.generate(**enc, **kw)
            texts = self.proc.batch_decode(seq[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            outs.append(NS(outputs=[NS(text=t) for t in texts]))
        return outs


@pytest.fixture
def fake_vllm(monkeypatch):
    from types import SimpleNamespace

    _FakeLLM.made.clear()
    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=_FakeLLM, SamplingParams=_FakeSamplingParams))
    return _FakeLLM


def test_vllm_engine_requests_and_records_equal_the_hf_engine(world, fake_vllm) -> None:
    from vqinsight.media import MediaLoader, MediaSpec
    from vqinsight.models.load import load_model_and_processor, vision_token_ids
    from vqinsight.records import select_rows, to_records
    from vqinsight.vllm_engine import VLLMJudgeEngine

    model, proc = load_model_and_processor(str(world["model"]), video_pixels=(784, 4704), image_pixels=(784, 4704))
    loader = MediaLoader(MediaSpec(str(world["root"] / "cache"), 4, 4704, 784))
    rows = to_records(select_rows([world["comp"]], ["comparison"], "test", drop_ties=False))
    items = records.expand(sorted(rows, key=lambda r: r["sample_id"]))
    engine = VLLMJudgeEngine(world["model"], max_new_tokens=12, suppress_token_ids=vision_token_ids(model),
                             seed=3, mm_processor_kwargs={"min_pixels": 784, "max_pixels": 4704},
                             llm_kwargs={"tensor_parallel_size": 1})  # fmt: skip
    (llm,) = fake_vllm.made
    assert llm.kw["limit_mm_per_prompt"] == {"image": 2, "video": 2} and llm.kw["seed"] == 3
    assert llm.kw["tensor_parallel_size"] == 1 and llm.kw["enable_prefix_caching"] is True
    fast = judge_engine.Judge(None, proc, loader, style="short", max_new_tokens=12, engine="vllm", vllm=engine)
    assert fast.suppress == vision_token_ids(model)
    hf = judge_engine.Judge(model, proc, loader, style="short", max_new_tokens=12)
    want, have = hf.judge(items), fast.judge(items)
    assert [r["completion"] for r in have] == [r["completion"] for r in want]
    for r, w in zip(have, want, strict=True):
        assert r["p"] == pytest.approx(w["p"], abs=1e-4)
    # one generation request per judgment, then one per (judgment, answer string): "Video A", "A", "Video B", "B"
    assert len(llm.requests) == len(items) * 5
    first = llm.requests[0]
    assert first["prompt"].count("<|video_pad|>") == 2 and len(first["multi_modal_data"]["video"]) == 2
    texts, _, videos = hf._prompts([items[0].row])
    assert first["prompt"] == texts[0]
    assert all(np.array_equal(a, b) for a, b in zip(first["multi_modal_data"]["video"], videos[0], strict=True))
    # sampled votes: k completions per request
    sampled = fast.generate([it.row for it in items[:2]], sample=True, k=3, temperature=1.0)
    assert [len(s) for s in sampled] == [3, 3]


def test_judge_cli_engine_vllm(world, fake_vllm, tmp_path: Path) -> None:
    out = tmp_path / "v.jsonl"
    assert (
        _judge(world, "comp", "comparison", out, "--engine", "vllm", "--vllm-args", '{"gpu_memory_utilization": 0.5}')
        == 0
    )
    recs = records.load_predictions(out)
    assert len(recs) == 4 and all("p" in r for r in recs)
    (llm,) = fake_vllm.made
    assert llm.kw["gpu_memory_utilization"] == 0.5
    assert _judge(world, "comp", "comparison", tmp_path / "w.jsonl", "--engine", "vllm", "--vllm-args", "[1]") == 2


def test_judge_cli_engine_vllm_without_vllm_names_the_package(world, monkeypatch, tmp_path: Path, caplog) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with caplog.at_level(logging.ERROR):
        assert _judge(world, "comp", "comparison", tmp_path / "x.jsonl", "--engine", "vllm") == 2
    assert "needs the vllm package" in caplog.text


def test_margins_scored_from_the_generation_cache_equal_the_prefilled_ones(world) -> None:
    """--margin-from-cache (the CUDA default): the answer strings are teacher-forced after the greedy generation's
    own cache instead of a second prefill of prompt + completion; same margins as the per-pair transformers path."""
    from vqinsight.media import MediaLoader, MediaSpec
    from vqinsight.models.load import load_model_and_processor
    from vqinsight.records import select_rows, to_records

    model, proc = load_model_and_processor(str(world["model"]), video_pixels=(784, 4704), image_pixels=(784, 4704))
    loader = MediaLoader(MediaSpec(str(world["root"] / "cache"), 4, 4704, 784))
    rows = to_records(select_rows([world["comp"]], ["comparison"], "test", drop_ties=False))
    items = records.expand(sorted(rows, key=lambda r: r["sample_id"]))
    kw = {"style": "short", "max_new_tokens": 12}
    hf = judge_engine.Judge(model, proc, loader, **kw)
    fast = judge_engine.Judge(model, proc, loader, engine="static", cache_items=8, margin_from_cache=True, **kw)
    assert not judge_engine.Judge(model, proc, loader, engine="static", **kw).margin_from_cache, "CUDA only by default"
    want = hf.judge(items)
    have = fast.judge(items)
    assert fast.margin_stats["from_cache"] > 0, fast.margin_stats
    assert fast.margin_stats["from_cache"] + fast.margin_stats["prefilled"] == len(items)
    assert [r["completion"] for r in have] == [r["completion"] for r in want]
    for r, w in zip(have, want, strict=True):
        assert r["p"] == pytest.approx(w["p"], abs=1e-5)
    # rows the cache cannot serve (completions re-tokenised too differently) are prefilled again, same numbers
    fast.max_refeed = -100
    again = fast.judge(items)
    assert fast.margin_stats["prefilled"] >= len(items)
    for r, w in zip(again, want, strict=True):
        assert r["p"] == pytest.approx(w["p"], abs=1e-5)
    with pytest.raises(ValueError, match="margin_from_cache needs engine 'static'"):
        judge_engine.Judge(model, proc, loader, margin_from_cache=True)


def test_held_out_evaluation_with_the_static_decoder_gives_generates_texts(world):
    """The held-out evaluation before and after training decodes with the static decoder on a GPU (generate() took
    ~0.1 s a token there); on the tiny model both engines give the same greedy texts, eos handling included."""
    from vqinsight.grpo.heldout import generate
    from vqinsight.media import MediaLoader, MediaSpec
    from vqinsight.models.load import load_model_and_processor
    from vqinsight.records import select_rows, to_records

    model, processor = load_model_and_processor(str(world["root"] / "tiny"), dtype="float32")
    rows = to_records(select_rows([world["score"], world["comp"]], ["video_score", "comparison"], "test"))
    loader = MediaLoader(MediaSpec(str(world["root"] / "cache"), 4, 4704, 784))
    kw = {"batch_size": 2, "max_new_tokens": 24}
    ref = generate(model, processor, rows, loader, "full", (1.0, 5.0), engine="generate", **kw)
    got = generate(model, processor, rows, loader, "full", (1.0, 5.0), engine="static", **kw)
    assert got == ref and len(ref) == len(rows)
    with pytest.raises(ValueError, match="engine"):
        generate(model, processor, rows, loader, "full", (1.0, 5.0), engine="vllm", **kw)
