"""The GRPO dataset's on-access prompt building (vqinsight.grpo.data.build_dataset)."""

from __future__ import annotations

import numpy as np

from vqinsight.grpo.data import build_dataset


def _row(sample_id: str, videos: list[str], choice: str | None = "A") -> dict:
    return {
        "sample_id": sample_id,
        "task": "comparison",
        "media_type": "video",
        "media": videos,
        "prompt_text": "a cat",
        "question": None,
        "gt_score": None,
        "gt_scores": None,
        "gt_choice": choice,
    }


def test_a_batch_decodes_each_video_once_and_its_copies_share_the_frames() -> None:
    """GRPO's sampler puts each row G times in a batch: each path is decoded once per batch, every copy's prompt
    holds the same frames, and the prompts equal those built one row at a time."""
    calls: list[str] = []

    def loader(path: str, media_type: str) -> np.ndarray:
        calls.append(path)
        return np.full((2, 4, 4, 3), hash(path) % 251, dtype=np.uint8)

    rows = [_row("p0", ["a.mp4", "b.mp4"]), _row("p1", ["b.mp4", "c.mp4"], "B")]
    ds = build_dataset(rows, loader, "short", (1.0, 5.0))
    batch = ds.__getitems__([0, 0, 0, 1, 1])
    assert sorted(calls) == ["a.mp4", "b.mp4", "c.mp4"]  # b.mp4 appears in both rows: still decoded once

    def videos(prompt: list[dict]) -> list[np.ndarray]:
        return [p["video"] for m in prompt if isinstance(m["content"], list) for p in m["content"] if "video" in p]

    first = videos(batch[0]["prompt"])
    assert len(first) == 2 and all(videos(batch[i]["prompt"])[0] is first[0] for i in (1, 2))
    assert videos(batch[3]["prompt"])[0] is first[1]  # the shared video of the two rows
    calls.clear()
    one = [ds[i] for i in (0, 0, 0, 1, 1)]  # row by row: a decode per access
    assert len(calls) == 10
    for got, want in zip(batch, one, strict=True):
        assert got["sample_id"] == want["sample_id"] and got["gt_choice"] == want["gt_choice"]
        gv, wv = videos(got["prompt"]), videos(want["prompt"])
        assert len(gv) == len(wv) and all(np.array_equal(g, w) for g, w in zip(gv, wv, strict=True))
        strip = [{**m, "content": [p for p in m["content"] if "video" not in p] if isinstance(m["content"], list)
                  else m["content"]} for m in got["prompt"]]  # fmt: skip
        strip_w = [{**m, "content": [p for p in m["content"] if "video" not in p] if isinstance(m["content"], list)
                    else m["content"]} for m in want["prompt"]]  # fmt: skip
        assert strip == strip_w
