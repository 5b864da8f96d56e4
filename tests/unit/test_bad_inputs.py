"""A generated corpus of bad inputs: every one becomes a quarantine entry or a clear error, never a crash or a drop.

For each dataset the synthetic generator writes a small valid raw dir in the native format; the test then appends
many bad rows (missing / NaN / inf / huge / non-numeric / out-of-range labels, duplicate and missing ids, rows
pointing at corrupted media, unicode, spaces and shell quotes in paths) and runs the manifest builder once. Every
annotation row must end up either in the manifest or in the quarantine report with a reason (bad + good == total).
Whole-file problems (missing columns, unreadable annotation files) must raise ``ParseError`` naming the file and
the column. Each corrupted media file is also read directly with ``read_frames`` / ``read_image`` / ``probe``:
a valid result or a ``MediaError`` naming the path.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from vqinsight.data import manifest as M
from vqinsight.data.parsers import PARSERS, ParseError
from vqinsight.data.registry import DATASET_KEYS
from vqinsight.data.synthetic import generate_dataset
from vqinsight.video import MediaError, available_backends, probe, read_frames, read_image, write_video

SCALE = (1.0, 5.0)
SMALL = {
    "koniq": {"train": 3, "test": 2},
    "lsvq": {"train": 3, "test": 2, "test_1080p": 1, "invalid": 1},
    "konvid": {"test": 3},
    "livevqc": {"test": 3},
    "lgvq": {"prompts": 2, "models": 2},
    "visionreward": {"vqa": 2, "pairs": 3},
    "genaibench": {"pairs": 3},
    "monetbench": {"pairs": 3},
    "vidprom": {"prompts": 4},
}
BAD_LABELS = [
    "", " ", "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e400", "-1e400", str(10**400), "abc", "4,5",
    "None", "null", "-1", "1e9", "100.5", "-0.001", "1e308", "0x10", "5 stars", "\x00", "视频",
]  # fmt: skip
# Python's float() reads Unicode digits: such a label is a number, and may be valid or out of range.
ODD_LABELS = ["３", "٣.٥", "  4  "]
BAD_PREFS = ["maybe", "", " ", "3", "video3", "nan", "A B", "１", "None", "-1", "left right", "√"]
ODD_IDS = ["plain{}", "ünï cødé 视频 {}", 'a b/"q\'x$(id)" {}', "semi;colon,{}", " lead{}"]
# Media expected to be rejected by the media check / by a direct read.
BAD_MEDIA = ("truncated.mp4", "truncated_head.mp4", "zero.mp4", "text.mp4", "garbage.mp4", "dir.mp4", "missing.mp4")
# Media whose outcome may legitimately be either (decodable or not), but never a crash or a silent drop.
ODD_MEDIA = ("one_frame.mp4", "vfr.mp4", "rotated.mp4", "image_as.mp4", 'a b/"q\'x$(id)".mp4', "ünï 视频.mp4")
BAD_IMAGES = ("huge.png", "zero.jpg", "text.jpg", "truncated.jpg", "video_as.jpg", "missing.jpg", "dir.jpg")
ODD_IMAGES = ("wide.png", 'a b/"q\'x$(id)".jpg', "image.png.jpg")


# ------------------------------------------------------------------------------------------------ corpus
def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (no pixel data): cheap "huge resolution" input."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def _ffmpeg(*args: str) -> bool:
    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", *args]
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("raw")
    for k in DATASET_KEYS:
        generate_dataset(k, root / k, counts=SMALL[k], nframes=4)
    return {k: root / k for k in DATASET_KEYS}


@pytest.fixture(scope="module")
def media(generated, tmp_path_factory) -> dict[str, Path]:
    """One file per corruption kind (few files; rows reuse them through hard links)."""
    d = tmp_path_factory.mktemp("media")
    video = next((generated["lsvq"] / "videos").rglob("*.mp4")).read_bytes()
    image = next((generated["koniq"] / "images").glob("*.jpg")).read_bytes()
    (d / "truncated.mp4").write_bytes(video[: len(video) * 6 // 10])
    (d / "truncated_head.mp4").write_bytes(video[:100])
    (d / "zero.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("this is not a video\n")
    (d / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (d / "dir.mp4").mkdir()
    (d / "image_as.mp4").write_bytes(image)
    write_video(d / "one_frame.mp4", np.full((1, 32, 32, 3), 128, np.uint8))
    base = d / "base.mp4"
    write_video(base, np.random.default_rng(1).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8))
    # Variable frame rate: frame n at n^2/16 s. Rotation: a display matrix (ffmpeg >= 6) or the legacy tag.
    vfr_ok = _ffmpeg(
        "-i", str(base), "-vf", "setpts=N*N/16/TB", "-fps_mode", "vfr", "-c:v", "libx264", str(d / "vfr.mp4")
    )
    rot_ok = _ffmpeg("-display_rotation", "90", "-i", str(base), "-c", "copy", str(d / "rotated.mp4")) or _ffmpeg(
        "-i", str(base), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(d / "rotated.mp4")
    )
    assert vfr_ok and rot_ok, "ffmpeg could not write the VFR / rotated samples"
    (d / "a b").mkdir()
    shutil.copy(base, d / 'a b/"q\'x$(id)".mp4')
    shutil.copy(base, d / "ünï 视频.mp4")
    (d / "huge.png").write_bytes(_png_header(100_000, 100_000))
    (d / "zero.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("not an image")
    (d / "truncated.jpg").write_bytes(image[: len(image) // 3])
    (d / "video_as.jpg").write_bytes(video)
    (d / "dir.jpg").mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((2, 600, 3), np.uint8)).save(d / "wide.png")  # aspect ratio 300 (limit 200)
    (d / 'a b/"q\'x$(id)".jpg').write_bytes(image)
    (d / "image.png.jpg").write_bytes((d / "wide.png").read_bytes())  # PNG named .jpg
    return {name: d / name for name in (*BAD_MEDIA, *ODD_MEDIA, *BAD_IMAGES, *ODD_IMAGES)}


def _place(src: Path, dst: Path) -> None:
    """Put corrupted media ``src`` at ``dst`` (hard link; a directory or a missing file stays what it is)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        dst.mkdir(exist_ok=True)
    elif src.exists():
        os.link(src, dst)


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        r = csv.DictReader(f)
        return list(r.fieldnames or []), list(r)


def _write_csv(path: Path, header: list[str], rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(rows)


class Corpus:
    """Bad rows appended to one dataset's native files; ``bad`` holds their (annotation file, row) keys."""

    def __init__(self, raw: Path, media: dict[str, Path]) -> None:
        self.raw, self.media, self.bad, self.odd = raw, media, set(), set()
        self.n = 0

    def uid(self, i: int | None = None) -> str:
        self.n += 1
        return ODD_IDS[self.n % len(ODD_IDS)].format(self.n)

    def media_kinds(self, image: bool = False) -> list[tuple[str, bool]]:
        """(media name, certainly bad) pairs to point rows at."""
        bad, odd = (BAD_IMAGES, ODD_IMAGES) if image else (BAD_MEDIA, ODD_MEDIA)
        return [(m, True) for m in bad] + [(m, False) for m in odd]

    def csv(self, rel: str, make: Any) -> None:
        """Append the rows ``make(template)`` yields ((row, certainly bad)) to CSV ``rel``."""
        path = self.raw / rel
        header, rows = _read_csv(path)
        for row, is_bad in make(rows[0]):
            (self.bad if is_bad else self.odd).add((rel, len(rows)))
            rows.append(row)
        _write_csv(path, header, rows)

    def parquet(self, rel: str, make: Any) -> None:
        path = self.raw / rel
        df = pl.read_parquet(path)
        rows = df.to_dicts()
        for row, is_bad in make(rows[0]):
            (self.bad if is_bad else self.odd).add((rel, len(rows)))
            rows.append(row)
        pl.DataFrame(rows, schema=df.schema, orient="row").write_parquet(path)


def _labels_rows(c: Corpus, tpl: dict, id_col: str, label_cols: tuple[str, ...], video: str | None):
    """Rows with each bad label in each label column, a duplicate id, a missing id and each corrupted medium."""
    for col in label_cols:
        for lab in BAD_LABELS * 4:  # each label 4x, with different id styles (unicode, spaces, quotes)
            nid = c.uid()
            if video:
                _place(c.media["ünï 视频.mp4"], c.raw / video.format(id=nid))  # valid media: only the label is bad
            yield {**tpl, id_col: nid, col: lab}, True
    for lab in ODD_LABELS:
        yield {**tpl, id_col: c.uid(), label_cols[0]: lab}, False
    yield {**tpl}, True  # duplicate id of the template row
    yield {**tpl, id_col: ""}, True
    yield {**tpl, id_col: "   "}, True
    if video:
        for name, is_bad in c.media_kinds():
            nid = c.uid()
            _place(c.media[name], c.raw / video.format(id=nid))
            yield {**tpl, id_col: nid}, is_bad


def corrupt(key: str, raw: Path, media: dict[str, Path]) -> Corpus:
    c = Corpus(raw, media)
    if key == "lsvq":
        for rel in ("LSVQ_whole_train.csv", "LSVQ_whole_test.csv", "LSVQ_whole_test_1080p.csv"):
            c.csv(rel, lambda t: _labels_rows(c, {**t, "is_valid": "1"}, "name", ("mos",), "videos/{id}.mp4"))
    elif key == "konvid":
        c.csv(
            "KoNViD_1k_attributes.csv",
            lambda t: _labels_rows(c, t, "flickr_id", ("MOS",), "KoNViD_1k_videos/{id}.mp4"),
        )
    elif key == "lgvq":

        def lgvq(t):
            yield from _labels_rows(c, t, "video_name", ("spatial", "temporal", "alignment"), "videos/{id}")
            yield {**t, "video_name": c.uid(), "prompt": ""}, True

        c.csv("LGVQ_MOS.csv", lgvq)
    elif key == "vidprom":

        def vidprom(t):
            for p in ("", " ", "\t\n"):
                yield {**t, "uuid": c.uid(), "prompt": p}, True
            yield {**t}, True
            yield {**t, "uuid": ""}, True
            for s in ('a b "q\'x$(id)"', "ünï cødé 视频", "x" * 5000):
                yield {**t, "uuid": c.uid(), "prompt": s}, False

        c.csv("VidProM_unique.csv", vidprom)
    elif key == "koniq":
        _corrupt_koniq(c)
    elif key == "livevqc":
        _corrupt_livevqc(c)
    elif key in ("monetbench", "visionreward"):
        rel = next(raw.glob("monetbench/test-*.parquet" if key == "monetbench" else "regression/train-*.parquet"))
        c.parquet(str(rel.relative_to(raw)), lambda t: _pair_rows(c, t, "internal_id", "standard_answer", True))
        if key == "visionreward":
            rel = next(raw.glob("train/train-*.parquet"))

            def vqa(t):
                for n in (0, 1, len(t["meta_result"]) + 1):
                    yield {**t, "internal_id": c.uid(), "meta_result": [1] * n, "meta_mask": [1] * n}, True
                yield {**t, "internal_id": c.uid(), "meta_result": [None] * len(t["meta_result"])}, True

            c.parquet(str(rel.relative_to(raw)), vqa)
    elif key == "genaibench":
        rel = next(raw.glob("video_generation/test_v1-*.parquet"))
        c.parquet(str(rel.relative_to(raw)), lambda t: _pair_rows(c, t, None, "vote_type", False))
    return c


def _pair_rows(c: Corpus, tpl: dict, id_col: str | None, label: str, keep_dirs: bool):
    v1, v2 = ("video1_path", "video2_path") if id_col else ("left_video", "right_video")
    ids = (lambda: {id_col: c.uid()}) if id_col else (lambda: {})
    for lab in [*BAD_PREFS, None] * 6:
        yield {**tpl, **ids(), label: lab}, True
    for col in (v1, v2):
        for empty in ("", None):
            yield {**tpl, **ids(), col: empty}, True
    if id_col:
        yield {**tpl}, True  # duplicate
        yield {**tpl, id_col: ""}, True
        yield {**tpl, id_col: None}, True
    for name, is_bad in c.media_kinds():
        rel = name if keep_dirs else Path(name).name
        _place(c.media[name], c.raw / "videos" / rel)
        yield {**tpl, **ids(), v2: rel}, is_bad


def _corrupt_koniq(c: Corpus) -> None:
    rel = "metas/train_koniq_7k.json"
    path = c.raw / rel
    items = json.loads(path.read_text())
    tpl = items[0]
    bad_values: list[Any] = [None, "", "nan", float("nan"), float("inf"), -1, 1e9, 10**400, True, [3], {"a": 1}]
    for v in [*bad_values, *BAD_LABELS]:
        nid = c.uid()
        items.append({**tpl, "id": nid, "gt_score": v})
        c.bad.add((rel, len(items) - 1))
    for v in ODD_LABELS:
        items.append({**tpl, "id": c.uid(), "gt_score": v})
        c.odd.add((rel, len(items) - 1))
    for rec in ("not a record", 5, None, {}, {"id": c.uid()}, {**tpl, "image": ""}, dict(tpl)):
        items.append(rec)
        c.bad.add((rel, len(items) - 1))
    for name, is_bad in c.media_kinds(image=True):
        nid = c.uid()
        fname = Path(name).name if "/" not in name else f"{nid}.jpg"
        _place(c.media[name], c.raw / "images" / fname) if not (c.raw / "images" / fname).exists() else None
        items.append({**tpl, "id": nid, "image": f"KONIQ/images/{fname}"})
        (c.bad if is_bad else c.odd).add((rel, len(items) - 1))
    text = json.dumps(items, ensure_ascii=False, allow_nan=True)
    path.write_text(text.replace('"gt_score": "1e400"', '"gt_score": 1e400', 1), encoding="utf-8")


def _corrupt_livevqc(c: Corpus) -> None:
    from scipy.io import loadmat, savemat

    path = c.raw / "data.mat"
    mat = loadmat(path)
    names = [str(np.asarray(v).ravel()[0]) for v in np.asarray(mat["video_list"], dtype=object).ravel()]
    mos = [float(x) for x in np.asarray(mat["mos"]).ravel()]
    for v in (np.nan, np.inf, -np.inf, -1.0, 1e9, 100.5, 1e308):
        names.append(f"{c.uid()}.mp4".replace("/", "_"))
        _place(c.media["ünï 视频.mp4"], c.raw / "Video" / names[-1])
        mos.append(v)
        c.bad.add(("data.mat", len(names) - 1))
    for n in (names[0], ""):  # duplicate, missing id
        names.append(n)
        mos.append(50.0)
        c.bad.add(("data.mat", len(names) - 1))
    for name, is_bad in c.media_kinds():
        names.append(f"{c.uid()}.mp4".replace("/", "_"))
        _place(c.media[name], c.raw / "Video" / names[-1])
        mos.append(50.0)
        (c.bad if is_bad else c.odd).add(("data.mat", len(names) - 1))
    cell = np.empty((len(names), 1), dtype=object)
    for i, n in enumerate(names):
        cell[i, 0] = n
    savemat(path, {"video_list": cell, "mos": np.asarray(mos, np.float64).reshape(-1, 1)}, format="5")


def _all_rows(key: str, raw: Path) -> set[tuple[str, int]]:
    """(annotation file, row) of every row in the native files, except documented skips (is_valid=0, all masked)."""
    keys: set[tuple[str, int]] = set()
    for path in sorted(raw.rglob("*")):
        rel = str(path.relative_to(raw))
        if path.suffix == ".csv":
            for i, r in enumerate(_read_csv(path)[1]):
                if r.get("is_valid", "1") not in ("0", "False"):
                    keys.add((rel, i))
        elif path.suffix == ".parquet":
            for i, r in enumerate(pl.read_parquet(path).to_dicts()):
                if (
                    r.get("meta_mask")
                    and len(r["meta_mask"]) == len(r["meta_result"] or [])
                    and not any(r["meta_mask"])
                ):
                    continue
                keys.add((rel, i))
        elif path.suffix == ".json" and path.parent.name == "metas":
            keys |= {(rel, i) for i in range(len(json.loads(path.read_text())))}
        elif path.name == "data.mat":
            from scipy.io import loadmat

            keys |= {(rel, i) for i in range(np.asarray(loadmat(path)["mos"]).size)}
    return keys


# ------------------------------------------------------------------------------------------------- tests
CASES: dict[str, int] = {}


@pytest.mark.parametrize("key", DATASET_KEYS)
def test_every_bad_row_is_quarantined_with_a_reason(key, generated, media, tmp_path):
    raw = shutil.copytree(generated[key], tmp_path / key)
    c = corrupt(key, raw, media)
    df, quarantine, _ = M.build(key, raw, SCALE, reader="pyav")  # never raises on bad rows or media
    assert len(c.bad) >= 5
    good = set(zip(df["source_file"].to_list(), df["source_row"].to_list(), strict=True))
    quarantined: dict[tuple[str, int], list[str]] = {}
    for q in quarantine:
        assert q["annotation_file"] and q["row"] is not None and q["reason"], q
        quarantined.setdefault((q["annotation_file"], q["row"]), []).append(q["reason"])
    missing = sorted(k for k in c.bad if k not in quarantined)
    assert not missing, f"bad rows not quarantined: {missing[:10]}"
    wrongly = sorted(k for k in quarantined if k not in c.bad | c.odd)
    assert not wrongly, f"good rows quarantined: {[(k, quarantined[k]) for k in wrongly[:5]]}"
    assert not (good & c.bad), "a bad row reached the manifest"
    total = _all_rows(key, raw)
    assert good | set(quarantined) == total, f"silently dropped: {sorted(total - good - set(quarantined))[:10]}"
    assert not good & set(quarantined) or key == "visionreward"  # a vqa row expands into several samples
    for q in quarantine:
        if q["media_file"]:
            assert Path(q["media_file"]).name in q["media_file"] and len(q["reason"]) > 3
    CASES[key] = len(c.bad) + len(c.odd)


MEDIA_CALLS = {
    **{f"read_frames[{b}]": (lambda p, b=b: read_frames(p, 4, backend=b)) for b in available_backends()},
    **{
        f"read_frames_resized[{b}]": (lambda p, b=b: read_frames(p, 2, backend=b, max_pixels=28 * 28 * 4))
        for b in available_backends()
    },
    **{f"probe[{b}]": (lambda p, b=b: probe(p, backend=b)) for b in available_backends()},
    "read_image": read_image,
    "read_image_resized": lambda p: read_image(p, max_pixels=28 * 28 * 4),
    "check_media[video]": lambda p: M.check_media(str(p), "video", "pyav"),
    "check_media[image]": lambda p: M.check_media(str(p), "image", "pyav"),
}
CERTAINLY_UNREADABLE = ("zero", "text", "garbage", "dir", "missing", "truncated_head")
ALL_MEDIA = (*BAD_MEDIA, *ODD_MEDIA, *BAD_IMAGES, *ODD_IMAGES)


@pytest.mark.parametrize("call", list(MEDIA_CALLS))
@pytest.mark.parametrize("name", ALL_MEDIA)
def test_media_readers_give_a_result_or_a_media_error_naming_the_file(name, call, media):
    path = media[name]
    try:
        out = MEDIA_CALLS[call](path)
    except MediaError as e:
        assert str(e).startswith(str(path)), e
        assert len(str(e)) > len(str(path)) + 3, e
        return
    if call.startswith("check_media"):
        assert out is None or (isinstance(out, str) and out), out
        assert out is not None or not name.startswith(CERTAINLY_UNREADABLE), f"{name} passed the media check"
        return
    if call.startswith("probe"):
        assert out["frames"] >= 1 and out["width"] > 0 and out["height"] > 0
    else:
        assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape[-1] == 3 and out.size > 0
    assert not name.startswith(CERTAINLY_UNREADABLE), f"{name} should not be readable"


# ---------------------------------------------------------------------------------- whole-file problems
FILE_CASES = {
    "lsvq": ("LSVQ_whole_train.csv", ("name", "mos")),
    "konvid": ("KoNViD_1k_attributes.csv", ("flickr_id", "MOS")),
    "lgvq": ("LGVQ_MOS.csv", ("prompt", "spatial", "temporal", "alignment")),  # video_name or model suffices
    "vidprom": ("VidProM_unique.csv", ("uuid", "prompt")),
}


@pytest.mark.parametrize(("key", "column"), [(k, col) for k, (_, cols) in FILE_CASES.items() for col in cols])
def test_missing_column_names_the_file_and_the_column(key, column, generated, tmp_path):
    raw = shutil.copytree(generated[key], tmp_path / key)
    rel = FILE_CASES[key][0]
    header, rows = _read_csv(raw / rel)
    _write_csv(
        raw / rel, [h for h in header if h != column], [{k: v for k, v in r.items() if k != column} for r in rows]
    )
    with pytest.raises(ParseError) as e:
        PARSERS[key](raw, SCALE)
    assert rel in str(e.value) and repr(column) in str(e.value)


def test_lgvq_without_any_video_name_column_names_the_alternatives(generated, tmp_path):
    raw = shutil.copytree(generated["lgvq"], tmp_path / "lgvq")
    header, rows = _read_csv(raw / "LGVQ_MOS.csv")
    drop = {"video_name", "model"}
    _write_csv(
        raw / "LGVQ_MOS.csv",
        [h for h in header if h not in drop],
        [{k: v for k, v in r.items() if k not in drop} for r in rows],
    )
    with pytest.raises(ParseError, match=r"LGVQ_MOS.csv: missing column\(s\) \['video_name' or 'name' or 'model'"):
        PARSERS["lgvq"](raw, SCALE)


PARQUET_CASES = {
    "monetbench": ("monetbench/test-*.parquet", ("standard_answer", "video1_path", "video2_path")),
    "genaibench": ("video_generation/test_v1-*.parquet", ("prompt", "left_video", "right_video", "vote_type")),
    "visionreward": ("train/train-*.parquet", ("internal_id", "video_path", "prompt", "meta_result", "meta_mask")),
}


@pytest.mark.parametrize(("key", "column"), [(k, col) for k, (_, cols) in PARQUET_CASES.items() for col in cols])
def test_missing_parquet_column_names_the_file_and_the_column(key, column, generated, tmp_path):
    raw = shutil.copytree(generated[key], tmp_path / key)
    path = next(raw.glob(PARQUET_CASES[key][0]))
    pl.read_parquet(path).drop(column).write_parquet(path)
    with pytest.raises(ParseError) as e:
        PARSERS[key](raw, SCALE)
    assert path.name in str(e.value) and repr(column) in str(e.value)


UNREADABLE = {
    "lsvq": "LSVQ_whole_test.csv",
    "konvid": "KoNViD_1k_attributes.csv",
    "lgvq": "LGVQ_MOS.csv",
    "vidprom": "VidProM_unique.csv",
    "koniq": "metas/test_koniq_2k.json",
    "livevqc": "data.mat",
    "monetbench": "monetbench/test-*.parquet",
    "genaibench": "video_generation/test_v1-*.parquet",
    "visionreward": "regression/train-*.parquet",
}
GARBAGE = {
    "binary": b"\xff\xfe\x00\x81" * 64,
    "truncated": None,
    "empty": b"",
    "latin1": "name,mos,flickr_id,MOS\ncaf\xe9,50,x,3\n".encode("latin-1"),
    "json_deep": b"[" * 100_000,
    "directory": None,
}


@pytest.mark.parametrize("kind", list(GARBAGE))
@pytest.mark.parametrize("key", list(UNREADABLE))
def test_unreadable_annotation_file_is_an_error_naming_the_file(key, kind, generated, tmp_path):
    raw = shutil.copytree(generated[key], tmp_path / key)
    path = next(raw.glob(UNREADABLE[key]))
    data = GARBAGE[kind]
    if kind == "truncated":
        data = path.read_bytes()[: path.stat().st_size // 2]
    if kind == "directory":
        path.unlink()
        path.mkdir()
    else:
        path.write_bytes(data)
    try:
        parsed = PARSERS[key](raw, SCALE)
    except ParseError as e:
        assert path.name in str(e), e
        return
    # A damaged file that still parses (e.g. a CSV cut at a row boundary) must not lose rows silently.
    assert parsed.rows or parsed.bad or kind in ("truncated", "empty"), parsed


def test_corpus_size():
    """Runs last in the module: the generated corpus holds >= 1,000 bad inputs (rows + direct media reads)."""
    if len(CASES) < len(DATASET_KEYS):
        pytest.skip("needs the whole module")
    assert sum(CASES.values()) + len(ALL_MEDIA) * len(MEDIA_CALLS) >= 1000, (sum(CASES.values()), CASES)
