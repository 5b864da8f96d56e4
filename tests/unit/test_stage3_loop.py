"""Stage 3 glue: prompt selection, the generator evaluation file and Table 6."""

from __future__ import annotations

import json

import pytest

from vqinsight.report.tables import build_table6, render_csv, render_markdown
from vqinsight.stage3.evaluate import evaluate
from vqinsight.stage3.prompt_sets import prompt_id, select_prompts


def test_select_prompts_dedupes_skips_empty_and_keeps_sets_disjoint():
    rows = [(f"vidprom/train/{i}", f"a cat number {i % 30}") for i in range(60)] + [("vidprom/train/x", "  ")]
    rows.append(("vidprom/train/dup", "A  CAT number 3"))  # same prompt up to case and spaces
    train, heldout = select_prompts(rows, 20, 8, seed=0)
    assert len(train) == 20 and len(heldout) == 8
    texts = [p["prompt"].lower() for p in train + heldout]
    assert len(set(texts)) == 28, "distinct prompts, disjoint sets"
    assert all(p["prompt"].strip() for p in train + heldout)
    assert select_prompts(rows, 20, 8, seed=0) == (train, heldout), "seeded"
    assert select_prompts(rows, 20, 8, seed=1) != (train, heldout)


def test_select_prompts_needs_enough_distinct_prompts():
    with pytest.raises(ValueError, match="need 5 distinct prompts"):
        select_prompts([("a", "x"), ("b", "X"), ("c", "y")], 3, 2, seed=0)


def test_prompt_id_is_a_safe_directory_name():
    assert prompt_id("vidprom/train/ab c$(rm)") == "vidprom_train_ab_c_rm"


def _records(first_wins: list[bool]) -> list[dict]:
    out = []
    for k, win in enumerate(first_wins):
        sid = f"p{k}|00"
        a, b = (0.9, 0.1) if win else (0.1, 0.9)
        out.append(
            {"key": f"{sid}|AB", "sample_id": sid, "order": "AB", "pred": "A" if win else "B", "p": {"A": a, "B": b}}
        )
        out.append(
            {"key": f"{sid}|BA", "sample_id": sid, "order": "BA", "pred": "B" if win else "A", "p": {"A": b, "B": a}}
        )
    return out


def test_evaluate_combines_vbench_and_win_rate(tmp_path):
    vb = tmp_path / "vb.json"
    vb.write_text(
        json.dumps(
            {
                "computed_by": "x",
                "n_videos": 4,
                "dimensions": {"temporal_flickering": 0.9},
                "final": {"total_score": None},
            }
        )
    )
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in _records([True, True, True, False])))
    out = evaluate(vb, preds, "united_r2")
    assert out["winrate"]["winrate"] == pytest.approx(0.75) and out["winrate"]["n"] == 4
    assert out["vbench"]["dimensions"] == {"temporal_flickering": 0.9} and out["n_videos"] == 4
    assert evaluate(vb, None, "g0")["winrate"] is None
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="bad.json: no 'dimensions'"):
        evaluate(bad, None, "g0")


def test_table6_puts_measured_and_paper_rows_apart(tmp_path):
    paths = []
    for key, tf, wr in (("t2v_turbo", 0.80, None), ("ours", 0.85, 0.7)):
        p = tmp_path / f"{key}.json"
        p.write_text(
            json.dumps(
                {
                    "generator": key,
                    "n_videos": 12,
                    "vbench": {
                        "computed_by": "vqinsight (no VBench weights)",
                        "dimensions": {"temporal_flickering": tf},
                        "final": {"total_score": None},
                    },
                    "winrate": None if wr is None else {"winrate": wr, "ci95": [0.5, 0.9], "n": 12},
                }
            )
        )
        paths.append((key, p))
    reported = {"table6": {"rows": [{"method": "Ours", "values": {"overall_score": 0.8202, "scene": 0.5225}}]}}
    t = build_table6(paths, reported, demo=True)
    assert [r.label for r in t.measured] == ["T2V-Turbo (G0) (demo)", "Ours (demo)"]
    assert t.measured[1].values["winrate_vs_g0"] == 0.7 and t.measured[0].values["winrate_vs_g0"] is None
    keys = [c.key for c in t.columns]
    assert keys == ["overall_score", "scene", "temporal_flickering", "winrate_vs_g0"], "empty columns dropped"
    md = render_markdown(t)
    assert "0.8202" in md and "**0.8500**" in md and "Ours (demo)" in md  # VBench: the paper's four decimals
    csv = render_csv(t)
    assert "table6,measured,ours,Ours (demo),temporal_flickering,0.85" in csv
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json"):
        build_table6([("ours", tmp_path / "broken.json")], {}, demo=True)


def test_vbench_standard_prompts_are_deduplicated_in_file_order(tmp_path):
    from vqinsight.stage3.vbench import standard_prompts

    f = tmp_path / "VBench_full_info.json"
    f.write_text(
        json.dumps(
            [
                {"prompt_en": "a dog", "dimension": ["subject_consistency"]},
                {"prompt_en": "a cat", "dimension": ["scene"]},
                {"prompt_en": "a dog", "dimension": ["dynamic_degree"]},
            ]
        )
    )
    assert standard_prompts(f) == [
        {"prompt_id": "vbench_0000", "prompt": "a dog"},
        {"prompt_id": "vbench_0001", "prompt": "a cat"},
    ]
    f.write_text(json.dumps([{"dimension": []}]))
    with pytest.raises(ValueError, match="entry 0 has no prompt_en"):
        standard_prompts(f)
