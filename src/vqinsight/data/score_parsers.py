"""Parsers of the score datasets (KonIQ, LSVQ, KoNViD-1k, LIVE-VQC, LGVQ), one per dataset.

Each accepts every published release of its labels (docs/DATASETS.md says which release is which): for a split, the
first annotation file of its candidate list that exists is read, and `Parsed.sources` records which one it was.
Media names that differ between releases are resolved to the file that exists (`rows.resolve_media`).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath
from typing import Any

from .registry import REGISTRY
from .rows import (
    LabelError,
    Parsed,
    ParseError,
    RowSink,
    Scaler,
    first_existing,
    need,
    pick_column,
    read_csv_header,
    read_json_list,
    read_label_list,
    require_columns,
    resolve_media,
    score_rec,
    stem_of,
    to_float,
)

DIMENSIONS = ("spatial", "temporal", "alignment")
ZERO_100 = (0.0, 100.0)  # MOS_zscore lists of KonIQ (Q-Align, FAST-VQA), LIVE-VQC, LSVQ, LGVQ
KONIQ_TARGETS = ("gt_score", "gt_score_norm")
LSVQ_SPLITS = ("train", "test", "test_1080p")


def _split_source(root: Path, dataset: str, split: str, names: tuple[str, ...]) -> Path:
    path = first_existing(root, names)
    if path is None:
        alt = f" (nor the other {dataset} {split} releases: {', '.join(names[1:])})" if len(names) > 1 else ""
        raise ParseError(f"{root / names[0]}: annotation file not found{alt}")
    return path


# --------------------------------------------------------------------------- KonIQ
# split -> (file, format) in order of preference: DeQA-Score metas (what Q-Insight trains on), Q-Align's lists,
# FAST-VQA's test list. DeQA carries the 1-5 MOS (and gt_score_norm); the others the 0-100 MOS_zscore.
KONIQ_SOURCES: dict[str, tuple[tuple[str, str], ...]] = {
    "train": (
        ("metas/train_koniq_7k.json", "deqa"),
        ("train_koniq.json", "qalign"),
        ("training_labels.txt", "fastvqa"),
    ),
    "test": (("metas/test_koniq_2k.json", "deqa"), ("test_koniq.json", "qalign"), ("test_labels.txt", "fastvqa")),
}


def _deqa_norm(x: float, lo: float, hi: float) -> float:
    """DeQA-Score's gt_score_norm: 4 (MOS - min) / (max - min) + 1 over the whole set."""
    return 4.0 * (x - lo) / (hi - lo) + 1.0 if hi > lo else 3.0


def parse_koniq(root: Path, scale: tuple[float, float], target: str = "gt_score") -> Parsed:
    """`target`: the label trained on. `gt_score` is the MOS; `gt_score_norm` is DeQA-Score's min-max normalised
    MOS, which the official Q-Insight code trains on (computed the same way for lists that do not carry it)."""
    if target not in KONIQ_TARGETS:
        raise ValueError(f"koniq: target must be one of {KONIQ_TARGETS}, got {target!r}")
    sink = RowSink("koniq", root)
    items: list[tuple[Path, int, str, str, list[str], Any, Any, str]] = []
    for split, cands in KONIQ_SOURCES.items():
        path = _split_source(root, "KonIQ", split, tuple(n for n, _ in cands))
        fmt = dict(cands)[str(path.relative_to(root))]
        sink.source(path)
        if fmt == "deqa":
            for i, it in enumerate(read_json_list(path)):
                it = it if isinstance(it, dict) else {}
                image = str(it.get("image") or "")
                nid = str(it.get("id") or PurePosixPath(image).stem)
                items.append((path, i, split, nid, [image], it.get("gt_score"), it.get("gt_score_norm"), fmt))
        else:
            for lab in read_label_list(path):
                items.append((path, lab.row, split, PurePosixPath(lab.name).name, [lab.name], lab.mos, None, fmt))
    # One normalisation over every record that does not carry DeQA's gt_score_norm (per native scale).
    lims: dict[str, tuple[float, float]] = {}
    for fmt in {it[7] for it in items}:
        vals = []
        for it in items:
            if it[7] == fmt:
                try:
                    vals.append(to_float(it[5]))
                except LabelError:
                    pass
        lims[fmt] = (min(vals), max(vals)) if vals else (0.0, 1.0)
    for path, i, split, nid, names, raw, norm, fmt in items:
        sc = Scaler(REGISTRY["koniq"].raw_range if fmt == "deqa" else ZERO_100, scale)
        paths = [str(root / "images" / PurePosixPath(n).name) if n else "" for n in names]

        def build(raw=raw, norm=norm, paths=paths, sc=sc, fmt=fmt) -> dict:
            need(paths, "image path")
            x = to_float(raw, "MOS")
            if target == "gt_score":
                return dict(task="image_score", media_type="image", media=paths, raw_score=x, gt_score=sc(x))
            sc(x)  # the MOS itself must be in its native range
            y = to_float(norm, "gt_score_norm") if fmt == "deqa" else _deqa_norm(x, *lims[fmt])
            g = Scaler((1.0, 5.0), scale)(y, "gt_score_norm")
            return dict(task="image_score", media_type="image", media=paths, raw_score=x, gt_score=g)

        sink.add(path, i, split, nid, build)
    return sink.out


# --------------------------------------------------------------------------- LSVQ
# split -> files in order of preference. The evaluation splits read the benchmark lists the field evaluates on
# (FAST-VQA / DOVER; Q-Align's have the same rows) when present: 7,186 and 3,573 videos. The native CSVs hold 7,220
# and 3,561 (twelve of the 1080p benchmark videos are not in it).
LSVQ_SOURCES: dict[str, tuple[str, ...]] = {
    "train": ("LSVQ_whole_train.csv", "train_labels.txt"),
    "test": ("labels_test.txt", "LSVQ_whole_test.csv"),
    "test_1080p": ("labels_1080p.txt", "LSVQ_whole_test_1080p.csv"),
}


def parse_lsvq(
    root: Path, scale: tuple[float, float], skip_invalid: tuple[str, ...] | list[str] = ("train",)
) -> Parsed:
    """`skip_invalid`: splits whose native-CSV rows with is_valid = False/0 are skipped (counted). Never set it for
    an evaluation split: the benchmark row sets keep those rows (2,856 of the 3,561 1080p rows are is_valid=False)."""
    bad_split = set(skip_invalid) - set(LSVQ_SPLITS)
    if bad_split:
        raise ValueError(f"lsvq: skip_invalid names unknown split(s) {sorted(bad_split)}; known {LSVQ_SPLITS}")
    sink, sc = RowSink("lsvq", root), Scaler(REGISTRY["lsvq"].raw_range, scale)

    def add(path: Path, i: int, split: str, name: str, mos: Any) -> None:
        n = stem_of(name.strip())
        sink.add(
            path, i, split, n, lambda: score_rec("video_score", "video", [str(root / "videos" / f"{n}.mp4")], mos, sc)
        )

    for split, names in LSVQ_SOURCES.items():
        path = _split_source(root, "LSVQ", split, names)
        sink.source(path)
        if path.suffix == ".csv":
            header, rows = read_csv_header(path)
            require_columns(path, header, {"name": ("name",), "mos": ("mos",)})
            for i, r in enumerate(rows):
                if split in skip_invalid and str(r.get("is_valid", "1")).strip().lower() in ("0", "false"):
                    sink.skip(f"is_valid=0 ({split})" if split != "train" else "is_valid=0")
                    continue
                add(path, i, split, r.get("name") or "", r.get("mos"))
        else:
            for lab in read_label_list(path):
                add(path, lab.row, split, lab.name, lab.mos)
    return sink.out


# --------------------------------------------------------------------------- KoNViD-1k
KONVID_SOURCES = ("KoNViD_1k_attributes.csv", "labels.txt", "konvid.json")  # official, FAST-VQA, Q-Align
KONVID_DIR = "KoNViD_1k_videos"


def parse_konvid(root: Path, scale: tuple[float, float]) -> Parsed:
    """Videos are `KoNViD_1k_videos/<flickr_id>.mp4` (the official zip, FAST-VQA, Q-Align); the metadata CSV's
    `file_name` (`<id>_original_centercrop_960x540_8s.mp4` / `<id>_cut_centercrop_...`) is used where that file is
    the one present."""
    sink, sc = RowSink("konvid", root), Scaler(REGISTRY["konvid"].raw_range, scale)
    path = _split_source(root, "KoNViD-1k", "test", KONVID_SOURCES)
    sink.source(path)
    if path.suffix == ".csv":
        header, rows = read_csv_header(path)
        require_columns(path, header, {"flickr_id": ("flickr_id",), "MOS": ("MOS",)})
        items = [
            (i, (r.get("flickr_id") or "").strip(), (r.get("file_name") or "").strip(), r.get("MOS"))
            for i, r in enumerate(rows)
        ]
    else:
        items = [(lab.row, PurePosixPath(stem_of(lab.name)).name, "", lab.mos) for lab in read_label_list(path)]
    for i, fid, fname, mos in items:
        cands = [(KONVID_DIR, f"{fid}.mp4")] + ([(KONVID_DIR, fname)] if fname else [])
        build = lambda c=cands, m=mos: score_rec("video_score", "video", [resolve_media(root, c)], m, sc)  # noqa: E731
        sink.add(path, i, "test", fid, build)
    return sink.out


# --------------------------------------------------------------------------- LIVE-VQC
LIVEVQC_SOURCES = ("data.mat", "labels.txt", "LIVE_VQC_metadata.csv")  # official, FAST-VQA, VIDEVAL
_NEW = re.compile(r"NEW(\.[A-Za-z0-9]+)$")


def _livevqc_names(path: Path) -> list[tuple[int, str, Any]]:
    if path.suffix == ".mat":
        import numpy as np
        from scipy.io import loadmat

        if not path.is_file():
            raise ParseError(f"{path}: annotation file not found")
        try:
            mat = loadmat(path)
        except Exception as e:  # noqa: BLE001
            raise ParseError(f"{path}: cannot read MATLAB file: {e}") from None
        if "video_list" not in mat or "mos" not in mat:
            found = sorted(k for k in mat if not k.startswith("__"))
            raise ParseError(f"{path}: missing variable(s) video_list/mos; found {found}")
        cells = [np.asarray(v).ravel() for v in np.asarray(mat["video_list"], dtype=object).ravel()]
        names = [str(c[0]) if c.size else "" for c in cells]
        mos = np.asarray(mat["mos"], dtype=object).ravel()
        if len(names) != len(mos):
            raise ParseError(f"{path}: video_list has {len(names)} entries but mos has {len(mos)}")
        return [(i, n.strip(), m) for i, (n, m) in enumerate(zip(names, mos, strict=True))]
    if path.suffix == ".csv":
        header, rows = read_csv_header(path)
        cols = require_columns(path, header, {"name": ("File", "file", "name"), "mos": ("MOS", "mos")})
        return [(i, (r.get(cols["name"]) or "").strip(), r.get(cols["mos"])) for i, r in enumerate(rows)]
    return [(lab.row, PurePosixPath(lab.name).name, lab.mos) for lab in read_label_list(path)]


def parse_livevqc(root: Path, scale: tuple[float, float]) -> Parsed:
    """Nine videos are `A012.mp4` in data.mat / FAST-VQA and `A012NEW.mp4` in VIDEVAL's metadata: the id drops the
    `NEW`, the media path is whichever of the two names exists under `Video/`."""
    sink, sc = RowSink("livevqc", root), Scaler(REGISTRY["livevqc"].raw_range, scale)
    path = _split_source(root, "LIVE-VQC", "test", LIVEVQC_SOURCES)
    sink.source(path)
    for i, name, mos in _livevqc_names(path):
        canon = _NEW.sub(r"\1", name)
        p = PurePosixPath(canon)
        cands = [("Video", name)] + [("Video", v) for v in (canon, f"{p.stem}NEW{p.suffix}") if v != name]
        build = lambda c=cands, m=mos: score_rec("video_score", "video", [resolve_media(root, c)], m, sc)  # noqa: E731
        sink.add(path, i, "test", canon, build)
    return sink.out


# --------------------------------------------------------------------------- LGVQ
LGVQ_SOURCES = ("LGVQ.csv", "LGVQ_MOS.csv")
LGVQ_COLUMNS = {
    "prompt": ("prompt",),
    "spatial": ("spatial", "spatial_quality"),
    "temporal": ("temporal", "temporal_quality"),
    "alignment": ("alignment", "alignment_quality"),
}


def lgvq_split(prompt: str, test_fraction: float = 0.2) -> str:
    h = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big") / 2**64
    return "test" if h < test_fraction else "train"


def parse_lgvq(root: Path, scale: tuple[float, float]) -> Parsed:
    """Videos are `videos/<model>/<prompt>.mp4` (the authors' layout, read by the earlier third-party loader), or
    `videos/<name>[.mp4]` where a name column exists and that file is present (third-party renumbering 0000-2807)."""
    sink, sc = RowSink("lgvq", root), Scaler(REGISTRY["lgvq"].raw_range, scale)
    path = _split_source(root, "LGVQ", "label", LGVQ_SOURCES)
    sink.source(path)
    header, rows = read_csv_header(path)
    cols = require_columns(path, header, LGVQ_COLUMNS)
    name_col, model_col = pick_column(header, ("video_name", "name")), pick_column(header, ("model", "code"))
    if name_col is None and model_col is None:
        raise ParseError(f"{path}: missing column(s) ['video_name' or 'name' or 'model' or 'code']; found {header}")
    for i, r in enumerate(rows):
        name = (r.get(name_col) or "").strip() if name_col else ""
        model, prompt = ((r.get(model_col) or "").strip() if model_col else ""), (r.get(cols["prompt"]) or "").strip()
        split = (r.get("split") or "").strip() or lgvq_split(prompt)
        named = [("videos", name if PurePosixPath(name).suffix else f"{name}.mp4")] if name else []
        authors = [("videos", model, f"{prompt}.mp4")] if model and prompt else []
        # A name with an extension is the file's own name; a bare number is the third-party renumbering, so the
        # authors' layout is the one reported missing when neither file is there.
        cands = named + authors if name and PurePosixPath(name).suffix else authors + named
        nid = name or (f"{model}/{prompt}" if model and prompt else "")

        def build(r=r, prompt=prompt, cands=cands) -> dict:
            if not prompt:
                raise LabelError("missing prompt")
            if not cands:
                raise LabelError("missing video name")
            raw = {d: to_float(r.get(cols[d]), f"{d} MOS") for d in DIMENSIONS}
            return dict(
                task="multidim_score",
                media_type="video",
                media=[resolve_media(root, cands)],
                prompt=prompt,
                raw_scores=raw,
                gt_scores={d: sc(v, f"{d} MOS") for d, v in raw.items()},
            )

        sink.add(path, i, split, nid, build)
    return sink.out
