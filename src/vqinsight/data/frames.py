"""Warm the on-disk frame cache for every video of a manifest, so training decodes each video once, not per epoch.

    python -m vqinsight.data.frames --manifest results/demo/manifests/lsvq.parquet \\
        --cache-dir results/demo/frames/cache --nframes 8 --max-pixels 4704 --out results/demo/frames/lsvq.json

The index written to --out maps each video to its cached `.npy` (uint8, T×H×W×3) and records the sampling
parameters; readers use `vqinsight.video.FrameCache` with the same parameters and hit the cache.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..provenance import atomic_write_json
from ..video import FrameCache
from .manifest import load_manifest

log = logging.getLogger("vqinsight.frames")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--manifest", required=True, type=Path)
    ap.add_argument("--cache-dir", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--nframes", required=True, type=int)
    ap.add_argument("--max-pixels", required=True, type=int)
    ap.add_argument("--min-pixels", type=int, default=0)
    ap.add_argument("--reader", choices=("decord", "pyav"), default="decord")
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    df = load_manifest(a.manifest)
    videos = sorted({m for ms in df.filter(df["media_type"] == "video")["media"].to_list() for m in ms})
    cache = FrameCache(a.cache_dir, a.nframes, a.max_pixels, a.min_pixels, a.reader)
    failures = cache.warm(videos, workers=a.workers)
    if failures:
        for path, err in failures[:10]:
            log.error("%s: %s", path, err)
        log.error(
            "%d of %d videos could not be decoded (the manifest's media check passed: was a file changed since?)",
            len(failures),
            len(videos),
        )
        return 1
    index = {v: str(cache.path_for(v)) for v in videos}
    atomic_write_json(
        a.out,
        {
            "manifest": str(a.manifest),
            "nframes": a.nframes,
            "max_pixels": a.max_pixels,
            "min_pixels": a.min_pixels,
            "reader": a.reader,
            "videos": len(videos),
            "index": index,
        },
    )
    log.info("%d videos cached under %s", len(videos), a.cache_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
