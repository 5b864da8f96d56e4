"""Conformance: every parser on the real published annotation files in ../shared/realdata/ (never copied here).

Each test lays the real files out under a temporary raw directory (symbolic links, under the names the releases
use) and checks row counts against the row sets the field evaluates on, the label mapping, the scales and the media
paths. Datasets without public rows (MonetBench, VisionReward) are checked on tables built in the layout the public
loaders read, with the real question files.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from vqinsight.data.download import hub_file_url
from vqinsight.data.parsers import options_of, parse
from vqinsight.data.preflight import check_native
from vqinsight.data.rows import ParseError

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "realdata"
pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"{REAL} not present")
SCALE = (1.0, 5.0)


def lay_out(raw: Path, files: dict[str, str]) -> Path:
    """raw/<name> -> ../shared/realdata/<source> for each entry."""
    for name, src in files.items():
        dst = raw / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(REAL / src)
    return raw


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0")
    return path


def by_split(parsed) -> dict[str, int]:
    return dict(Counter(r["split"] for r in parsed.rows))


def mos_of(parsed) -> dict[str, float]:
    """native id -> MOS (ids are unique across the splits of one file set)"""
    return {r["sample_id"].split("/", 2)[2]: r["raw_score"] for r in parsed.rows}


# ------------------------------------------------------------------------------------------------------------ LGVQ
@pytest.mark.parametrize("copy", ["LGVQ.csv", "LGVQ.v1_68e57df.csv"])
def test_lgvq_both_third_party_copies(tmp_path, copy):
    raw = lay_out(tmp_path / "lgvq", {"LGVQ.csv": f"lgvq/{copy}"})
    out = parse("lgvq", raw, SCALE)
    assert not out.bad and len(out.rows) == 2808 and out.sources == ["LGVQ.csv"]
    raws = {d: [r["raw_scores"][d] for r in out.rows] for d in ("spatial", "temporal", "alignment")}
    assert (min(raws["spatial"]), max(raws["spatial"])) == (17.68, 77.02)
    assert (min(raws["alignment"]), max(raws["alignment"])) == (16.67, 83.33)
    row = next(r for r in out.rows if r["prompt"] == "A baseball player sprinted towards home base")
    assert all(1 <= v <= 5 for v in row["gt_scores"].values())
    assert row["gt_scores"]["spatial"] == pytest.approx(1 + 4 * row["raw_scores"]["spatial"] / 100)
    # the authors' layout <model>/<prompt>.mp4 is the path reported while no video is there
    gen2 = next(r for r in out.rows if r["prompt"] == row["prompt"] and "/Gen-2/" in r["media"][0])
    assert gen2["media"] == [str(raw / "videos" / "Gen-2" / f"{row['prompt']}.mp4")]
    assert Counter(Path(r["media"][0]).parent.name for r in out.rows) == {
        m: 468 for m in ("Gen-2", "Hotshot-XL", "Text2Video-Zero", "Tune-A-Video", "video_fusion", "VideoCrafter")
    }
    split_of_prompt = pl.DataFrame({"p": [r["prompt"] for r in out.rows], "s": [r["split"] for r in out.rows]})
    assert split_of_prompt.group_by("p").agg(pl.col("s").n_unique())["s"].max() == 1
    assert 0.1 < by_split(out)["test"] / 2808 < 0.3


def test_lgvq_copies_agree_and_renumbered_videos_are_found(tmp_path):
    new = parse("lgvq", lay_out(tmp_path / "a", {"LGVQ.csv": "lgvq/LGVQ.csv"}), SCALE)
    old = parse("lgvq", lay_out(tmp_path / "b", {"LGVQ.csv": "lgvq/LGVQ.v1_68e57df.csv"}), SCALE)
    key = lambda r: (Path(r["media"][0]).parent.name, r["prompt"])  # noqa: E731
    assert {key(r): r["raw_scores"] for r in new.rows} == {key(r): r["raw_scores"] for r in old.rows}
    assert {r["split"] for r in new.rows if r["sample_id"].endswith("/0000")} <= {"train", "test"}
    raw = tmp_path / "a"
    renumbered = touch(raw / "videos" / "0001.mp4")
    again = {r["sample_id"].split("/")[-1]: r["media"][0] for r in parse("lgvq", raw, SCALE).rows}
    assert again["0001"] == str(renumbered) and again["0000"].endswith(
        "/Gen-2/A baseball player sprinted towards home base.mp4"
    )


# ------------------------------------------------------------------------------------------------------------ LSVQ
NATIVE = {
    "LSVQ_whole_test.csv": "lsvq/LSVQ_whole_test.csv",
    "LSVQ_whole_test_1080p.csv": "lsvq/LSVQ_whole_test_1080p.csv",
    "train_labels.txt": "lsvq/fastvqa/train_labels.first500.txt",
}
LISTS = {"labels_test.txt": "lsvq/fastvqa/labels_test.txt", "labels_1080p.txt": "lsvq/fastvqa/labels_1080p.txt"}


def test_lsvq_benchmark_lists_give_the_row_sets_of_table_3(tmp_path):
    raw = lay_out(tmp_path / "lsvq", NATIVE | LISTS)
    out = parse("lsvq", raw, SCALE)
    assert by_split(out) == {"train": 500, "test": 7186, "test_1080p": 3573} and not out.bad and not out.skipped
    assert out.sources == ["train_labels.txt", "labels_test.txt", "labels_1080p.txt"]
    r = next(r for r in out.rows if r["sample_id"] == "lsvq/test_1080p/yfcc-batch1/722")
    assert r["media"] == [str(raw / "videos" / "yfcc-batch1" / "722.mp4")]
    assert r["raw_score"] == pytest.approx(78.7741935483871) and r["gt_score"] == pytest.approx(
        1 + 4 * 0.787741935483871
    )
    native = parse("lsvq", lay_out(tmp_path / "native", NATIVE), SCALE)
    a, b = mos_of(out), mos_of(native)
    common = set(a) & set(b)
    assert len(common) > 10_000 and all(a[k] == pytest.approx(b[k], abs=1e-9) for k in common)  # every MOS agrees


@pytest.mark.slow
def test_lsvq_native_csvs_keep_is_valid_false_rows_for_evaluation(tmp_path):
    raw = lay_out(tmp_path / "lsvq", NATIVE)
    out = parse("lsvq", raw, SCALE)
    assert by_split(out) == {"train": 500, "test": 7220, "test_1080p": 3561} and not out.bad and not out.skipped
    assert options_of("lsvq") == {"skip_invalid": ("train",)}
    strict = parse("lsvq", raw, SCALE, {"skip_invalid": ["train", "test", "test_1080p"]})
    assert by_split(strict) == {"train": 500, "test": 7180, "test_1080p": 705}  # what the filter would cost
    assert strict.skipped == {"is_valid=0 (test)": 40, "is_valid=0 (test_1080p)": 2856}
    with pytest.raises(ValueError, match="unknown split"):
        parse("lsvq", raw, SCALE, {"skip_invalid": ["valid"]})


# ----------------------------------------------------------------------------------------------------------- KonIQ
def test_koniq_deqa_record_targets(tmp_path):
    raw = lay_out(
        tmp_path / "koniq",
        {
            "metas/train_koniq_7k.json": "koniq/deqa/deqa_issue1_record.json",
            "test_koniq.json": "koniq/qalign/test_koniq.json",
        },
    )
    assert options_of("koniq") == {"target": "gt_score"}
    mos = parse("koniq", raw, SCALE)
    norm = parse("koniq", raw, SCALE, {"target": "gt_score_norm"})
    for out, want in ((mos, 3.92660550458716), (norm, 4.522821594986413)):
        (rec,) = [r for r in out.rows if r["split"] == "train"]
        assert rec["sample_id"] == "koniq/train/10009096245.jpg->3.92660550458716"
        assert rec["raw_score"] == pytest.approx(3.92660550458716) and rec["gt_score"] == pytest.approx(want)
        assert rec["media"] == [str(raw / "images" / "10009096245.jpg")]
    # Q-Align's 0-100 list: the MOS maps linearly; gt_score_norm is DeQA's min-max over the list
    test = [r for r in norm.rows if r["split"] == "test"]
    assert len(test) == 2010 and min(r["gt_score"] for r in test) == 1.0 and max(r["gt_score"] for r in test) == 5.0
    plain = {r["sample_id"]: r["gt_score"] for r in mos.rows if r["split"] == "test"}
    assert plain["koniq/test/10007357496.jpg"] == pytest.approx(1 + 4 * 68.7285714286 / 100)


def test_koniq_qalign_and_fastvqa_lists(tmp_path):
    raw = lay_out(
        tmp_path / "koniq",
        {
            "train_koniq.json": "koniq/qalign/train_koniq.first500.json",
            "test_labels.txt": "koniq/fastvqa/test_labels.txt",
        },
    )
    out = parse("koniq", raw, SCALE)
    assert by_split(out) == {"train": 500, "test": 2015} and not out.bad
    train = mos_of(out)
    assert train["10004473376.jpg"] == pytest.approx(77.3836206897)  # the score only inside the id
    assert all(1 <= r["gt_score"] <= 5 and r["media"][0].startswith(str(raw / "images")) for r in out.rows)
    qalign = json.loads((REAL / "koniq/qalign/test_koniq.json").read_text())
    got = {r["sample_id"].split("/")[-1]: r["raw_score"] for r in out.rows if r["split"] == "test"}
    assert all(got[q["image"].split("/")[-1]] == pytest.approx(q["gt_score"]) for q in qalign)


# ------------------------------------------------------------------------------------------------------- KoNViD-1k
KONVID = {
    "KoNViD_1k_attributes.csv": "konvid/KoNViD_1k_attributes.csv",
    "labels.txt": "konvid/fastvqa/labels.txt",
    "konvid.json": "konvid/qalign/konvid.json",
}


@pytest.mark.parametrize("name", list(KONVID))
def test_konvid_every_release_gives_the_1200_videos(tmp_path, name):
    raw = lay_out(tmp_path / "konvid", {name: KONVID[name]})
    out = parse("konvid", raw, SCALE)
    assert by_split(out) == {"test": 1200} and not out.bad and out.sources == [name]
    assert all(
        r["media"] == [str(raw / "KoNViD_1k_videos" / f"{r['sample_id'].split('/')[-1]}.mp4")] for r in out.rows
    )
    assert min(r["raw_score"] for r in out.rows) == 1.22 and max(r["raw_score"] for r in out.rows) == 4.64
    ref = parse("konvid", lay_out(tmp_path / "ref", {"labels.txt": KONVID["labels.txt"]}), SCALE)
    a, b = mos_of(out), mos_of(ref)
    assert set(a) == set(b) and all(a[k] == pytest.approx(b[k], abs=1e-4) for k in a)  # the CSV rounds to 4 places


def test_konvid_metadata_file_names_are_used_where_those_files_exist(tmp_path):
    raw = lay_out(tmp_path / "konvid", {"KoNViD_1k_attributes.csv": KONVID["KoNViD_1k_attributes.csv"]})
    with open(raw / "KoNViD_1k_attributes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert Counter(r["file_name"].split("_")[1] for r in rows) == {"original": 646, "cut": 554}
    cut = next(r for r in rows if "_cut_" in r["file_name"])
    touch(raw / "KoNViD_1k_videos" / cut["file_name"])
    media = {r["sample_id"].split("/")[-1]: r["media"][0] for r in parse("konvid", raw, SCALE).rows}
    assert media[cut["flickr_id"]] == str(raw / "KoNViD_1k_videos" / cut["file_name"])
    other = rows[0]["flickr_id"] if rows[0] is not cut else rows[1]["flickr_id"]
    assert media[other] == str(raw / "KoNViD_1k_videos" / f"{other}.mp4")


# -------------------------------------------------------------------------------------------------------- LIVE-VQC
LIVEVQC = {
    "data.mat": "livevqc/data.RECONSTRUCTED_from_fastvqa_labels.mat",
    "labels.txt": "livevqc/fastvqa/labels.txt",
    "LIVE_VQC_metadata.csv": "livevqc/videval/LIVE_VQC_metadata.csv",
}
NEW_NAMES = ("A012", "A036", "A046", "A080", "B054", "B115", "B139", "B248", "B263")


@pytest.mark.parametrize("name", list(LIVEVQC))
def test_livevqc_every_release_gives_the_585_videos_under_one_id(tmp_path, name):
    raw = lay_out(tmp_path / "livevqc", {name: LIVEVQC[name]})
    out = parse("livevqc", raw, SCALE)
    assert by_split(out) == {"test": 585} and not out.bad
    ref = parse("livevqc", lay_out(tmp_path / "ref", {"labels.txt": LIVEVQC["labels.txt"]}), SCALE)
    assert set(mos_of(out)) == set(mos_of(ref))  # the NEW suffix is not part of the id
    assert all(mos_of(out)[k] == pytest.approx(v) for k, v in mos_of(ref).items())
    assert all(0 <= r["raw_score"] <= 100 and 1 <= r["gt_score"] <= 5 for r in out.rows)


def test_livevqc_new_names_resolve_to_the_file_present(tmp_path):
    raw = lay_out(tmp_path / "livevqc", {"data.mat": LIVEVQC["data.mat"]})
    new = touch(raw / "Video" / "A012NEW.mp4")
    media = {r["sample_id"].split("/")[-1]: r["media"][0] for r in parse("livevqc", raw, SCALE).rows}
    assert media["A012.mp4"] == str(new) and media["A036.mp4"] == str(raw / "Video" / "A036.mp4")
    raw = lay_out(tmp_path / "videval", {"LIVE_VQC_metadata.csv": LIVEVQC["LIVE_VQC_metadata.csv"]})
    plain = touch(raw / "Video" / "B054.mp4")
    media = {r["sample_id"].split("/")[-1]: r["media"][0] for r in parse("livevqc", raw, SCALE).rows}
    assert media["B054.mp4"] == str(plain) and media["B263.mp4"] == str(raw / "Video" / "B263NEW.mp4")
    assert {f"{n}.mp4" for n in NEW_NAMES} <= set(media)


# ----------------------------------------------------------------------------------------------------- GenAI-Bench
def test_genaibench_votes_prompts_and_hub_media(tmp_path):
    raw = lay_out(
        tmp_path / "genaibench",
        {
            "video_generation/test_v1-00000-of-00001.parquet": (
                "genaibench/test_v1.RECONSTRUCTED_real_prompt_vote_placeholder_urls.parquet"
            )
        },
    )
    out = parse("genaibench", raw, SCALE)
    assert by_split(out) == {"test": 1069} and not out.bad
    votes = Counter((r["raw_label"], r["preference"], r["gt_choice"]) for r in out.rows)
    assert votes == {
        ("rightvote", -1, "B"): 375,
        ("leftvote", 1, "A"): 325,
        ("bothbad_vote", 0, "tie"): 231,
        ("tievote", 0, "tie"): 138,
    }
    results = [json.loads(line) for line in (REAL / "genaibench/genaibench_results_random_pairwise.jsonl").open()]
    assert [(r["prompt"], r["raw_label"]) for r in out.rows] == [(x["prompt"], x["human_vote"]) for x in results]
    table = pl.read_parquet(raw / "video_generation/test_v1-00000-of-00001.parquet")
    url = table["left_video"][0]
    assert "/blob/main/" in url and hub_file_url(url) == url.replace("/blob/main/", "/resolve/main/")
    assert out.rows[0]["media"][0] == str(raw / "videos" / url.rsplit("/", 1)[1])


# ------------------------------------------------------------------------------------------ MonetBench, VisionReward
def test_monetbench_public_evaluator_layout(tmp_path):
    raw = tmp_path / "monetbench"
    (raw / "monetbench").mkdir(parents=True)
    answers = ["video1", "video2", "tie", "video2"]
    pl.DataFrame(
        {
            "video1_path": [f"monetbench/videos/cogvideox/{i}.mp4" for i in range(4)],
            "video2_path": [f"monetbench/videos/kling/{i}.mp4" for i in range(4)],
            "standard_answer": answers,
        }
    ).write_parquet(raw / "monetbench" / "test-00000-of-00001.parquet")
    out = parse("monetbench", raw, SCALE)
    assert [r["preference"] for r in out.rows] == [1, -1, 0, -1] and not out.bad
    assert [r["gt_choice"] for r in out.rows] == ["A", "B", "tie", "B"]
    assert out.rows[0]["media"] == [
        str(raw / "videos" / "monetbench/videos/cogvideox/0.mp4"),
        str(raw / "videos" / "monetbench/videos/kling/0.mp4"),
    ]
    assert out.rows[0]["sample_id"] == "monetbench/test/test-00000-of-00001:000000" and out.rows[0]["prompt"] is None


def test_visionreward_questions_quote_the_prompt_as_the_official_inference(tmp_path):
    raw = lay_out(tmp_path / "visionreward", {"VisionReward_video_qa.txt": "visionreward/VisionReward_video_qa.txt"})
    questions = [
        q.strip() for q in (REAL / "visionreward/VisionReward_video_qa.txt").read_text().splitlines() if q.strip()
    ]
    assert len(questions) == 64 and sum("[[prompt]]" in q for q in questions) == 4
    prompt = 'A cat "Max" sails, then [[waves]] at 3 a.m.'
    rng = np.random.default_rng(0)
    answers, mask = rng.choice([-1, 1], 64).tolist(), [1] * 60 + [0] * 4
    (raw / "train").mkdir()
    pl.DataFrame(
        {
            "internal_id": ["v0"],
            "url": ["https://example.invalid/v0.mp4"],
            "video_path": ["v0.mp4"],
            "prompt": [prompt],
            "meta_result": [answers],
            "meta_mask": [mask],
        }
    ).write_parquet(raw / "train" / "train-00000-of-00001.parquet")
    (raw / "regression").mkdir()
    pl.DataFrame(
        {"prompt": [prompt], "video1_path": ["a.mp4"], "video2_path": ["b.mp4"], "standard_answer": ["video2"]}
    ).write_parquet(raw / "regression" / "train-00000-of-00001.parquet")
    out = parse("visionreward", raw, SCALE)
    vqa = [r for r in out.rows if r["task"] == "vqa"]
    assert len(vqa) == 60 and out.skipped == {"meta_mask=0 (question not applicable)": 4} and not out.bad
    assert [r["question"] for r in vqa] == [q.replace("[[prompt]]", prompt) for q in questions[:60]]
    assert vqa[0]["question"] == f'Does the video meet all the requirements stated in the text "{prompt}"?'
    assert [r["gt_choice"] for r in vqa] == ["yes" if a > 0 else "no" for a in answers[:60]]
    (pair,) = [r for r in out.rows if r["task"] == "comparison"]
    assert pair["preference"] == -1 and pair["sample_id"] == "visionreward/train/train-00000-of-00001:000000"


def test_visionreward_question_needing_a_missing_prompt_is_quarantined(tmp_path):
    raw = lay_out(tmp_path / "visionreward", {"meta_qa_en.txt": "visionreward/VisionReward_video_qa.txt"})
    (raw / "train").mkdir()
    pl.DataFrame(
        {
            "internal_id": ["v0"],
            "video_path": ["v0.mp4"],
            "prompt": [""],
            "meta_result": [[1] * 64],
            "meta_mask": [[1] * 64],
        }
    ).write_parquet(raw / "train" / "train-00000-of-00001.parquet")
    (raw / "regression").mkdir()
    pl.DataFrame({"video1_path": ["a.mp4"], "video2_path": ["b.mp4"], "standard_answer": ["1"]}).write_parquet(
        raw / "regression" / "train-00000-of-00001.parquet"
    )
    out = parse("visionreward", raw, SCALE)
    assert len([r for r in out.rows if r["task"] == "vqa"]) == 60
    assert [(b.row, b.reason) for b in out.bad] == [
        (0, "question quotes the prompt ([[prompt]]) but the row has no prompt")
    ] * 4


# --------------------------------------------------------------------------------------------------------- VidProM
def test_vidprom_readme_rows(tmp_path):
    raw = lay_out(tmp_path / "vidprom", {"VidProM_unique.csv": "vidprom/VidProM_unique.README3rows.csv"})
    out = parse("vidprom", raw, SCALE)
    assert len(out.rows) == 3 and not out.bad
    assert out.rows[0]["sample_id"] == "vidprom/train/6a83eb92-faa0-572b-9e1f-67dec99b711d"
    assert out.rows[0]["prompt"].startswith("Flying among clouds and stars, kitten Max")
    assert all(r["media"] == [] and r["task"] == "prompt" for r in out.rows)


# ---------------------------------------------------------------------------------------------------- file layout
def test_registry_native_files_name_every_release(tmp_path):
    raw = lay_out(tmp_path / "lsvq", NATIVE | LISTS)
    assert check_native("lsvq", raw) == ["videos/"]
    raw = lay_out(tmp_path / "konvid", {"konvid.json": KONVID["konvid.json"]})
    assert check_native("konvid", raw) == ["KoNViD_1k_videos/"]
    with pytest.raises(ParseError, match=r"KoNViD_1k_attributes.csv: annotation file not found \(nor"):
        parse("konvid", tmp_path / "empty", SCALE)
    with pytest.raises(ValueError, match="unknown option"):
        parse("konvid", raw, SCALE, {"target": "gt_score_norm"})
