"""Synthetic dataset generator: native files and columns, determinism, label function, degradations, media."""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from vqinsight.data.synthetic import DATASET_KEYS, generate_dataset
from vqinsight.data.synthetic import degrade as D
from vqinsight.data.synthetic import labels as L
from vqinsight.data.synthetic.scenes import SceneSpec, Shape, describe, random_scene, render

NF, H, W = 6, 32, 48
SMALL: dict[str, dict[str, int]] = {
    "koniq": {"train": 3, "test": 2},
    "lsvq": {"train": 2, "test": 2, "test_1080p": 1, "invalid": 1},
    "konvid": {"test": 2},
    "livevqc": {"test": 2},
    "lgvq": {"prompts": 2, "models": 3},
    "visionreward": {"vqa": 3, "pairs": 3},
    "genaibench": {"pairs": 4},
    "monetbench": {"pairs": 4},
    "vidprom": {"prompts": 12},
}


def _gen(root: Path, seed: int) -> dict[str, dict]:
    return {
        k: generate_dataset(k, root / k, seed=seed, counts=SMALL[k], nframes=NF, height=H, width=W)
        for k in DATASET_KEYS
    }


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    root = tmp_path_factory.mktemp("synth")
    return root, _gen(root, seed=0)


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _frames(path: Path) -> int:
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


# --------------------------------------------------------------------------- native files and columns
def test_every_key_generates(gen):
    root, summaries = gen
    assert set(summaries) == set(DATASET_KEYS)
    for key, s in summaries.items():
        assert s["files"], key
        for rel in s["files"]:
            assert (root / key / rel).is_file(), (key, rel)
        assert not any(p.name.startswith(".") for p in (root / key).rglob("*")), "temporary files left behind"


def test_koniq(gen):
    root, s = gen
    r = root / "koniq"
    train = json.loads((r / "metas/train_koniq_7k.json").read_text())
    test = json.loads((r / "metas/test_koniq_2k.json").read_text())
    assert (len(train), len(test)) == (3, 2)
    keys = {"id", "image", "gt_score", "gt_score_norm", "std", "std_norm", "level_probs", "conversations"}
    for rec in train + test:
        assert keys <= set(rec)
        assert (
            rec["image"].startswith("KONIQ/images/") and 1 <= rec["gt_score"] <= 5 and 1 <= rec["gt_score_norm"] <= 5
        )
        assert len(rec["level_probs"]) == 5 and abs(sum(rec["level_probs"]) - 1) < 1e-4
        with Image.open(r / "images" / Path(rec["image"]).name) as im:
            assert im.format == "JPEG" and im.size == (W, H)


def test_lsvq(gen):
    root, _ = gen
    r = root / "lsvq"
    cols = "name,p1,p2,p3,height,width,mos_p1,mos_p2,mos_p3,mos,frame_number,fn_last_frame,is_test,is_valid".split(",")
    for name, n in (("train", 3), ("test", 2), ("test_1080p", 1)):
        rows = _csv(r / f"LSVQ_whole_{name}.csv")
        assert len(rows) == n and list(rows[0]) == cols
        for row in rows:
            assert row["name"].startswith("ia-batch") and "/" in row["name"]
            assert 0 <= float(row["mos"]) <= 100
            assert _frames(r / "videos" / f"{row['name']}.mp4") == NF
    assert [row["is_valid"] for row in _csv(r / "LSVQ_whole_train.csv")] == ["1", "1", "0"]


def test_konvid_livevqc(gen):
    from scipy.io import loadmat

    root, _ = gen
    rows = _csv(root / "konvid/KoNViD_1k_attributes.csv")
    assert len(rows) == 2 and {"flickr_id", "MOS", "SD", "n"} <= set(rows[0])
    for row in rows:
        assert row["flickr_id"].isdigit() and 1 <= float(row["MOS"]) <= 5
        assert _frames(root / "konvid/KoNViD_1k_videos" / f"{row['flickr_id']}.mp4") == NF
    mat = loadmat(root / "livevqc/data.mat")
    names = [str(np.asarray(c).ravel()[0]) for c in np.asarray(mat["video_list"], dtype=object).ravel()]
    mos = np.asarray(mat["mos"], float).ravel()
    assert names == ["A001.mp4", "A002.mp4"] and mos.shape == (2,) and ((0 <= mos) & (mos <= 100)).all()
    assert mat["mos"].shape == (2, 1)
    assert all(_frames(root / "livevqc/Video" / n) == NF for n in names)


def test_lgvq(gen):
    root, s = gen
    rows = _csv(root / "lgvq/LGVQ_MOS.csv")
    assert len(rows) == 6 and list(rows[0]) == ["video_name", "prompt", "model", "spatial", "temporal", "alignment"]
    assert len({r["prompt"] for r in rows}) == 2 and len({r["model"] for r in rows}) == 3
    for row in rows:
        assert all(0 <= float(row[d]) <= 100 for d in ("spatial", "temporal", "alignment"))
        assert (root / "lgvq/videos" / row["video_name"]).is_file()


def test_visionreward(gen):
    root, _ = gen
    r = root / "visionreward"
    questions = [q for q in (r / "meta_qa_en.txt").read_text().splitlines() if q]
    df = pl.read_parquet(sorted((r / "train").glob("train-*.parquet"))[0])
    assert df.columns == ["video_path", "internal_id", "prompt", "url", "annotation", "meta_result", "meta_mask"]
    assert isinstance(df.schema["annotation"], pl.Struct)
    assert df.schema["meta_result"] == pl.List(pl.Int64) and df.schema["meta_mask"] == pl.List(pl.Int64)
    for row in df.iter_rows(named=True):
        assert len(row["meta_result"]) == len(row["meta_mask"]) == len(questions)
        assert set(row["meta_result"]) <= {0, 1} and set(row["meta_mask"]) <= {0, 1}
        assert _frames(r / "videos" / row["video_path"]) == NF
    reg = pl.read_parquet(sorted((r / "regression").glob("train-*.parquet"))[0])
    assert reg.columns == ["internal_id", "prompt", "standard_answer", "video1_path", "video2_path"]
    assert set(reg["standard_answer"]) <= {"0", "1", "2"}
    for row in reg.iter_rows(named=True):
        assert (r / "videos" / row["video1_path"]).is_file() and (r / "videos" / row["video2_path"]).is_file()


def test_monetbench_genaibench_vidprom(gen):
    root, _ = gen
    m = pl.read_parquet(sorted((root / "monetbench/monetbench").glob("test-*.parquet"))[0])
    assert m.columns == ["internal_id", "prompt", "standard_answer", "video1_path", "video2_path"] and len(m) == 4
    assert all(
        (root / "monetbench/videos" / p).is_file() for p in m["video1_path"].to_list() + m["video2_path"].to_list()
    )
    g = pl.read_parquet(sorted((root / "genaibench/video_generation").glob("test_v1-*.parquet"))[0])
    assert g.columns == ["prompt", "left_video", "right_video", "vote_type", "left_model", "right_model"]
    assert set(g["vote_type"]) <= {"leftvote", "rightvote", "tievote", "bothbad_vote"}
    for url in g["left_video"].to_list() + g["right_video"].to_list():
        assert url.startswith("https://demo.invalid/genaibench/") and url.endswith(".mp4")
        assert _frames(root / "genaibench/videos" / url.rsplit("/", 1)[1]) == NF
    rows = _csv(root / "vidprom/VidProM_unique.csv")
    cols = "uuid,prompt,time,toxicity,severe_toxicity,obscene,identity_attack,insult,threat".split(",")
    assert list(rows[0]) == cols and len(rows) == 12 and len({r["prompt"] for r in rows}) == 12
    assert all(0 <= float(r[c]) < 0.2 for r in rows for c in cols[3:])


def test_written_labels_match_truth(gen):
    root, s = gen
    g = pl.read_parquet(sorted((root / "genaibench/video_generation").glob("test_v1-*.parquet"))[0])
    for vote, t in zip(g["vote_type"].to_list(), s["genaibench"]["truth"], strict=True):
        assert vote == L.genaibench_vote(t["a"]["quality"]["overall"], t["b"]["quality"]["overall"]) == t["label"]
    for t in s["konvid"]["truth"]:
        assert abs((t["raw"] - 1) / 4 - t["quality"]["overall"]) < 0.2  # label noise is N(0, 0.03)


# --------------------------------------------------------------------------- determinism
def test_deterministic(gen, tmp_path):
    root, _ = gen
    again = _gen(tmp_path / "same", seed=0)
    assert _hashes(root) == _hashes(tmp_path / "same")
    assert again["lgvq"]["truth"] == gen[1]["lgvq"]["truth"]
    other = tmp_path / "other"
    for key in ("koniq", "lsvq", "genaibench", "vidprom"):
        generate_dataset(key, other / key, seed=1, counts=SMALL[key], nframes=NF, height=H, width=W)
        h0, h1 = _hashes(root / key), _hashes(other / key)
        assert h0 != h1, key


# sha256 over "<path relative to root>\n<sha256 of file>\n" for every file (sorted by path) of _gen(root, seed=0),
# i.e. exactly the `gen` fixture. Obtained by running that generation with the code BEFORE degrade.Mix existed, so a
# change here means the default mix no longer reproduces the original data byte for byte.
DEFAULT_DIGEST = "c7b36c53e42b40bcbba06c296a7341053db1eb9ad8d1120b480f63132f38c42a"


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{p.relative_to(root).as_posix()}\n{hashlib.sha256(p.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def test_default_mix_reproduces_original_bytes(gen, tmp_path):
    root, summaries = gen
    assert _digest(root) == DEFAULT_DIGEST
    assert summaries["koniq"]["mix"] == asdict(D.Mix())
    for mix in ({}, D.Mix(), {"exposure_p": 0.6, "under_p": 0.8, "other_max_severity": 1, "max_active": 3}):
        for key in ("koniq", "monetbench"):
            generate_dataset(key, tmp_path / key, seed=0, counts=SMALL[key], nframes=NF, height=H, width=W, mix=mix)
            assert _hashes(tmp_path / key) == _hashes(root / key), (key, mix)


# --------------------------------------------------------------------------- degradation mix
EXPOSURE_MIX = {"exposure_p": 1.0, "under_p": 1.0, "other_max_severity": 0.25}


def test_exposure_mix_koniq_brightness_tracks_mos(tmp_path):
    from scipy.stats import spearmanr

    s = generate_dataset(
        "koniq", tmp_path, seed=0, counts={"train": 300, "test": 1}, nframes=NF, height=H, width=W, mix=EXPOSURE_MIX
    )
    assert all(t["severities"].get("exposure", 0) > 0 and t["exposure_mode"] == "under" for t in s["truth"])
    assert all(v <= 0.25 for t in s["truth"] for k, v in t["severities"].items() if k != "exposure")
    train = json.loads((tmp_path / "metas/train_koniq_7k.json").read_text())
    bright = [np.asarray(Image.open(tmp_path / "images" / Path(r["image"]).name)).mean() for r in train]
    rho = spearmanr(bright, [r["gt_score"] for r in train]).statistic
    assert len(train) == 300 and rho >= 0.7, rho  # measured 0.712 (default mix: 0.32)


@pytest.mark.slow
def test_exposure_mix_pairs_prefer_the_brighter_video(tmp_path):
    import av

    def brightness(path: Path) -> float:
        with av.open(str(path)) as c:
            return float(np.mean([f.to_ndarray(format="rgb24").mean() for f in c.decode(video=0)]))

    s = generate_dataset(
        "monetbench", tmp_path, seed=0, counts={"pairs": 100}, nframes=NF, height=H, width=W, mix=EXPOSURE_MIX
    )
    assert all(t["a"]["severities"].get("exposure", 0) > 0 for t in s["truth"])
    df = pl.read_parquet(tmp_path / "monetbench/test-00000-of-00001.parquet")
    agree = []
    for r in df.iter_rows(named=True):
        if r["standard_answer"] != "0":
            b1, b2 = (brightness(tmp_path / "videos" / r[c]) for c in ("video1_path", "video2_path"))
            agree.append(("1" if b1 > b2 else "2") == r["standard_answer"])
    assert len(agree) >= 40 and np.mean(agree) >= 0.8, np.mean(agree)  # measured 0.934 of 61 (default mix: 0.68)


def test_mix_sampling():
    rng = np.random.default_rng(0)
    mix = D.Mix(exposure_p=1.0, under_p=0.0, other_max_severity=0.1, max_active=2, exposure_min=0.6)
    for _ in range(200):
        d = D.sample_degradations(rng, video=True, aigc=True, mix=mix)
        assert 0.6 <= d.get("exposure") <= 1.0 and d.exposure_mode == "over" and 1 <= len(d.severities) <= 2
        assert all(v <= 0.1 for k, v in d.severities.items() if k != "exposure")
    seen = set()
    for _ in range(200):
        mode, a, b = D.sample_pair(rng, mix=mix)
        seen.add(mode)
        assert a.exposure_mode == b.exposure_mode == "over"  # bothbad too: it follows the prevailing mode
        assert a.get("exposure") >= (0.85 if mode == "bothbad" else 0.6)
    assert seen == {"independent", "tie", "bothbad"}
    assert D.Mix.coerce(None) == D.Mix() and D.Mix(max_active=2.0).max_active == 2


@pytest.mark.parametrize(
    "mix, match",
    [
        ({"exposure_p": 1.0, "exposur_min": 0.2, "bogus": 1}, r"unknown key.*'bogus', 'exposur_min'"),
        ({"exposure_p": 1.5}, "exposure_p"),
        ({"under_p": -0.1}, "under_p"),
        ({"other_max_severity": float("nan")}, "other_max_severity"),
        ({"exposure_min": "0.2"}, "exposure_min"),
        ({"max_active": 0}, "max_active"),
        ({"max_active": 1.5}, "max_active"),
        ([0.6, 0.8], "mapping"),
    ],
)
def test_bad_mix_raises(tmp_path, mix, match):
    with pytest.raises(ValueError, match=match):
        generate_dataset("koniq", tmp_path / "k", counts={"train": 1, "test": 1}, mix=mix)
    assert not (tmp_path / "k").exists()


def test_cli_mix(tmp_path):
    from vqinsight.data.synthetic.__main__ import main

    with pytest.raises(SystemExit):
        main(["--dataset", "koniq", "--out", str(tmp_path / "bad"), "--mix", '{"exposure_q": 1}'])
    with pytest.raises(SystemExit):
        main(["--dataset", "koniq", "--out", str(tmp_path / "bad"), "--mix", "{not json"])
    assert not (tmp_path / "bad").exists()
    assert main(["--dataset", "vidprom", "--out", str(tmp_path / "ok"), "--mix", json.dumps(EXPOSURE_MIX)]) == 0
    assert (tmp_path / "ok/VidProM_unique.csv").is_file()


# --------------------------------------------------------------------------- labels
def test_mos_monotone_in_exposure():
    for key, (lo, hi) in L.RAW_RANGES.items():
        kind = "image" if key == "koniq" else "video"
        mos = [
            L.raw_mos(L.quality(D.Degradations({"exposure": s}), kind).overall, (lo, hi), np.random.default_rng(0))
            for s in np.linspace(0, 1, 11)
        ]
        assert all(a >= b for a, b in zip(mos, mos[1:], strict=False)) and mos[0] > mos[-1], key
        assert all(lo <= m <= hi for m in mos)
    q = L.quality(D.Degradations({"exposure": 0.5, "blur": 0.5}), "aigc")
    assert q.spatial < L.quality(D.Degradations({"blur": 1.0}), "aigc").spatial  # exposure has the largest weight
    assert L.quality(D.Degradations(), "aigc").overall == 1.0


def test_preference_and_ties():
    assert L.preference(0.8, 0.5) == 1 and L.preference(0.5, 0.8) == -1 and L.preference(0.5, 0.53) == 0
    assert (
        L.standard_answer(0.8, 0.5) == "1"
        and L.standard_answer(0.2, 0.6) == "2"
        and L.standard_answer(0.4, 0.42) == "0"
    )
    assert L.genaibench_vote(0.9, 0.3) == "leftvote" and L.genaibench_vote(0.3, 0.9) == "rightvote"
    assert L.genaibench_vote(0.2, 0.22) == "bothbad_vote" and L.genaibench_vote(0.7, 0.72) == "tievote"


def test_vqa_answers():
    ans = {q: (a, m) for q, a, m in L.vqa_answers(D.Degradations({"exposure": 0.9, "flicker": 0.1, "mismatch": 0.5}))}
    by_family = {f: ans[q] for f, q, _ in L.VQA_QUESTIONS}
    assert by_family["exposure"] == (0, 1) and by_family["alignment"] == (0, 1)
    assert by_family["flicker"] == (1, 1) and by_family["blur"] == (1, 1) and by_family["motion"] == (1, 1)
    assert {f: a for f, (a, _) in by_family.items()} == {f: 1 for f in by_family} | {"exposure": 0, "alignment": 0}
    assert L.vqa_answers(D.Degradations({"freeze": 0.3}))[4][2] == 0  # ambiguous band → not applicable


# --------------------------------------------------------------------------- degradations
@pytest.fixture
def clip() -> np.ndarray:
    spec = SceneSpec("gray", "sky", "vertical", (Shape("circle", "red", 0.2, 0.3, 0.5, "right", 0.04),), stripes=True)
    return render(spec, 12, 40, 60)


def test_spatial_degradations(clip):
    rng = np.random.default_rng(0)
    assert D.exposure(clip, 0.8).mean() < 0.5 * clip.mean() and D.exposure(clip, 0.8, "over").mean() > clip.mean()
    hf = lambda x: np.abs(np.diff(x.astype(float), axis=2)).mean()  # noqa: E731
    assert hf(D.blur(clip, 0.8)) < 0.8 * hf(clip)
    assert np.abs(D.noise(clip, 0.5, rng).astype(float) - clip).mean() > 5
    assert not np.array_equal(D.compression(clip, 0.9), clip)
    assert np.array_equal(D.exposure(clip, 0.0), clip) and np.array_equal(D.blur(clip, 0.0), clip)


def test_temporal_degradations(clip):
    rng = np.random.default_rng(0)
    same = lambda x: [np.array_equal(a, b) for a, b in zip(x, x[1:], strict=False)]  # noqa: E731
    assert not any(same(clip))
    frozen = D.freeze(clip, 0.8, rng)
    assert sum(same(frozen)) >= 2 and frozen.shape == clip.shape
    assert sum(same(D.stutter(clip, 0.5))) >= len(clip) // 2
    means = lambda x: x.reshape(len(x), -1).mean(1)  # noqa: E731
    assert means(D.flicker(clip, 0.8, rng)).var() > 10 * means(clip).var() + 1
    moved = D.jitter(clip, 1.0, rng)
    assert moved.shape == clip.shape and not np.array_equal(moved, clip)
    spec = random_scene(np.random.default_rng(3))
    src = render(spec, 24, 40, 60)
    dropped = D.drop(src, 1.0, np.random.default_rng(0), 12)
    assert dropped.shape == (12, 40, 60, 3)
    step = lambda x: np.abs(np.diff(x.astype(float), axis=0)).reshape(len(x) - 1, -1).mean(1)  # noqa: E731
    assert step(dropped).max() > step(src[:12]).max()


def test_mismatch_changes_prompt_not_pixels():
    rng = np.random.default_rng(7)
    spec = random_scene(rng)
    frames, prompt, realised = D.make_item(spec, D.Degradations({"mismatch": 1.0}), rng, 4, 32, 48)
    assert prompt != describe(spec) and realised.get("mismatch") == 1.0
    assert np.array_equal(frames, render(spec, 4, 32, 48))
    _, p2, r2 = D.make_item(spec, D.Degradations({"mismatch": 0.0}), np.random.default_rng(0), 4, 32, 48)
    assert p2 == describe(spec) and r2.get("mismatch") == 0.0


def test_scene_render_and_describe():
    spec = SceneSpec("green", "black", "vertical", (Shape("circle", "red", 0.2, 0.5, 0.5, "left", 0.03),))
    assert describe(spec) == "a red circle moving left over a green-to-black gradient"
    img = render(spec, 1, 30, 40)
    assert img.shape == (1, 30, 40, 3) and img.dtype == np.uint8
    assert tuple(img[0, 15, 20]) == (220, 40, 40)  # the circle's centre is red
