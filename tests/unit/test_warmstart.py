"""The format warm start's labels: completion tokens only, and ``free_choice`` leaves the verdict letter unlabelled."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from vqinsight.grpo import warmstart
from vqinsight.models.tiny import build_tokenizer


def test_labels_cover_the_completion_and_free_choice_frees_the_verdict_letter(monkeypatch) -> None:
    tok = build_tokenizer()
    prompt = "PROMPT "

    def fake_encode(processor, rows, loader, style, scale, suffixes=None, padding_side="left") -> dict[str, Any]:
        ids = [tok(prompt + s, add_special_tokens=False)["input_ids"] for s in suffixes]
        width = max(map(len, ids))
        pad = tok.pad_token_id
        return {
            "input_ids": torch.tensor([x + [pad] * (width - len(x)) for x in ids]),
            "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids]),
        }

    monkeypatch.setattr(warmstart, "encode_batch", fake_encode)
    rows = [{"task": "comparison"}, {"task": "video_score"}, {"task": "comparison"}]
    processor = SimpleNamespace(tokenizer=tok)
    results = {}
    for free in (False, True):
        inp, labels = warmstart._batch(processor, rows, None, "short", (1.0, 5.0), np.random.default_rng(0), free)
        results[free] = (inp, labels)
    (inp, plain), (_, freed) = results[False], results[True]
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    for i, row in enumerate(rows):
        n = int(inp["attention_mask"][i].sum())
        assert (plain[i, :n_prompt] == -100).all() and (plain[i, n_prompt:n] == inp["input_ids"][i, n_prompt:n]).all()
        diff = (plain[i] != freed[i]).nonzero().flatten().tolist()
        if row["task"] == "comparison":
            assert len(diff) == 1 and freed[i, diff[0]] == -100
            assert tok.decode([int(inp["input_ids"][i, diff[0]])]) in ("A", "B")
        else:
            assert diff == []
