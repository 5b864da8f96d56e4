"""The judge's batch engine (batchdecode.BatchDecoder) against the per-pair transformers path, on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vqinsight import records
from vqinsight.judge import engine as judge_engine


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """Tiny model and loader; comparison rows: all pairs of 3 videos; score rows: one per video."""
    from vqinsight.media import MediaLoader, MediaSpec
    from vqinsight.models.load import load_model_and_processor
    from vqinsight.models.tiny import build_tiny
    from vqinsight.video import write_video

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("judge_batch")
    build_tiny(root / "tiny", seed=0, video_pixels=(784, 4704), image_pixels=(784, 4704))
    vids = []
    for i in range(3):
        frames = np.random.default_rng(i).integers(0, 256, (4, 56, 84, 3), dtype=np.uint8)
        write_video(root / f"v{i}.mp4", frames, fps=4)
        vids.append(str(root / f"v{i}.mp4"))
    model, proc = load_model_and_processor(str(root / "tiny"), video_pixels=(784, 4704), image_pixels=(784, 4704))
    loader = MediaLoader(MediaSpec(str(root / "cache"), 4, 4704, 784))
    pairs = [
        {"sample_id": f"x/p{i}{j}", "task": "comparison", "media": [vids[i], vids[j]], "media_type": "video",
         "prompt_text": "a dog on a beach", "gt_choice": "A"}
        for i in range(3) for j in range(i + 1, 3)
    ]  # fmt: skip
    scores = [{"sample_id": f"x/s{i}", "task": "video_score", "media": [v], "media_type": "video", "gt_score": 3.0}
              for i, v in enumerate(vids)]  # fmt: skip
    return {"model": model.eval(), "proc": proc, "loader": loader, "pairs": pairs, "scores": scores}


def _judges(world, **kw):
    m, p, ld = world["model"], world["proc"], world["loader"]
    hf = judge_engine.Judge(m, p, ld, **kw)
    batch = judge_engine.Judge(m, p, ld, engine="batch", cache_items=8, max_batch=4, **kw)
    return hf, batch


@pytest.mark.parametrize("style", ["short", "full"])
def test_batch_engine_records_equal_the_hf_engine(world, style) -> None:
    """Six judgments (3 pairs, both orders) through 4 slots, the first video's prefix shared: same completions
    and margins as the per-pair transformers path; each video encoded once; the margins read from the cache."""
    hf, batch = _judges(world, style=style, max_new_tokens=12)
    items = records.expand(world["pairs"])
    want, have = hf.judge(items), batch.judge(items)
    assert [r["completion"] for r in have] == [r["completion"] for r in want]
    for r, w in zip(have, want, strict=True):
        assert r["p"] == pytest.approx(w["p"], abs=1e-5)
    assert batch.vision.misses == 3
    assert batch.batch.stats["prefix_prefills"] == 3 and batch.batch.stats["prefix_hits"] == 3
    assert batch.margin_stats["from_cache"] == len(items), batch.margin_stats
    # rows whose completion re-tokenises too differently are prefilled again: same numbers
    batch.max_refeed = -100
    again = batch.judge(items)
    assert batch.margin_stats["prefilled"] == len(items)
    for r, w in zip(again, want, strict=True):
        assert r["p"] == pytest.approx(w["p"], abs=1e-5)
    # candidate_probs on rows it did not just generate: by prefill, same numbers
    prefixes = [formats_prefix(r["completion"]) for r in want]
    probs = batch.candidate_probs([it.row for it in items], prefixes, {"A": ("Video A", "A"), "B": ("Video B", "B")})
    assert probs[:, 0].tolist() == pytest.approx([w["p"]["A"] for w in want], abs=1e-5)


def formats_prefix(completion: str) -> str:
    from vqinsight.answer_format import answer_prefix

    return answer_prefix(completion)


def test_batch_engine_scores_votes_and_limits(world) -> None:
    hf, batch = _judges(world, style="short", max_new_tokens=10)
    items = records.expand(world["scores"])
    assert [r["completion"] for r in batch.judge(items)] == [r["completion"] for r in hf.judge(items)]
    rows = [it.row for it in records.expand(world["pairs"])]
    batch.generate(rows)
    full = batch.last_tokens
    assert len(full) == len(rows) and all(len(t) <= 10 for t in full)
    batch.generate(rows, limits=[3, 10, 1, 10, 2, 5])
    cut = batch.last_tokens
    assert [len(t) for t in cut] == [min(c, len(f)) for c, f in zip([3, 10, 1, 10, 2, 5], full, strict=True)]
    assert all(f[: len(c)] == c for f, c in zip(full, cut, strict=True))
    torch.manual_seed(0)
    recs = batch.judge(records.expand(world["pairs"][:1]), margin="votes", votes_k=3)
    assert all(r["votes"]["k"] == 3 for r in recs)
    with pytest.raises(ValueError, match="per-row limits need engine 'batch'"):
        hf.generate(rows, limits=[1] * len(rows))
