"""Parsers on generated native files, the manifest schema, and the quarantine of bad inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import polars as pl
import pytest

from vqinsight.data import manifest as M
from vqinsight.data.parsers import PARSERS, ParseError, preference_of
from vqinsight.data.registry import DATASET_KEYS
from vqinsight.data.synthetic import generate_dataset

SCALE = (1.0, 5.0)
SMALL = {
    "koniq": {"train": 5, "test": 3},
    "lsvq": {"train": 6, "test": 4, "test_1080p": 2, "invalid": 1},
    "konvid": {"test": 4},
    "livevqc": {"test": 4},
    "lgvq": {"prompts": 3, "models": 2},
    "visionreward": {"vqa": 3, "pairs": 4},
    "genaibench": {"pairs": 6},
    "monetbench": {"pairs": 6},
    "vidprom": {"prompts": 12},
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("raw")
    return {k: (root / k, generate_dataset(k, root / k, counts=SMALL[k], nframes=4)) for k in DATASET_KEYS}


@pytest.mark.parametrize("key", DATASET_KEYS)
def test_every_dataset_parses_cleanly_into_a_valid_manifest(generated, key):
    raw, _ = generated[key]
    df, quarantine, _ = M.build(key, raw, SCALE, reader="pyav")
    assert quarantine == [] and df.height > 0
    M.validate_manifest(df, SCALE)
    assert df["sample_id"].str.starts_with(f"{key}/").all()
    assert all(Path(m).is_file() for ms in df["media"].to_list() for m in ms)


def test_score_labels_are_the_generated_mos_rescaled(generated):
    for key, lo, hi in (("koniq", 1, 5), ("lsvq", 0, 100)):
        raw, summary = generated[key]
        df, _, skipped = M.build(key, raw, SCALE, check=False)
        truth = {t["id"]: t for t in summary["truth"] if t.get("is_valid", 1)}
        assert df.height == len(truth)
        for sid, r, g in zip(df["sample_id"], df["raw_score"], df["gt_score"], strict=True):
            t = truth[sid.split("/", 2)[2]]
            assert r == pytest.approx(t["raw"], abs=1e-3)
            assert g == pytest.approx(1 + 4 * (r - lo) / (hi - lo))
    assert M.build("lsvq", generated["lsvq"][0], SCALE, check=False)[2] == {"is_valid=0": 1}


def test_preferences_and_vqa_answers_match_the_generator(generated):
    raw, summary = generated["genaibench"]
    df, _, _ = M.build("genaibench", raw, SCALE, check=False)
    want = {t["id"]: t["preference"] for t in summary["truth"]}
    got = {sid.split("/")[-1]: p for sid, p in zip(df["sample_id"], df["preference"], strict=True)}
    assert got == want
    assert set(df.filter(pl.col("raw_label") == "bothbad_vote")["gt_choice"]) <= {"tie"}
    raw, summary = generated["visionreward"]
    df, _, _ = M.build("visionreward", raw, SCALE, check=False)
    vqa = df.filter(pl.col("task") == "vqa")
    assert vqa.height == sum(sum(t["mask"]) for t in summary["truth"] if "answers" in t)
    assert set(vqa["gt_choice"]) <= {"yes", "no"} and vqa["question"].is_not_null().all()


def test_lgvq_split_keeps_prompts_together(generated):
    df, _, _ = M.build("lgvq", generated["lgvq"][0], SCALE, check=False)
    per_prompt = df.group_by("prompt").agg(pl.col("split").n_unique())
    assert per_prompt["split"].max() == 1


@pytest.mark.parametrize(
    ("label", "want"),
    [
        ("1", 1),
        ("2", -1),
        ("0", 0),
        ("Video1", 1),
        (" video 2 ", -1),
        ("same", 0),
        ("leftvote", 1),
        ("rightvote", -1),
        ("tievote", 0),
        ("bothbad_vote", 0),
        ("B", -1),
    ],
)
def test_preference_codes(label, want):
    assert preference_of(label) == want


@pytest.mark.parametrize("label", ["maybe", "", None, "3", "video3"])
def test_unknown_preference_codes_are_label_errors(label):
    with pytest.raises(ValueError, match="preference label"):
        preference_of(label)


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_quarantine_names_corrupted_media_and_bad_rows(generated, tmp_path):
    """Acceptance: a corrupted video and bad annotation rows produce a report naming each; fail, then skip."""
    raw = _copy(generated["lsvq"][0], tmp_path / "lsvq")
    test_csv = raw / "LSVQ_whole_test.csv"
    rows = _rows(test_csv)
    rows[0]["mos"], rows[1]["mos"], rows[2]["mos"], rows[3]["mos"] = "abc", "", "nan", "150"
    rows.append(dict(rows[3], mos="50"))  # duplicate id of row 3
    _write_rows(test_csv, rows)
    train = _rows(raw / "LSVQ_whole_train.csv")
    truncated = raw / "videos" / f"{train[0]['name']}.mp4"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size * 6 // 10])
    empty = raw / "videos" / f"{train[1]['name']}.mp4"
    empty.write_bytes(b"")
    (raw / "videos" / f"{train[2]['name']}.mp4").unlink()
    (raw / "videos" / f"{train[3]['name']}.mp4").write_text("this is not a video")

    out, q = tmp_path / "m.parquet", tmp_path / "q.csv"
    args = ["--dataset", "lsvq", "--raw-dir", str(raw), "--out", str(out), "--quarantine", str(q)]
    assert M.main(args) == 1 and not out.exists()
    report = _rows(q)
    reasons = {(r["annotation_file"], r["row"]): r["reason"] for r in report}
    assert "non-numeric MOS 'abc'" in reasons[("LSVQ_whole_test.csv", "0")]
    assert "missing MOS" in reasons[("LSVQ_whole_test.csv", "1")]
    assert "non-finite MOS" in reasons[("LSVQ_whole_test.csv", "2")]
    assert "outside the native range [0, 100]" in reasons[("LSVQ_whole_test.csv", "3")]
    assert "duplicate id" in reasons[("LSVQ_whole_test.csv", str(len(rows) - 1))]
    by_media = {Path(r["media_file"]).name: r["reason"] for r in report if r["media_file"]}
    assert "empty media file (0 bytes)" in by_media[empty.name]
    assert "not found" in by_media[f"{Path(train[2]['name']).name}.mp4"]
    assert truncated.name in by_media and f"{Path(train[3]['name']).name}.mp4" in by_media
    assert len(report) == 9

    assert M.main([*args, "--on-bad-input", "skip"]) == 0
    df = M.load_manifest(out, SCALE)
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    n_valid = sum(1 for f in raw.glob("LSVQ_whole_*.csv") for r in _rows(f) if r["is_valid"] not in ("0", "False"))
    assert meta["quarantined"] == 9 and df.height == n_valid - 9
    assert not set(df["sample_id"]) & {f"lsvq/train/{train[i]['name']}" for i in range(4)}


def test_bad_json_record_in_koniq_is_quarantined(generated, tmp_path):
    raw = _copy(generated["koniq"][0], tmp_path / "koniq")
    meta = raw / "metas" / "train_koniq_7k.json"
    items = json.loads(meta.read_text())
    items[0]["gt_score"], items[1] = None, "not a record"
    meta.write_text(json.dumps(items))
    df, quarantine, _ = M.build("koniq", raw, SCALE)
    assert [(q["row"], q["reason"]) for q in quarantine[:2]] == [(0, "missing MOS"), (1, "missing id")]


def test_unknown_preference_in_parquet_is_quarantined(generated, tmp_path):
    raw = _copy(generated["monetbench"][0], tmp_path / "monetbench")
    f = next((raw / "monetbench").glob("test-*.parquet"))
    df = pl.read_parquet(f)
    df.with_columns(
        pl.when(pl.int_range(pl.len()) == 2)
        .then(pl.lit("maybe"))
        .otherwise(pl.col("standard_answer"))
        .alias("standard_answer")
    ).write_parquet(f)
    _, quarantine, _ = M.build("monetbench", raw, SCALE, check=False)
    assert len(quarantine) == 1 and quarantine[0]["row"] == 2 and "'maybe'" in quarantine[0]["reason"]


def test_missing_annotation_file_and_missing_columns_name_the_file(generated, tmp_path, caplog):
    raw = _copy(generated["konvid"][0], tmp_path / "konvid")
    attrs = raw / "KoNViD_1k_attributes.csv"
    rows = _rows(attrs)
    _write_rows(attrs, [{k: v for k, v in r.items() if k != "MOS"} for r in rows])
    with pytest.raises(ParseError, match=r"KoNViD_1k_attributes.csv: missing column\(s\) \['MOS'\]"):
        PARSERS["konvid"](raw, SCALE)
    attrs.unlink()
    args = [
        "--dataset",
        "konvid",
        "--raw-dir",
        str(raw),
        "--out",
        str(tmp_path / "m.parquet"),
        "--quarantine",
        str(tmp_path / "q.csv"),
    ]
    assert M.main(args) == 2
    assert "KoNViD_1k_attributes.csv: annotation file not found" in caplog.text


def test_manifest_bytes_are_deterministic(generated, tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"m{i}.parquet"
        assert (
            M.main(
                [
                    "--dataset",
                    "lgvq",
                    "--raw-dir",
                    str(generated["lgvq"][0]),
                    "--out",
                    str(out),
                    "--quarantine",
                    str(tmp_path / f"q{i}.csv"),
                    "--reader",
                    "pyav",
                ]
            )
            == 0
        )
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def _frame(rows: list[dict]) -> pl.DataFrame:
    base = dict(
        sample_id="x/test/1",
        dataset="x",
        split="test",
        task="video_score",
        media_type="video",
        media=["a.mp4"],
        prompt=None,
        question=None,
        gt_score=3.0,
        raw_score=50.0,
        gt_scores=None,
        raw_scores=None,
        gt_choice=None,
        preference=None,
        raw_label=None,
        source_file="f",
        source_row=0,
    )
    return M.to_frame([{**base, **r} for r in rows])


@pytest.mark.parametrize(
    ("rows", "needle"),
    [
        ([{}, {}], "duplicate sample_id"),
        ([{"gt_score": 7.0}], "gt_score outside"),
        ([{"task": "comparison", "media": ["a", "b"], "gt_choice": "A"}], "without preference"),
        ([{"task": "comparison", "media": ["a"], "preference": 1, "gt_choice": "A"}], "2 media path"),
        ([{"task": "vqa", "gt_choice": "maybe"}], "yes/no"),
        ([{"task": "dance"}], "task not in"),
    ],
)
def test_schema_check_rejects_inconsistent_manifests(rows, needle):
    rows = [{"sample_id": f"x/test/{i}"} | r if r != {} else r for i, r in enumerate(rows)]
    with pytest.raises(M.ManifestError, match=needle):
        M.validate_manifest(_frame(rows), SCALE)


def test_load_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        M.load_manifest(tmp_path / "nope.parquet")
    p = tmp_path / "bad.parquet"
    pl.DataFrame({"sample_id": ["a"]}).write_parquet(p)
    with pytest.raises(M.ManifestError, match="bad.parquet: missing column"):
        M.load_manifest(p)


def test_parse_options_reach_the_parser_and_the_meta(generated, tmp_path, caplog):
    raw = generated["lsvq"][0]
    out = tmp_path / "lsvq.parquet"
    args = ["--dataset", "lsvq", "--raw-dir", str(raw), "--out", str(out), "--quarantine", str(tmp_path / "q.csv")]
    assert M.main([*args, "--no-media-check", "--options", '{"skip_invalid": []}']) == 0
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["skipped"] == {} and meta["config"]["options"] == {"skip_invalid": []}
    assert meta["sources"] == ["LSVQ_whole_train.csv", "LSVQ_whole_test.csv", "LSVQ_whole_test_1080p.csv"]
    assert pl.read_parquet(out).height == sum(SMALL["lsvq"].values())  # the is_valid=0 train row is kept
    assert M.main([*args, "--no-media-check", "--options", '{"target": "gt_score_norm"}']) == 2
    assert "datasets.lsvq.parse: unknown option(s) ['target']" in caplog.text


def test_registry_native_files_list_every_release_the_parsers_read():
    from vqinsight.data import pair_parsers as P
    from vqinsight.data import score_parsers as S
    from vqinsight.data.registry import REGISTRY

    def alternatives(key: str) -> set[str]:
        return {alt for entry in REGISTRY[key].native_files for alt in entry.split("|")}

    assert {n for c in S.KONIQ_SOURCES.values() for n, _ in c} <= alternatives("koniq")
    assert {n for c in S.LSVQ_SOURCES.values() for n in c} <= alternatives("lsvq")
    assert set(S.KONVID_SOURCES) <= alternatives("konvid")
    assert set(S.LIVEVQC_SOURCES) <= alternatives("livevqc")
    assert set(S.LGVQ_SOURCES) <= alternatives("lgvq")
    assert set(P.QUESTION_FILES) <= alternatives("visionreward")
