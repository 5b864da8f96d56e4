"""Write each dataset of docs/DATASETS.md in its native layout, with real media and labels from the known labels.

Deterministic: every item draws from ``np.random.SeedSequence([seed, dataset_index, item_index, sub])``; media are
H.264 (``write_video``, bit-exact) or JPEG; tables are written with fixed options; all writes are atomic. Nothing the
real release lacks is written: the true severities come back in the returned summary under ``"truth"``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import os
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from vqinsight.data.synthetic import labels as L
from vqinsight.data.synthetic.degrade import Degradations, Mix, make_item, sample_degradations, sample_pair
from vqinsight.data.synthetic.scenes import SceneSpec, describe, random_scene
from vqinsight.video import write_video

from ...progress import progress

log = logging.getLogger(__name__)

# Order fixes each dataset's seed index; append new keys at the end only.
DATASET_KEYS: tuple[str, ...] = (
    "koniq", "lsvq", "konvid", "livevqc", "lgvq", "visionreward", "genaibench", "monetbench", "vidprom",
)  # fmt: skip
DEFAULT_COUNTS: dict[str, dict[str, int]] = {
    "koniq": {"train": 96, "test": 48},
    "lsvq": {"train": 64, "test": 24, "test_1080p": 12, "invalid": 1},
    "konvid": {"test": 24},
    "livevqc": {"test": 24},
    "lgvq": {"prompts": 12, "models": 6},
    "visionreward": {"vqa": 32, "pairs": 48},
    "genaibench": {"pairs": 48},
    "monetbench": {"pairs": 48},
    "vidprom": {"prompts": 200},
}
# Synthetic "T2V models": each prefers a different mix of degradations (exposure is drawn for every model).
T2V_MODELS: dict[str, tuple[tuple[str, ...], float]] = {
    "synth-t2v-alpha": (("blur", "noise"), 0.5),
    "synth-t2v-beta": (("blur", "compression", "mismatch"), 1.0),
    "synth-t2v-gamma": (("stutter", "freeze", "drop"), 1.0),
    "synth-t2v-delta": (("flicker", "jitter"), 1.0),
    "synth-t2v-epsilon": (("noise", "compression", "flicker"), 1.0),
    "synth-t2v-zeta": (("mismatch", "drop", "blur"), 1.0),
}
URL_BASE = "https://demo.invalid"


# --------------------------------------------------------------------------- serialisers (fixed options)
def _json_bytes(obj: object) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _csv_bytes(header: list[str], rows: list[list[object]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _parquet_bytes(columns: dict[str, list], schema: pa.Schema) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table(columns, schema=schema), buf, compression="snappy")
    return buf.getvalue()


def _mat_bytes(variables: dict[str, object]) -> bytes:
    """MATLAB v5 via scipy; the header's creation time is replaced by a fixed text (byte-identical reruns)."""
    from scipy.io import savemat

    buf = io.BytesIO()
    savemat(buf, variables, format="5", oned_as="column")
    data = bytearray(buf.getvalue())
    data[:116] = b"MATLAB 5.0 MAT-file, written by vqinsight.data.synthetic".ljust(116, b" ")
    return bytes(data)


def _jpeg_bytes(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _f(x: float, nd: int = 4) -> str:
    return f"{x:.{nd}f}"


# --------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class Job:
    """One media file to render: where (relative to the raw dir), scene, degradations, seed, and how a mismatch
    shows (``"prompt"`` for single items, ``"pixels"`` where several videos share one prompt)."""

    rel: str
    spec: SceneSpec
    deg: Degradations
    seed: tuple[int, ...]
    image: bool = False
    mismatch_in: str = "prompt"


@dataclass(frozen=True)
class Done:
    """A finished job: its path, prompt and realised degradations."""

    rel: str
    prompt: str
    deg: Degradations


class Ctx:
    """Per-call settings (the degradation ``mix`` included), the seed scheme, and the record of files written."""

    def __init__(
        self,
        key: str,
        out: Path,
        seed: int,
        counts: dict[str, int],
        size: tuple[int, int, int],
        fps: float,
        mix: Mix | None = None,
    ):
        self.key, self.out, self.seed, self.counts = key, out, seed, counts
        self.nframes, self.h, self.w = size
        self.fps = fps
        self.mix = mix or Mix()
        self.ds = DATASET_KEYS.index(key)
        self.written: set[str] = set()

    def ss(self, item: int, sub: int) -> tuple[int, ...]:
        """Entropy of (item, sub): (seed, dataset_index, item, sub)."""
        return (self.seed, self.ds, item, sub)

    def rng(self, item: int, sub: int) -> np.random.Generator:
        """Generator seeded from SeedSequence([seed, dataset_index, item, sub])."""
        return np.random.default_rng(np.random.SeedSequence(list(self.ss(item, sub))))

    def put(self, rel: str, data: bytes) -> None:
        """Write ``data`` to ``out/rel`` atomically (tmp + os.replace)."""
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        self.written.add(rel)

    def run(self, jobs: list[Job]) -> dict[str, Done]:
        """Render and write every job (threads: ffmpeg and PIL run outside the GIL); results keyed by ``rel``."""

        def one(job: Job) -> Done:
            rng = np.random.default_rng(np.random.SeedSequence(list(job.seed)))
            t = 1 if job.image else self.nframes
            frames, prompt, deg = make_item(job.spec, job.deg, rng, t, self.h, self.w, job.mismatch_in)
            if job.image:
                self.put(job.rel, _jpeg_bytes(frames[0]))
            else:
                write_video(self.out / job.rel, frames, fps=self.fps)
            return Done(job.rel, prompt, deg)

        with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
            done = list(progress(pool.map(one, jobs), total=len(jobs), desc=self.key, unit="file"))
        self.written.update(j.rel for j in jobs)
        return {d.rel: d for d in done}


def _item_truth(split: str | None, nid: str, done: Done, kind: str, **extra: object) -> dict:
    q = L.quality(done.deg, kind).to_dict()
    return {
        "split": split,
        "id": nid,
        "media": done.rel,
        "prompt": done.prompt,
        **done.deg.to_dict(),
        "quality": q,
    } | extra


def _sample_pair(ctx: Ctx, item: int, models: tuple[str, str] | None = None) -> tuple:
    """One scene shared by both videos, and the pair's mode and degradations (:func:`sample_pair`)."""
    rng = ctx.rng(item, 0)
    spec = random_scene(rng)
    return (spec, *sample_pair(rng, tuple(T2V_MODELS[m] for m in models) if models else None, ctx.mix))


# --------------------------------------------------------------------------- score datasets
def _gen_koniq(ctx: Ctx) -> list[dict]:
    jobs, meta, item = [], [], 0
    for split in ("train", "test"):
        for _ in range(ctx.counts[split]):
            rng = ctx.rng(item, 0)
            nid = str(1_000_000_000 + item * 7919 + int(rng.integers(7919)))
            deg = sample_degradations(rng, video=False, aigc=False, mix=ctx.mix)
            jobs.append(Job(f"images/{nid}.jpg", random_scene(rng), deg, ctx.ss(item, 2), image=True))
            meta.append((split, nid, item))
            item += 1
    done = ctx.run(jobs)
    truth = []
    for (split, nid, it), job in zip(meta, jobs, strict=True):
        rng = ctx.rng(it, 1)
        mos = L.raw_mos(L.quality(done[job.rel].deg, "image").overall, L.RAW_RANGES["koniq"], rng)
        truth.append(_item_truth(split, nid, done[job.rel], "image", raw=mos, std=float(rng.uniform(0.25, 0.6))))
    lo, hi = min(t["raw"] for t in truth), max(t["raw"] for t in truth)
    span = hi - lo if hi > lo else 4.0
    levels = ("bad", "poor", "fair", "good", "excellent")
    metas: dict[str, list[dict]] = {"train": [], "test": []}
    for t in truth:
        norm = 4 * (t["raw"] - lo) / span + 1  # DeQA-Score gen_soft_label.py
        std_norm = 4 * t["std"] / span
        p = np.exp(-0.5 * ((np.arange(1, 6) - norm) / max(std_norm, 0.1)) ** 2)
        level = levels[int(np.clip(round(norm), 1, 5)) - 1]
        conv = [{"from": "human", "value": "<image>\nWhat do you think about the quality of this image?"},
                {"from": "gpt", "value": f"The quality of the image is {level}."}]  # fmt: skip
        rec = {"id": t["id"], "image": f"KONIQ/images/{t['id']}.jpg", "gt_score": round(t["raw"], 4),
               "gt_score_norm": round(norm, 4), "std": round(t["std"], 4), "std_norm": round(std_norm, 4),
               "level_probs": [round(float(x), 6) for x in p / p.sum()], "conversations": conv}  # fmt: skip
        metas[t["split"]].append(rec)
    ctx.put("metas/train_koniq_7k.json", _json_bytes(metas["train"]))
    ctx.put("metas/test_koniq_2k.json", _json_bytes(metas["test"]))
    return truth


def _video_items(
    ctx: Ctx, counts: dict[str, int], name: Callable[[int, np.random.Generator], str], prefix: str
) -> list[tuple[str, str, int, Done]]:
    """Natural-video items (no mismatch), in order: (split, native id, item index, Done)."""
    jobs, meta, item = [], [], 0
    for split, n in counts.items():
        for _ in range(n):
            rng = ctx.rng(item, 0)
            nid = name(item, rng)
            deg = sample_degradations(rng, video=True, aigc=False, mix=ctx.mix)
            jobs.append(Job(f"{prefix}/{nid}.mp4", random_scene(rng), deg, ctx.ss(item, 2)))
            meta.append((split, nid, item))
            item += 1
    done = ctx.run(jobs)
    return [(s, n, i, done[j.rel]) for (s, n, i), j in zip(meta, jobs, strict=True)]


def _video_mos(ctx: Ctx, item: int, done: Done) -> tuple[float, np.random.Generator]:
    rng = ctx.rng(item, 1)
    return L.raw_mos(L.quality(done.deg, "video").overall, L.RAW_RANGES[ctx.key], rng), rng


def _gen_lsvq(ctx: Ctx) -> list[dict]:
    """LSVQ; the last ``invalid`` train rows get is_valid = 0 (their videos exist; the parser must skip them)."""
    c = ctx.counts
    counts = {"train": c["train"] + c["invalid"], "test": c["test"], "test_1080p": c["test_1080p"]}
    rows = _video_items(ctx, counts, lambda i, r: f"ia-batch{1 + i % 3}/synth{i:05d}", "videos")
    header = "name,p1,p2,p3,height,width,mos_p1,mos_p2,mos_p3,mos,frame_number,fn_last_frame,is_test,is_valid"
    table: dict[str, list] = {k: [] for k in counts}
    truth = []
    for split, nid, it, done in rows:
        mos, rng = _video_mos(ctx, it, done)
        patch = [_f(float(np.clip(mos + rng.normal(0, 3.0), 0, 100))) for _ in range(3)]
        valid = 0 if split == "train" and it >= c["train"] else 1
        t, last = ctx.nframes, ctx.nframes
        table[split].append([nid, 1, 2, 3, ctx.h, ctx.w, *patch, _f(mos), t, last, int(split != "train"), valid])
        truth.append(_item_truth(split, nid, done, "video", raw=mos, is_valid=valid))
    for split, rows_ in table.items():
        ctx.put(f"LSVQ_whole_{split}.csv", _csv_bytes(header.split(","), rows_))
    return truth


def _gen_konvid(ctx: Ctx) -> list[dict]:
    ids = lambda i, r: str(3_000_000_000 + i * 7919 + int(r.integers(7919)))  # noqa: E731
    out, truth = [], []
    for split, nid, it, done in _video_items(ctx, {"test": ctx.counts["test"]}, ids, "KoNViD_1k_videos"):
        mos, rng = _video_mos(ctx, it, done)
        out.append([nid, _f(mos), _f(float(rng.uniform(0.4, 0.9))), int(rng.integers(50, 120))])
        truth.append(_item_truth(split, nid, done, "video", raw=mos))
    ctx.put("KoNViD_1k_attributes.csv", _csv_bytes(["flickr_id", "MOS", "SD", "n"], out))
    return truth


def _gen_livevqc(ctx: Ctx) -> list[dict]:
    names, mos, truth = [], [], []
    for split, nid, it, done in _video_items(ctx, {"test": ctx.counts["test"]}, lambda i, r: f"A{i + 1:03d}", "Video"):
        m, _ = _video_mos(ctx, it, done)
        names.append(f"{nid}.mp4")
        mos.append(m)
        truth.append(_item_truth(split, f"{nid}.mp4", done, "video", raw=m))
    cell = np.empty((len(names), 1), dtype=object)
    for i, n in enumerate(names):
        cell[i, 0] = n
    ctx.put("data.mat", _mat_bytes({"video_list": cell, "mos": np.asarray(mos, np.float64).reshape(-1, 1)}))
    return truth


def _gen_lgvq(ctx: Ctx) -> list[dict]:
    """``prompts`` x ``models`` videos; the videos of one prompt share the scene (mismatch shows in the pixels)."""
    if ctx.counts["models"] > len(T2V_MODELS):
        raise ValueError(f"lgvq: at most {len(T2V_MODELS)} models")
    models = list(T2V_MODELS)[: ctx.counts["models"]]
    jobs, meta = [], []
    for p in range(ctx.counts["prompts"]):
        spec = random_scene(ctx.rng(p * 100, 0))
        for m_i, model in enumerate(models):
            item = p * 100 + m_i + 1
            pool, mx = T2V_MODELS[model]
            rng = ctx.rng(item, 0)
            deg = sample_degradations(rng, video=True, aigc=True, pool=pool, max_severity=mx, mix=ctx.mix)
            jobs.append(Job(f"videos/{model}_{p:04d}.mp4", spec, deg, ctx.ss(item, 2), mismatch_in="pixels"))
            meta.append((model, item))
    done = ctx.run(jobs)
    dims = ("spatial", "temporal", "alignment")
    rows, truth = [], []
    for (model, item), job in zip(meta, jobs, strict=True):
        d, rng = done[job.rel], ctx.rng(item, 1)
        q = L.quality(d.deg, "aigc")
        raw = {k: L.raw_mos(getattr(q, k), L.RAW_RANGES["lgvq"], rng) for k in dims}
        name = job.rel.removeprefix("videos/")
        rows.append([name, d.prompt, model, *(_f(raw[k]) for k in dims)])
        truth.append(_item_truth(None, name, d, "aigc", model=model, raw=raw))
    ctx.put("LGVQ_MOS.csv", _csv_bytes(["video_name", "prompt", "model", *dims], rows))
    return truth


# --------------------------------------------------------------------------- preference / VQA datasets
Pair = tuple[int, str, tuple[str, str] | None, Done, Done]


def _pairs(ctx: Ctx, n: int, start: int, stem: Callable[[int, str | None], str], models: bool = False) -> list[Pair]:
    """Sample and render ``n`` pairs (items ``start``..); video paths are relative to ``videos/``."""
    jobs, meta = [], []
    for i in range(n):
        item, pm = start + i, None
        if models:
            a, b = ctx.rng(item, 5).choice(len(T2V_MODELS), size=2, replace=False)
            pm = (list(T2V_MODELS)[int(a)], list(T2V_MODELS)[int(b)])
        spec, mode, da, db = _sample_pair(ctx, item, pm)
        for side, deg in ((0, da), (1, db)):
            rel = f"videos/{stem(i, pm[side] if pm else None)}_{side + 1}.mp4"
            jobs.append(Job(rel, spec, deg, ctx.ss(item, 2 + side), mismatch_in="pixels"))
        meta.append((item, mode, pm))
    done = {k: Done(d.rel.removeprefix("videos/"), d.prompt, d.deg) for k, d in ctx.run(jobs).items()}
    return [(it, mo, pm, done[jobs[2 * k].rel], done[jobs[2 * k + 1].rel]) for k, (it, mo, pm) in enumerate(meta)]


def _qq(a: Done, b: Done) -> tuple[float, float]:
    return L.quality(a.deg, "aigc").overall, L.quality(b.deg, "aigc").overall


def _pair_truth(split: str, nid: str, mode: str, a: Done, b: Done, label: str) -> dict:
    rec = {"split": split, "id": nid, "prompt": a.prompt, "mode": mode, "label": label}
    return rec | {"preference": L.preference(*_qq(a, b)), "a": _item_truth(split, nid, a, "aigc"),
                  "b": _item_truth(split, nid, b, "aigc")}  # fmt: skip


def _hex_id(ctx: Ctx, item: int) -> str:
    return ctx.rng(item, 9).bytes(12).hex()


_PAIR_COLS = ("internal_id", "prompt", "standard_answer", "video1_path", "video2_path")


def _pair_table(ctx: Ctx, rel: str, pairs: list[Pair], split: str) -> list[dict]:
    cols: dict[str, list] = {k: [] for k in _PAIR_COLS}
    truth = []
    for item, mode, _, a, b in pairs:
        iid, ans = _hex_id(ctx, item), L.standard_answer(*_qq(a, b))
        for k, v in zip(_PAIR_COLS, (iid, a.prompt, ans, a.rel, b.rel), strict=True):
            cols[k].append(v)
        truth.append(_pair_truth(split, iid, mode, a, b, ans))
    ctx.put(rel, _parquet_bytes(cols, pa.schema([(k, pa.string()) for k in _PAIR_COLS])))
    return truth


def _gen_visionreward(ctx: Ctx) -> list[dict]:
    jobs = []
    for item in range(ctx.counts["vqa"]):
        rng = ctx.rng(item, 0)
        deg = sample_degradations(rng, video=True, aigc=True, mix=ctx.mix)
        jobs.append(Job(f"videos/vr_{item:05d}.mp4", random_scene(rng), deg, ctx.ss(item, 2)))
    done = ctx.run(jobs)
    ann, ints = pa.struct([(k, pa.int64()) for k in L.ANNOTATION_DIMENSIONS]), pa.list_(pa.int64())
    strs = [(k, pa.string()) for k in ("video_path", "internal_id", "prompt", "url")]
    schema = pa.schema([*strs, ("annotation", ann), ("meta_result", ints), ("meta_mask", ints)])
    cols: dict[str, list] = {k: [] for k in schema.names}
    truth = []
    for item, job in enumerate(jobs):
        d, iid = done[job.rel], _hex_id(ctx, item)
        vp = job.rel.removeprefix("videos/")
        qa = L.vqa_answers(d.deg)
        res, mask = [a for _, a, _ in qa], [m for _, _, m in qa]
        url = f"{URL_BASE}/visionreward/{vp}"
        for k, v in zip(schema.names, (vp, iid, d.prompt, url, L.checklist_annotation(d.deg), res, mask), strict=True):
            cols[k].append(v)
        truth.append(_item_truth("train", iid, d, "aigc", answers=res, mask=mask))
    ctx.put("train/train-00000-of-00001.parquet", _parquet_bytes(cols, schema))
    ctx.put("meta_qa_en.txt", "".join(q + "\n" for _, q, _ in L.VQA_QUESTIONS).encode("utf-8"))
    pairs = _pairs(ctx, ctx.counts["pairs"], 10_000, lambda i, m: f"vr_pair_{i:05d}")
    return truth + _pair_table(ctx, "regression/train-00000-of-00001.parquet", pairs, "train")


def _gen_monetbench(ctx: Ctx) -> list[dict]:
    pairs = _pairs(ctx, ctx.counts["pairs"], 0, lambda i, m: f"monet_{i:05d}", models=True)
    return _pair_table(ctx, "monetbench/test-00000-of-00001.parquet", pairs, "test")


def _gen_genaibench(ctx: Ctx) -> list[dict]:
    pairs = _pairs(ctx, ctx.counts["pairs"], 0, lambda i, m: f"{i:05d}_{m}", models=True)
    names = ("prompt", "left_video", "right_video", "vote_type", "left_model", "right_model")
    cols: dict[str, list] = {k: [] for k in names}
    truth = []
    for row, (_, mode, models, a, b) in enumerate(pairs):
        vote = L.genaibench_vote(*_qq(a, b))
        urls = [f"{URL_BASE}/genaibench/{d.rel}" for d in (a, b)]
        for k, v in zip(names, (a.prompt, *urls, vote, *(models or ("", ""))), strict=True):
            cols[k].append(v)
        truth.append(_pair_truth("test", f"{row:06d}", mode, a, b, vote))
    schema = pa.schema([(k, pa.string()) for k in names])
    ctx.put("video_generation/test_v1-00000-of-00001.parquet", _parquet_bytes(cols, schema))
    return truth


def _gen_vidprom(ctx: Ctx) -> list[dict]:
    """Unique prompts from describe() of random scenes; NSFW probabilities ~ Beta(1, 300)."""
    seen: set[str] = set()
    rows, truth = [], []
    t0 = dt.datetime(2023, 8, 1, tzinfo=dt.UTC)
    for item in range(ctx.counts["prompts"]):
        attempt = 0
        while (prompt := describe(random_scene(ctx.rng(item, 10 + attempt)))) in seen:
            attempt += 1
        seen.add(prompt)
        rng = ctx.rng(item, 1)
        uid = str(uuid.UUID(bytes=rng.bytes(16), version=4))
        when = t0 + dt.timedelta(microseconds=int(rng.integers(0, 120 * 86400 * 10**6)))
        nsfw = [f"{x:.8f}" for x in rng.beta(1.0, 300.0, size=6)]
        rows.append([uid, prompt, when.isoformat(sep=" ", timespec="microseconds"), *nsfw])
        truth.append({"split": "train", "id": uid, "prompt": prompt})
    header = [
        "uuid",
        "prompt",
        "time",
        "toxicity",
        "severe_toxicity",
        "obscene",
        "identity_attack",
        "insult",
        "threat",
    ]
    ctx.put("VidProM_unique.csv", _csv_bytes(header, rows))
    return truth


GENERATORS: dict[str, Callable[[Ctx], list[dict]]] = {
    "koniq": _gen_koniq, "lsvq": _gen_lsvq, "konvid": _gen_konvid, "livevqc": _gen_livevqc, "lgvq": _gen_lgvq,
    "visionreward": _gen_visionreward, "genaibench": _gen_genaibench, "monetbench": _gen_monetbench,
    "vidprom": _gen_vidprom,
}  # fmt: skip


def generate_dataset(
    key: str,
    out_dir: Path,
    *,
    seed: int = 0,
    counts: dict[str, int] | None = None,
    nframes: int = 16,
    height: int = 56,
    width: int = 84,
    fps: float = 8.0,
    mix: dict | Mix | None = None,
) -> dict:
    """Write dataset ``key`` natively into ``out_dir`` (its raw dir). ``counts`` overrides entries of
    :data:`DEFAULT_COUNTS` [key]; ``mix`` (a :class:`~vqinsight.data.synthetic.degrade.Mix` or a plain dict of its
    fields, as in config) changes how degradations are drawn, ``None`` keeping the default mix.
    Returns ``{"dataset", "out_dir", "seed", "counts", "mix", "files", "truth"}``: ``files`` are the paths written
    (relative, sorted) and ``truth`` the per-item severities, qualities and labels."""
    if key not in GENERATORS:
        raise KeyError(f"unknown dataset {key!r}; known: {', '.join(DATASET_KEYS)}")
    mix = Mix.coerce(mix)
    merged = dict(DEFAULT_COUNTS[key])
    for k, v in (counts or {}).items():
        if k not in merged:
            raise ValueError(f"{key}: unknown count {k!r}; known: {sorted(merged)}")
        if int(v) < (0 if k == "invalid" else 1):
            raise ValueError(f"{key}: count {k!r} must be positive, got {v}")
        merged[k] = int(v)
    if height % 2 or width % 2 or nframes < 1:
        raise ValueError(f"height and width must be even and nframes >= 1, got {height}x{width}x{nframes}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(key, out_dir, seed, dict(merged), (nframes, height, width), fps, mix)
    truth = GENERATORS[key](ctx)
    files = sorted(ctx.written)
    log.info("%s: wrote %d files (%s) into %s", key, len(files), merged, out_dir)
    summary = {"dataset": key, "out_dir": str(out_dir), "seed": seed, "counts": merged, "mix": asdict(mix)}
    return summary | {"files": files, "truth": truth}
