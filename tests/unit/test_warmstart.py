"""The format warm start's labels: completion tokens only, ``free_choice`` leaves the verdict letter unlabelled, and
``uniform`` trains each answer choice token towards the uniform distribution over the choices."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from vqinsight.grpo import warmstart
from vqinsight.models.tiny import build_tokenizer


def _fake_encode(tok, prompt):
    def fake_encode(processor, rows, loader, style, scale, suffixes=None, padding_side="left") -> dict[str, Any]:
        ids = [tok(prompt + s, add_special_tokens=False)["input_ids"] for s in suffixes]
        width = max(map(len, ids))
        pad = tok.pad_token_id
        return {
            "input_ids": torch.tensor([x + [pad] * (width - len(x)) for x in ids]),
            "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids]),
        }

    return fake_encode


def test_uniform_answers_free_each_choice_token_and_name_its_options(monkeypatch) -> None:
    tok = build_tokenizer()
    monkeypatch.setattr(warmstart, "encode_batch", _fake_encode(tok, "PROMPT "))
    rows = [{"task": "comparison"}, {"task": "video_score"}, {"task": "multidim_score"}, {"task": "vqa"}]
    processor = SimpleNamespace(tokenizer=tok)
    rng = np.random.default_rng(0)
    inp, labels, choices = warmstart._batch(processor, rows, None, "short", (1.0, 5.0), rng, answers="uniform")
    _, free_labels, free_choices = warmstart._batch(
        processor, rows, None, "short", (1.0, 5.0), np.random.default_rng(0), answers="free"
    )
    assert free_choices == [] and torch.equal(free_labels, labels)  # the same tokens freed, with no target
    per_row: dict[int, list] = {}
    for i, pos, ids in choices:
        assert labels[i, pos] == -100  # no label on a choice token: its target is the uniform one
        per_row.setdefault(i, []).append((tok.decode([int(inp["input_ids"][i, pos])]), tok.decode(ids)))
    digits = "12345"
    assert [opts for _, opts in per_row[0]] == ["AB"] and per_row[0][0][0] in "AB"
    assert [opts for _, opts in per_row[1]] == [digits] and per_row[1][0][0] in digits
    assert [opts for _, opts in per_row[2]] == [digits] * 3  # "s t a": three digits
    assert 3 not in per_row  # yes/no: answers of different lengths, trained on the sampled one
    n = int(inp["attention_mask"][3].sum())
    assert (labels[3, n - 1] == inp["input_ids"][3, n - 1]).all()


def test_uniform_loss_is_the_expectation_of_the_sampled_answers_loss() -> None:
    """At a choice position the uniform target's loss equals the mean of the losses of each option as the label."""
    torch.manual_seed(0)
    logits = torch.randn(1, 6, 10)
    labels = torch.full((1, 6), -100)
    labels[0, 2] = 7
    options = [1, 4, 5]
    uniform = warmstart.loss(logits, labels, [(0, 4, options)])
    sampled = []
    for o in options:
        lab = labels.clone()
        lab[0, 4] = o
        sampled.append(warmstart.loss(logits, lab, []))
    assert torch.allclose(uniform, torch.stack(sampled).mean(), atol=1e-6)
    # and the sampled-answers loss is the causal LM's own: mean next-token cross-entropy over the labels
    ref = torch.nn.functional.cross_entropy(logits[0, :-1], lab[0, 1:], ignore_index=-100)
    assert torch.allclose(sampled[-1], ref, atol=1e-6)


def test_labels_cover_the_completion_and_free_choice_frees_the_verdict_letter(monkeypatch) -> None:
    tok = build_tokenizer()
    prompt = "PROMPT "
    monkeypatch.setattr(warmstart, "encode_batch", _fake_encode(tok, prompt))
    rows = [{"task": "comparison"}, {"task": "video_score"}, {"task": "comparison"}]
    processor = SimpleNamespace(tokenizer=tok)
    results = {}
    for free in (False, True):
        inp, labels, choices = warmstart._batch(
            processor, rows, None, "short", (1.0, 5.0), np.random.default_rng(0), free
        )
        assert choices == []
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
