"""Materialise one dataset's native files in its raw directory, then write a stamp listing them.

    python -m vqinsight.data.fetch --dataset koniq --raw-dir resources/raw/koniq --spec '<json>' --stamp STAMP

The spec (from config `datasets.<key>`) picks the source:
- `download`: fetch each resource (resumable, sha256-verified), extract archives, then fetch media listed by URL
  inside annotation files (GenAI-Bench);
- `synthetic`: write the demo dataset in its native format (src/vqinsight/data/synthetic);
- `local`: the files were placed by hand; only check they are there.
In every case the native files the parser needs must exist afterwards, or the command fails saying which are
missing and where they go.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path, PurePosixPath
from typing import Any

from ..progress import progress
from ..provenance import atomic_write_json
from .download import DownloadError, extract, fetch_url
from .preflight import check_native
from .registry import get as get_dataset
from .synthetic import generate_dataset

log = logging.getLogger("vqinsight.fetch")


def _download(raw: Path, spec: dict[str, Any]) -> list[str]:
    done = []
    mirrors, max_bytes = spec.get("mirrors") or {}, spec.get("max_bytes")
    for res in spec.get("resources") or []:
        url = res["url"]
        name = res.get("dest") or PurePosixPath(url.split("?")[0]).name
        if res.get("extract"):
            archive = raw / ".archives" / PurePosixPath(url.split("?")[0]).name
            stamp = archive.with_name(archive.name + ".extracted")
            if not stamp.exists():
                fetch_url(url, archive, sha256=res.get("sha256"), max_bytes=max_bytes, mirrors=mirrors)
                n = extract(archive, raw / (res.get("dest") or "."), int(res.get("strip_components", 0)))
                stamp.write_text(f"{n}\n")
                if not res.get("keep_archive", False):
                    archive.unlink()
            done.append(str(archive.name))
        else:
            fetch_url(url, raw / name, sha256=res.get("sha256"), max_bytes=max_bytes, mirrors=mirrors)
            done.append(name)
    media = spec.get("media_urls")
    if media:
        done += _download_media(raw, media, mirrors, max_bytes)
    return done


def _download_media(raw: Path, media: dict[str, Any], mirrors: dict[str, str], max_bytes: int | None) -> list[str]:
    """Fetch every URL in media['columns'] of the annotation parquet files into media['dest'], `workers` at a time
    (default 8), with one progress bar over the files. A rerun skips finished files and resumes partial ones.

    The file name is the value of the matching `name_columns` entry when given (a relative path, as the parser
    expects it), else the URL's basename. Hub page links (`/blob/`) are fetched as their files.
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    import polars as pl

    cols, names = list(media["columns"]), list(media.get("name_columns") or [])
    if names and len(names) != len(cols):
        raise ValueError(f"media_urls.name_columns must match columns one to one: {names} vs {cols}")
    jobs: dict[str, str] = {}
    for f in sorted(raw.glob(media["file"])):
        df = pl.read_parquet(f, columns=sorted(set(cols + names)))
        for i, c in enumerate(cols):
            named = df[names[i]].to_list() if names else [None] * df.height
            for url, name in zip(df[c].to_list(), named, strict=True):
                if url:
                    jobs[url] = str(name) if name else PurePosixPath(url.split("?")[0]).name
    failed, todo = [], []
    for url, name in sorted(jobs.items()):
        if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
            failed.append(f"{url}: unsafe file name {name!r}")
        else:
            todo.append((url, raw / media["dest"] / name))
    workers = int(media.get("workers", 8))
    with (
        ThreadPoolExecutor(max(1, workers)) as ex,
        progress(total=len(todo), desc="media", unit="file") as bar,
    ):
        futures = {
            ex.submit(fetch_url, url, dest, max_bytes=max_bytes, mirrors=mirrors, progress=False): url
            for url, dest in todo
        }
        for fut in as_completed(futures):
            try:
                fut.result()
            except DownloadError as e:
                failed.append(str(e))
            bar.update(1)
    if failed:
        # Missing media are reported per row by the manifest's quarantine; a dead link must not stop the others.
        log.warning("%d of %d media URL(s) could not be fetched; first: %s", len(failed), len(jobs), sorted(failed)[0])
    return [f"{len(jobs) - len(failed)} media files"]


def _synthetic(key: str, raw: Path, spec: dict[str, Any]) -> list[str]:

    syn = dict(spec.get("synthetic") or {})
    summary = generate_dataset(key, raw, **syn)
    return sorted(str(f) for f in summary.get("files", []))


def fetch(key: str, raw: Path, spec: dict[str, Any]) -> list[str]:
    source = spec.get("source", "download")
    raw.mkdir(parents=True, exist_ok=True)
    if source == "download":
        done = _download(raw, spec)
    elif source == "synthetic":
        done = _synthetic(key, raw, spec)
    elif source == "local":
        done = []
    else:
        raise ValueError(f"datasets.{key}.source: unknown source {source!r} (download, synthetic, local)")
    missing = check_native(key, raw)
    if missing:
        info = get_dataset(key)
        raise DownloadError(
            f"{key}: after '{source}', these native files are missing under {raw}: {missing}. "
            f"{info.name} is published at {info.published_at}; place the files there by hand "
            "(layout: docs/DATASETS.md) and rerun."
        )
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--raw-dir", required=True, type=Path)
    ap.add_argument("--spec", required=True, help="JSON object: the dataset's config entry")
    ap.add_argument("--stamp", required=True, type=Path)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        spec = json.loads(a.spec)
        done = fetch(a.dataset, a.raw_dir, spec)
    except (DownloadError, KeyError, ValueError) as e:
        log.error("%s", e)
        return 1
    files = sorted(
        str(p.relative_to(a.raw_dir)) for p in a.raw_dir.rglob("*") if p.is_file() and not p.name.endswith(".part")
    )
    atomic_write_json(
        a.stamp,
        {
            "dataset": a.dataset,
            "source": spec.get("source", "download"),
            "fetched": done,
            "n_files": len(files),
            "files_sample": files[:20],
        },
    )
    log.info("%s: %d files under %s", a.dataset, len(files), a.raw_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
