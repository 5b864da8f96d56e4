"""CLIP baselines (`vqinsight.baselines.clip`) on a tiny random CLIP and a handful of synthetic videos.

The tiny CLIP is built offline (`vqinsight.models.tiny_clip`); the CLI runs CLIPScore on a comparison manifest and
CLIP-IQA on a video-score manifest, then resumes from a finished and from a partial output.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from vqinsight.baselines import clip as clip_baselines
from vqinsight.baselines.clip import main
from vqinsight.data.manifest import to_frame
from vqinsight.media import MediaLoader, MediaSpec
from vqinsight.models.tiny_clip import build_tiny_clip
from vqinsight.video import available_backends, write_video

FRAMES, HEIGHT, WIDTH = 4, 56, 84
NFRAMES, MAX_PIXELS = 2, HEIGHT * WIDTH
PROMPTS = ("a red ball rolling on grass", "a cat walking across a kitchen floor")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny tensors: one thread is faster, and more threads on a shared 2-core box spin-wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _row(sid: str, task: str, media: list[str], **kw) -> dict:
    row = {
        c: None for c in ("question", "gt_score", "raw_score", "gt_scores", "raw_scores", "gt_choice", "preference")
    }
    row.update(
        sample_id=sid,
        dataset="tiny",
        split="test",
        task=task,
        media_type="video",
        media=media,
        prompt=None,
        raw_label=None,
        source_file="tiny.csv",
        source_row=0,
    )
    row.update(kw)
    return row


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny CLIP, 4 synthetic videos, a comparison manifest (3 pairs) and a video-score manifest (4 videos)."""
    root = tmp_path_factory.mktemp("clip")
    model = build_tiny_clip(root / "tiny_clip", seed=0)
    rng = np.random.default_rng(0)
    videos = []
    for i in range(4):
        base = rng.integers(0, 255, (1, HEIGHT, WIDTH, 3), dtype=np.uint8)
        noise = rng.integers(0, 40 * i + 1, (FRAMES, HEIGHT, WIDTH, 3))
        path = root / "media" / f"v{i}.mp4"
        write_video(path, np.clip(base.astype(int) + noise, 0, 255).astype(np.uint8))
        videos.append(str(path))
    pairs = [(0, 1, "A", 1), (2, 3, "B", -1), (1, 3, "tie", 0)]
    comp = [
        _row(f"p{k}", "comparison", [videos[a], videos[b]], prompt=PROMPTS[k % 2], gt_choice=c, preference=pref)
        for k, (a, b, c, pref) in enumerate(pairs)
    ]
    score = [_row(f"s{i}", "video_score", [v], gt_score=1.0 + i) for i, v in enumerate(videos)]
    for name, rows in (("comparison", comp), ("score", score)):
        to_frame(rows).write_parquet(root / f"{name}.parquet")
    return {"root": root, "model": model, "comparison": root / "comparison.parquet", "score": root / "score.parquet"}


def _args(world: dict[str, Path], metric: str, manifest: Path, task: str, out: Path) -> list[str]:
    # fmt: off
    return ["--metric", metric, "--model", str(world["model"]), "--manifest", str(manifest), "--task", task,
            "--split", "test", "--out", str(out), "--cache-dir", str(world["root"] / "cache"),
            "--nframes", str(NFRAMES), "--max-pixels", str(MAX_PIXELS), "--reader", available_backends()[0],
            "--scale", "1", "5", "--batch-size", "2"]
    # fmt: on


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(name="count_scores")
def _count_scores(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the videos scored by the metric (ClipMetric.score calls)."""
    calls = [0]
    original = clip_baselines.ClipMetric.score

    def counting(self, frames, prompt=None):
        calls[0] += 1
        return original(self, frames, prompt)

    monkeypatch.setattr(clip_baselines.ClipMetric, "score", counting)
    return calls


def _clipscore_direct(model_dir: Path, frames: np.ndarray, prompt: str) -> float:
    """max(mean over frames of 100 cos(image, text), 0), straight from transformers (no torchmetrics)."""
    from transformers import CLIPModel, CLIPProcessor

    model, proc = CLIPModel.from_pretrained(model_dir).eval(), CLIPProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        img = model.get_image_features(proc(images=list(frames), return_tensors="pt")["pixel_values"]).pooler_output
        txt = proc(text=[prompt], return_tensors="pt", padding=True)
        txt = model.get_text_features(txt["input_ids"], txt["attention_mask"]).pooler_output
    cos = torch.nn.functional.cosine_similarity(img, txt.expand_as(img), dim=-1)
    return max(float(100 * cos.mean()), 0.0)


def test_clipscore_comparison(world: dict[str, Path], tmp_path: Path, count_scores: list[int]) -> None:
    out = tmp_path / "clipscore.jsonl"
    assert main(_args(world, "clipscore", world["comparison"], "comparison", out)) == 0
    recs = _read(out)
    assert [r["key"] for r in recs] == ["p0|AB", "p1|AB", "p2|AB"]
    assert {r["order"] for r in recs} == {"AB"} and [r["gt"] for r in recs] == ["A", "B", "tie"]
    assert all(r["completion"] is None and r["answer"] is None for r in recs)
    for r in recs:
        a, b = r["scores"]["A"], r["scores"]["B"]
        assert math.isfinite(a) and math.isfinite(b) and 0 < a <= 100 and 0 < b <= 100
        assert r["margin"] == pytest.approx(a - b, abs=1e-9) and r["margin"] != 0
        assert r["pred"] == ("A" if r["margin"] > 0 else "B")
    # video 1 is in p0 and p2, both with PROMPTS[0]: scored once, so 5 (video, prompt) scores for 6 videos
    assert count_scores[0] == 5
    # recompute pair p0 directly from the cached frames with plain transformers
    loader = MediaLoader(MediaSpec(str(world["root"] / "cache"), NFRAMES, MAX_PIXELS, reader=available_backends()[0]))
    media = pl.read_parquet(world["comparison"]).filter(pl.col("sample_id") == "p0")["media"][0].to_list()
    direct = [_clipscore_direct(world["model"], loader(m, "video"), PROMPTS[0]) for m in media]
    assert recs[0]["scores"]["A"] == pytest.approx(direct[0], abs=1e-3)
    assert recs[0]["margin"] == pytest.approx(direct[0] - direct[1], abs=1e-3)
    meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
    assert meta["computed"] == 3 and meta["n_predictions"] == 3
    assert not out.with_name(out.name + ".partial").exists()

    # a finished output counts as done: nothing recomputed, same file
    before = out.read_text()
    assert main(_args(world, "clipscore", world["comparison"], "comparison", out)) == 0
    assert count_scores[0] == 5 and out.read_text() == before


def test_clip_iqa_video_score_resume(world: dict[str, Path], tmp_path: Path, count_scores: list[int]) -> None:
    out = tmp_path / "clip_iqa.jsonl"
    args = _args(world, "clip_iqa", world["score"], "video_score", out)
    assert main(args) == 0
    recs = _read(out)
    assert [r["key"] for r in recs] == ["s0", "s1", "s2", "s3"] and count_scores[0] == 4
    assert [r["gt"] for r in recs] == [1.0, 2.0, 3.0, 4.0] and all(r["order"] is None for r in recs)
    preds = [r["pred"] for r in recs]
    assert all(isinstance(p, float) and math.isfinite(p) and 0 < p < 1 for p in preds)
    assert len(set(preds)) == 4 and all("margin" not in r for r in recs)

    # interrupted run: the final file is gone and the partial holds one record -> only the other three computed
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(recs[2]) + "\n")
    out.unlink()
    assert main(args) == 0
    assert count_scores[0] == 4 + 3
    again = _read(out)
    assert [r["key"] for r in again] == ["s0", "s1", "s2", "s3"] and not partial.exists()
    assert [r["pred"] for r in again] == pytest.approx(preds, rel=1e-6)
    assert json.loads(out.with_name(out.name + ".meta.json").read_text())["resumed_with"] == 1


def test_multidim_prompts_and_errors(world: dict[str, Path], tmp_path: Path) -> None:
    """LGVQ-style rows fill one dimension; missing prompt, manifest or model give exit code 2 naming the path."""
    videos = pl.read_parquet(world["score"])["media"].to_list()
    dims = {"spatial": 3.0, "temporal": 2.0, "alignment": 4.0}
    rows = [_row("m0", "multidim_score", videos[0], prompt=PROMPTS[0], gt_scores=dims)]
    rows.append(_row("m1", "multidim_score", videos[1], gt_scores=dims))  # no prompt
    manifest = tmp_path / "multidim.parquet"
    to_frame(rows).write_parquet(manifest)
    out = tmp_path / "iqa_multidim.jsonl"
    assert main(_args(world, "clip_iqa", manifest, "multidim_score", out)) == 0
    recs = _read(out)
    assert [set(r["pred"]) for r in recs] == [{"spatial"}, {"spatial"}] and recs[0]["gt"] == dims

    bad = tmp_path / "cs_multidim.jsonl"
    assert main(_args(world, "clipscore", manifest, "multidim_score", bad)) == 2  # m1 has no prompt
    assert not bad.exists()
    assert main(_args(world, "clipscore", tmp_path / "nope.parquet", "comparison", bad)) == 2
    missing_model = _args(world, "clipscore", world["comparison"], "comparison", bad)
    missing_model[missing_model.index("--model") + 1] = str(tmp_path / "no_model")
    assert main(missing_model) == 2


def test_fit_prompt_and_tiny_clip_determinism(world: dict[str, Path], tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(world["model"])
    long = " ".join(["word"] * 40)  # 5 tokens per word: far over 77
    cut = clip_baselines.fit_prompt(tok, long, 77)
    assert long.startswith(cut) and len(tok(cut)["input_ids"]) <= 77 < len(tok(cut + " word")["input_ids"])
    assert clip_baselines.fit_prompt(tok, PROMPTS[0], 77) == PROMPTS[0]
    again = build_tiny_clip(tmp_path / "again", seed=0)
    assert (again / "model.safetensors").read_bytes() == (world["model"] / "model.safetensors").read_bytes()
