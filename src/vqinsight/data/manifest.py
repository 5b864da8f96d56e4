"""Build one dataset's manifest (parquet, the one schema of docs/DATASETS.md) from its native files.

    python -m vqinsight.data.manifest --dataset koniq --raw-dir results/demo/raw/koniq \\
        --out results/demo/manifests/koniq.parquet --quarantine results/demo/quarantine/koniq.csv

Every annotation row and media file is checked. Rejected rows go to the quarantine report (annotation file, row,
media file, reason). With `--on-bad-input fail` (default) the command then exits non-zero naming the report; with
`skip` it writes the manifest without them and logs how many were dropped. Nothing is dropped silently.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl

from ..provenance import atomic_write_bytes, atomic_write_text, write_meta
from .parsers import DIMENSIONS, ParseError, parse
from .registry import get as get_dataset

log = logging.getLogger("vqinsight.manifest")

_DIMS = pl.Struct({d: pl.Float64 for d in DIMENSIONS})
SCHEMA: dict[str, pl.DataType] = {
    "sample_id": pl.String,
    "dataset": pl.String,
    "split": pl.String,
    "task": pl.String,
    "media_type": pl.String,
    "media": pl.List(pl.String),
    "prompt": pl.String,
    "question": pl.String,
    "gt_score": pl.Float64,
    "raw_score": pl.Float64,
    "gt_scores": _DIMS,
    "raw_scores": _DIMS,
    "gt_choice": pl.String,
    "preference": pl.Int8,
    "raw_label": pl.String,
    "source_file": pl.String,
    "source_row": pl.Int64,
}
TASK_MEDIA = {
    "image_score": ("image", 1),
    "video_score": ("video", 1),
    "multidim_score": ("video", 1),
    "comparison": ("video", 2),
    "vqa": ("video", 1),
    "prompt": ("none", 0),
}
QUARANTINE_COLUMNS = ("sample_id", "annotation_file", "row", "media_file", "reason")


class ManifestError(ValueError):
    """A manifest that violates the schema; the message names the column and the offending sample ids."""


def check_media(path: str, media_type: str, reader: str) -> str | None:
    """Return None if the file is usable, else the reason in words (missing, empty, undecodable, ...)."""
    from ..video import MediaError, read_frames, read_image

    p = Path(path)
    if not p.exists():
        return "media file not found"
    if p.is_dir():
        return "media path is a directory"
    if p.stat().st_size == 0:
        return "empty media file (0 bytes)"
    try:
        if media_type == "image":
            read_image(p)
        else:
            frames = read_frames(p, 2, backend=reader)  # first and last frame: catches truncated files
            if frames.shape[0] != 2:
                return f"decoded {frames.shape[0]} frames instead of 2"
    except MediaError as e:
        return str(e).removeprefix(f"{p}: ").removeprefix(f"{path}: ") or "cannot decode"
    except Exception as e:  # noqa: BLE001 - any decoder failure quarantines the file, it never crashes the rule
        return f"cannot decode: {type(e).__name__}: {e}"
    return None


def _check_all(items: list[tuple[str, str]], reader: str, workers: int) -> dict[str, str | None]:
    from ..progress import progress

    args = [(p, t, reader) for p, t in items]
    if workers <= 1 or len(args) < 8:
        results = [check_media(*a) for a in progress(args, desc="check media", unit="file")]
    else:
        with ProcessPoolExecutor(workers) as ex:
            it = ex.map(check_media, *zip(*args, strict=True), chunksize=8)
            results = list(progress(it, total=len(args), desc="check media", unit="file"))
    return dict(zip((p for p, _ in items), results, strict=True))


def validate_manifest(df: pl.DataFrame, scale: tuple[float, float] | None = None, where: str = "manifest") -> None:
    """Schema check: columns and types, unique ids, task vocabulary, media arity, labels present and in range."""
    missing = [c for c in SCHEMA if c not in df.columns]
    if missing:
        raise ManifestError(f"{where}: missing column(s) {missing}")
    wrong = {c: str(df.schema[c]) for c, t in SCHEMA.items() if df.schema[c] != t}
    if wrong:
        raise ManifestError(f"{where}: wrong column type(s) {wrong}")

    def fail(cond: pl.Expr, what: str) -> None:
        bad = df.filter(cond)["sample_id"].head(5).to_list()
        if bad:
            raise ManifestError(f"{where}: {what}: {bad}")

    dup = df.filter(pl.col("sample_id").is_duplicated())["sample_id"].unique().head(5).to_list()
    if dup:
        raise ManifestError(f"{where}: duplicate sample_id: {dup}")
    fail(~pl.col("task").is_in(list(TASK_MEDIA)), f"task not in {sorted(TASK_MEDIA)}")
    for task, (mtype, n) in TASK_MEDIA.items():
        is_t = pl.col("task") == task
        fail(
            is_t & ((pl.col("media_type") != mtype) | (pl.col("media").list.len() != n)),
            f"{task} rows need media_type={mtype} and {n} media path(s)",
        )
    fail(pl.col("task").is_in(["image_score", "video_score"]) & pl.col("gt_score").is_null(), "score row without gt")
    fail((pl.col("task") == "multidim_score") & pl.col("gt_scores").is_null(), "multidim row without gt_scores")
    fail(
        (pl.col("task") == "comparison") & (~pl.col("preference").is_in([-1, 0, 1]) | pl.col("preference").is_null()),
        "comparison row without preference in {-1,0,1}",
    )
    fail((pl.col("task") == "comparison") & ~pl.col("gt_choice").is_in(["A", "B", "tie"]), "bad comparison gt_choice")
    fail((pl.col("task") == "vqa") & ~pl.col("gt_choice").is_in(["yes", "no"]), "vqa row without yes/no gt_choice")
    if scale is not None:
        lo, hi = scale
        fail(pl.col("gt_score").is_not_null() & ~pl.col("gt_score").is_between(lo, hi), f"gt_score outside {scale}")
        for d in DIMENSIONS:
            g = pl.col("gt_scores").struct.field(d)
            fail(pl.col("gt_scores").is_not_null() & ~g.is_between(lo, hi), f"gt_scores.{d} outside {scale}")


def load_manifest(path: str | Path, scale: tuple[float, float] | None = None) -> pl.DataFrame:
    """Read and validate a manifest; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found (run the manifest rule first)")
    df = pl.read_parquet(path)
    validate_manifest(df, scale, where=str(path))
    return df


def to_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    df = pl.DataFrame(rows, schema=SCHEMA, orient="row") if rows else pl.DataFrame(schema=SCHEMA)
    return df.sort("sample_id")


def quarantine_csv(entries: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=QUARANTINE_COLUMNS, lineterminator="\n")
    w.writeheader()
    for e in entries:
        w.writerow({k: e.get(k) for k in QUARANTINE_COLUMNS})
    return buf.getvalue()


def build(
    dataset: str,
    raw_dir: Path,
    scale: tuple[float, float],
    reader: str = "decord",
    workers: int = 1,
    check: bool = True,
    options: dict[str, Any] | None = None,
    sources: list[str] | None = None,
) -> tuple[pl.DataFrame, list[dict[str, Any]], dict[str, int]]:
    """Parse (with the dataset's parse `options`), check media, and return (manifest, quarantine entries, skipped
    counts). The annotation files read (one per split where releases differ) are appended to `sources`."""
    get_dataset(dataset)
    parsed = parse(dataset, raw_dir, scale, options)
    if sources is not None:
        sources.extend(parsed.sources)
    quarantine = [
        {"sample_id": b.sample_id, "annotation_file": b.file, "row": b.row, "media_file": None, "reason": b.reason}
        for b in parsed.bad
    ]
    rows = parsed.rows
    if check:
        items = sorted({(m, r["media_type"]) for r in rows for m in r["media"]})
        status = _check_all(items, reader, workers)
        keep = []
        for r in rows:
            bad = [(m, status[m]) for m in r["media"] if status[m] is not None]
            if bad:
                quarantine += [
                    {
                        "sample_id": r["sample_id"],
                        "annotation_file": r["source_file"],
                        "row": r["source_row"],
                        "media_file": m,
                        "reason": why,
                    }
                    for m, why in bad
                ]
            else:
                keep.append(r)
        rows = keep
    quarantine.sort(
        key=lambda e: (str(e["annotation_file"]), e["row"] if e["row"] is not None else -1, str(e["media_file"]))
    )
    df = to_frame(rows)
    validate_manifest(df, scale, where=f"{dataset} manifest")
    return df, quarantine, parsed.skipped


def _summary(df: pl.DataFrame) -> dict[str, int]:
    return {f"{s}/{t}": n for (s, t), n in sorted(Counter(zip(df["split"], df["task"], strict=True)).items())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--raw-dir", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--quarantine", required=True, type=Path)
    ap.add_argument("--meta", type=Path, help="provenance JSON (default: <out>.meta.json)")
    ap.add_argument("--scale", nargs=2, type=float, default=(1.0, 5.0), metavar=("LO", "HI"))
    ap.add_argument("--on-bad-input", choices=("fail", "skip"), default="fail")
    ap.add_argument("--reader", choices=("decord", "pyav"), default="decord")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--no-media-check", action="store_true")
    ap.add_argument("--options", default="{}", help="JSON object: parse options (config datasets.<key>.parse)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scale = (a.scale[0], a.scale[1])
    if not (math.isfinite(scale[0]) and math.isfinite(scale[1]) and scale[0] < scale[1]):
        ap.error(f"--scale must be increasing finite numbers, got {scale}")
    try:
        options = json.loads(a.options)
        if not isinstance(options, dict):
            raise ValueError(f"--options must be a JSON object, got {a.options!r}")
        sources: list[str] = []
        df, quarantine, skipped = build(
            a.dataset, a.raw_dir, scale, a.reader, a.workers, not a.no_media_check, options, sources
        )
    except (ParseError, KeyError, ValueError) as e:
        log.error("%s", e)
        return 2
    atomic_write_text(a.quarantine, quarantine_csv(quarantine))
    log.info("%s: read %s", a.dataset, ", ".join(sources))
    for reason, n in skipped.items():
        log.info("%s: skipped %d row(s) by design: %s", a.dataset, n, reason)
    if quarantine:
        shown = "\n".join(
            f"  {e['annotation_file']} row {e['row']} {e['media_file'] or ''}: {e['reason']}" for e in quarantine[:10]
        )
        more = f"\n  ... and {len(quarantine) - 10} more" if len(quarantine) > 10 else ""
        msg = f"{a.dataset}: {len(quarantine)} bad input(s), report {a.quarantine}:\n{shown}{more}"
        if a.on_bad_input == "fail":
            log.error("%s\nFix or remove them, or set data.on_bad_input: skip to drop them (counted).", msg)
            return 1
        log.warning("%s\nDropped because data.on_bad_input = skip.", msg)
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", statistics=False)
    atomic_write_bytes(a.out, buf.getvalue())
    config = {
        "dataset": a.dataset,
        "raw_dir": str(a.raw_dir),
        "scale": list(scale),
        "on_bad_input": a.on_bad_input,
        "reader": a.reader,
        "media_check": not a.no_media_check,
        "options": options,
    }
    write_meta(
        a.meta or a.out.with_suffix(".meta.json"),
        config,
        rows=df.height,
        quarantined=len(quarantine),
        skipped=skipped,
        sources=sources,
        counts=_summary(df),
    )
    log.info("%s: %d rows -> %s (%s)", a.dataset, df.height, a.out, _summary(df))
    return 0


if __name__ == "__main__":
    sys.exit(main())
