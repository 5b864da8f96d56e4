"""The static-cache decoder against transformers' generate() on the tiny Qwen2.5-VL (CPU, eager step)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vqinsight.fastdecode import StaticDecoder
from vqinsight.models.load import load_model_and_processor, vision_token_ids
from vqinsight.models.tiny import build_tiny


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory):
    torch.set_num_threads(1)
    d: Path = build_tiny(tmp_path_factory.mktemp("models") / "tiny")
    model, processor = load_model_and_processor(str(d))
    return model.eval(), processor


def _batch(processor):
    """A left-padded batch: two videos + a long caption, one video + a short one, and text only."""
    rng = np.random.default_rng(0)

    def video(seed):
        return np.random.default_rng(seed).integers(0, 256, (4, 56, 84, 3), dtype=np.uint8)

    rows = [
        ([video(1), video(2)], "Which of the two videos is better? Explain in detail, then answer."),
        ([video(3)], "Rate it."),
        ([], "Say something about video quality " + "x" * int(rng.integers(5, 9))),
    ]
    texts, videos = [], []
    for vids, text in rows:
        content = [{"type": "video", "video": v} for v in vids] + [{"type": "text", "text": text}]
        msgs = [{"role": "user", "content": content}]
        texts.append(processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False))
        videos += vids
    processor.tokenizer.padding_side = "left"
    return processor(text=texts, videos=videos, padding=True, return_tensors="pt")


def test_greedy_tokens_equal_generate_on_a_padded_multimodal_batch(loaded):
    model, processor = loaded
    enc = _batch(processor)
    am = enc["attention_mask"]
    assert len(set(am.sum(1).tolist())) == 3, "the batch really is padded"
    sup = vision_token_ids(model)
    n = 40
    with torch.no_grad():
        ref = model.generate(**enc, do_sample=False, max_new_tokens=n, min_new_tokens=n, suppress_tokens=sup)
    ref = ref[:, enc["input_ids"].shape[1] :]
    out = StaticDecoder(model).generate(enc, n, do_sample=False, suppress_token_ids=sup)
    assert out.shape == (3, n)
    assert torch.equal(out, ref)
    assert not torch.isin(out, torch.tensor(sup)).any(), "vision placeholders are never produced"


def test_sdpa_attention_gives_the_same_greedy_tokens_and_close_scores(loaded):
    """The CUDA default (one sdpa call per layer) against the CPU default (two matmuls) on the same batch."""
    model, processor = loaded
    enc = _batch(processor)
    mm, sd = StaticDecoder(model, attention="matmul"), StaticDecoder(model, attention="sdpa")
    assert not mm.sdpa and sd.sdpa and not StaticDecoder(model).sdpa, "auto picks matmul on the CPU"
    assert torch.equal(sd.generate(enc, 40, do_sample=False), mm.generate(enc, 40, do_sample=False))
    cont = [[[5, 6, 7], [8]], [[9, 10], [11, 12]], [[13], [14, 15, 16]]]
    scored = [[2, 1], [1, 2], [1, 3]]
    torch.testing.assert_close(sd.score(enc, cont, scored), mm.score(enc, cont, scored), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="attention must be"):
        StaticDecoder(model, attention="flash")


def test_eos_pads_the_rest_of_a_row_and_a_second_call_reuses_the_buffers(loaded):
    model, processor = loaded
    enc = _batch(processor)
    dec = StaticDecoder(model, check_every=4)
    greedy = dec.generate(enc, 24, do_sample=False)
    eos = int(greedy[0, 5])  # pretend the 6th greedy token of row 0 is the end of sequence
    out = dec.generate(enc, 24, do_sample=False, eos_token_id=eos)
    for row in range(3):
        hits = (greedy[row] == eos).nonzero()
        if len(hits):
            first = int(hits[0])
            assert torch.equal(out[row, : first + 1], greedy[row, : first + 1])
            assert (out[row, first:] == eos).all()
        else:
            assert torch.equal(out[row], greedy[row])


def test_sampling_is_seeded_and_respects_top_p(loaded):
    model, processor = loaded
    enc = _batch(processor)
    dec = StaticDecoder(model)
    torch.manual_seed(0)
    a = dec.generate(enc, 16, temperature=1.0, top_p=0.9)
    torch.manual_seed(0)
    b = dec.generate(enc, 16, temperature=1.0, top_p=0.9)
    assert torch.equal(a, b)
    torch.manual_seed(0)
    tiny_p = dec.generate(enc, 16, temperature=1.0, top_p=1e-6)  # nucleus of one token = greedy
    assert torch.equal(tiny_p, dec.generate(enc, 16, do_sample=False))


def test_bad_arguments_are_refused(loaded):
    model, processor = loaded
    enc = _batch(processor)
    dec = StaticDecoder(model)
    with pytest.raises(ValueError, match="max_new_tokens"):
        dec.generate(enc, 0)
    right = {k: v for k, v in enc.items()}
    right["attention_mask"] = enc["attention_mask"].flip(1)
    with pytest.raises(ValueError, match="right-padded"):
        dec.generate(right, 4)


def test_fused_weights_give_the_same_tokens_and_follow_weight_updates(loaded):
    model, processor = loaded
    enc = _batch(processor)
    plain = StaticDecoder(model).generate(enc, 24, do_sample=False)
    fused = StaticDecoder(model, fuse_weights=True)
    assert torch.equal(fused.generate(enc, 24, do_sample=False), plain)
    layer = model.model.language_model.layers[0]
    saved = layer.mlp.up_proj.weight.detach().clone()
    try:
        with torch.no_grad():
            layer.mlp.up_proj.weight.mul_(3.0)  # a training step changed the policy
        changed = StaticDecoder(model).generate(enc, 24, do_sample=False)
        assert not torch.equal(changed, plain)
        fused.refresh_weights()
        assert torch.equal(fused.generate(enc, 24, do_sample=False), changed)
    finally:
        with torch.no_grad():
            layer.mlp.up_proj.weight.copy_(saved)


def test_prefix_sharing_prefills_once_and_matches_repeated_prompts(loaded):
    model, processor = loaded
    enc = _batch(processor)
    dec = StaticDecoder(model)
    shared = dec.generate(enc, 16, do_sample=False, num_return_sequences=3)
    repeated = {
        k: (v.repeat_interleave(3, dim=0) if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v)
        for k, v in enc.items()
    }
    # the processor's video tensors are per video, in row order: repeat each row's videos in place
    n_vid = [2, 1, 0]
    grids = enc["video_grid_thw"].split(n_vid[:2])
    patches = enc["pixel_values_videos"].split([int(g.prod(-1).sum()) for g in grids])
    repeated["video_grid_thw"] = torch.cat([g for g in grids for _ in range(3)])
    repeated["pixel_values_videos"] = torch.cat([p for p in patches for _ in range(3)])
    if "second_per_grid_ts" in enc:
        ts = torch.as_tensor(enc["second_per_grid_ts"]).split(n_vid[:2])
        repeated["second_per_grid_ts"] = torch.cat([t for t in ts for _ in range(3)])
    assert shared.shape == (9, 16)
    assert torch.equal(shared, dec.generate(repeated, 16, do_sample=False))
    for row in range(3):  # greedy copies of one prompt are identical
        assert (shared[3 * row : 3 * row + 3] == shared[3 * row]).all()
    torch.manual_seed(0)
    sampled = dec.generate(enc, 16, temperature=1.0, num_return_sequences=3)
    assert not all(torch.equal(sampled[3 * r], sampled[3 * r + 1]) for r in range(3)), "copies sample independently"


def test_per_prompt_copies_match_each_prompts_own_rows(loaded):
    """num_return_sequences as a list (GRPO's G ordered + k shuffled rollouts in one batch): prompt p's rows are
    those of its own prompt, adjacent, in prompt order."""
    model, processor = loaded
    enc = _batch(processor)
    dec = StaticDecoder(model)
    copies = [2, 1, 3]
    mixed = dec.generate(enc, 16, do_sample=False, num_return_sequences=copies)
    assert mixed.shape == (6, 16)
    single = dec.generate(enc, 16, do_sample=False)
    expect = single.repeat_interleave(torch.tensor(copies), dim=0)
    assert torch.equal(mixed, expect)
    assert torch.equal(dec.generate(enc, 16, do_sample=False, num_return_sequences=[3, 3, 3]),
                       dec.generate(enc, 16, do_sample=False, num_return_sequences=3))  # fmt: skip
    with pytest.raises(ValueError, match="2 entries for 3 prompts"):
        dec.generate(enc, 4, num_return_sequences=[1, 2])
    with pytest.raises(ValueError, match=">= 1"):
        dec.generate(enc, 4, num_return_sequences=[1, 0, 2])


def _sorted_nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """transformers' rule, written independently: keep tokens in order of probability until the mass reaches top_p."""
    keep = torch.zeros_like(logits, dtype=torch.bool)
    probs = torch.softmax(logits.double(), dim=-1)
    for r in range(logits.shape[0]):
        order = torch.argsort(probs[r], descending=True)
        mass = 0.0
        for t in order.tolist():
            keep[r, t] = True
            mass += float(probs[r, t])
            if mass >= top_p:
                break
    return keep


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.95, 0.999])
def test_top_p_bisection_keeps_the_sorted_nucleus(top_p):
    from vqinsight.fastdecode import top_p_bisect

    g = torch.Generator().manual_seed(int(top_p * 1000))
    rows = [
        torch.randn(300, generator=g) * 0.1,  # nearly flat (random weights): most of the vocabulary is kept
        torch.randn(300, generator=g) * 3.0,  # peaked: a few tokens
        torch.randn(300, generator=g) * 8.0,  # one token dominates
        torch.cat([torch.full((5,), 4.0), torch.randn(295, generator=g)]),  # a tie group at the top
    ]
    logits = torch.stack(rows).float()
    out = top_p_bisect(logits, top_p)
    kept = torch.isfinite(out)
    assert torch.equal(out[kept], logits[kept]), "kept logits are unchanged"
    ref = _sorted_nucleus(logits, top_p)
    # the sorted rule breaks the tie of row 3 by position; bisection keeps the whole tie group
    for r in range(3):
        assert torch.equal(kept[r], ref[r]), (r, int(kept[r].sum()), int(ref[r].sum()))
    assert (kept[3] >= ref[3]).all() and int(kept[3].sum()) <= int(ref[3].sum()) + 4
    assert kept.any(dim=-1).all(), "the most probable token always stays"


def test_bisection_and_sort_draw_the_same_tokens(loaded):
    """Same seed, same Gumbel noise, same nucleus: the CUDA default (bisect) samples what the CPU default does."""
    model, processor = loaded
    enc = _batch(processor)
    sort, bisect = StaticDecoder(model, top_p_method="sort"), StaticDecoder(model, top_p_method="bisect")
    assert not StaticDecoder(model).bisect_top_p, "auto sorts on the CPU"
    for top_p in (0.5, 0.95):
        torch.manual_seed(3)
        a = sort.generate(enc, 24, temperature=1.0, top_p=top_p)
        torch.manual_seed(3)
        b = bisect.generate(enc, 24, temperature=1.0, top_p=top_p)
        assert torch.equal(a, b), top_p
    with pytest.raises(ValueError, match="top_p_method"):
        StaticDecoder(model, top_p_method="heap")


def test_length_buckets_reuse_one_cache_across_prompt_lengths(loaded):
    model, processor = loaded
    enc = _batch(processor)
    exact = StaticDecoder(model)
    assert exact.length_bucket == 1, "exact lengths on the CPU by default"
    assert not exact.compiled and not exact.bisect_top_p, "compiled on CUDA only by default: the CPU step is eager"
    dec = StaticDecoder(model, length_bucket=64)
    out = dec.generate(enc, 20, do_sample=False)
    assert torch.equal(out, exact.generate(enc, 20, do_sample=False))
    (key,) = dec._states
    assert key[1] % 64 == 0 and key[1] >= enc["input_ids"].shape[1] + 20
    state = dec._states[key]
    # one more left-pad column: a longer prompt in the same bucket reuses the cache (stale slots are masked)
    longer = dict(enc)
    for name in ("input_ids", "attention_mask", "mm_token_type_ids"):
        if name in enc:
            pad = processor.tokenizer.pad_token_id if name == "input_ids" else 0
            longer[name] = torch.nn.functional.pad(enc[name], (1, 0), value=pad)
    if key[1] >= longer["input_ids"].shape[1] + 20:
        again = dec.generate(longer, 20, do_sample=False)
        assert dec._states[key] is state
        assert torch.equal(again, out)
    with pytest.raises(ValueError, match="length_bucket"):
        StaticDecoder(model, length_bucket=0)


def test_a_failing_compile_falls_back_to_the_eager_step(loaded, monkeypatch, caplog):
    model, processor = loaded
    enc = _batch(processor)
    calls = []

    def broken_compile(fn, **kw):
        def run(*a, **k):
            calls.append(fn.__name__)
            raise RuntimeError("no working C compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    dec = StaticDecoder(model, compile=True, top_p_method="bisect")
    assert dec.compiled
    with caplog.at_level("WARNING", logger="vqinsight.fastdecode"):
        torch.manual_seed(0)
        out = dec.generate(enc, 12, temperature=1.0, top_p=0.9)
    assert not dec.compiled and sorted(set(calls)) == ["_forward", "top_p_bisect"]
    assert "running it eagerly" in caplog.text
    torch.manual_seed(0)
    assert torch.equal(out, StaticDecoder(model, top_p_method="bisect").generate(enc, 12, temperature=1.0, top_p=0.9))


def test_a_compiled_step_compiles_once_across_batch_and_length_changes(loaded):
    """Batch, cache length and output width are dynamic from the first compile: GRPO's smaller shuffled batch and a
    longer completion cap reuse it (left to dynamo, each was one more compile, ~40 s on the 7B)."""
    import torch._dynamo

    model, processor = loaded
    enc = _batch(processor)
    torch._dynamo.reset()
    frames: list[int] = []

    def backend(gm, example_inputs):
        frames.append(len(example_inputs))
        return gm.forward  # run the captured graph as is: this counts compiles, it does not need inductor

    dec = StaticDecoder(model, length_bucket=64)
    dec.compiled = True
    dec._forward_fn = torch.compile(dec._forward, backend=backend)
    eager = StaticDecoder(model, length_bucket=64)
    # batch 6, 3, 2, 9 and two cache-length buckets; without the text-only third row the videos are the same
    for rows, new, g in ((3, 8, 2), (3, 8, 1), (2, 70, 1), (3, 40, 3)):
        sub = {k: v[:rows] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v for k, v in enc.items()}
        out = dec.generate(sub, new, do_sample=False, num_return_sequences=g)
        assert torch.equal(out, eager.generate(sub, new, do_sample=False, num_return_sequences=g))
    assert len(frames) == 1, f"{len(frames)} compiles"
    torch._dynamo.reset()


def test_scoring_from_the_generation_cache_equals_a_prefill_of_the_same_context(loaded):
    """score_after_generate (the judge's margin without a second prefill) against score() over a prompt that is
    the same context written out: prompt + the first kept[b] generated tokens of each row."""
    import copy

    model, processor = loaded
    # sharper attention than the random init's near-uniform one, so that a wrong rotary position shows
    model = copy.deepcopy(model)
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            layer.self_attn.q_proj.weight.mul_(20.0)
    enc = _batch(processor)
    dec = StaticDecoder(model)
    n = 12
    with pytest.raises(RuntimeError, match="needs the state of a generate"):
        dec.score_after_generate([0, 0, 0], [[[5]]] * 3, [[1]] * 3)
    out = dec.generate(enc, n, do_sample=False, reserve_tokens=16)
    assert dec.room_after_generate() >= 16
    kept = [0, 5, n - 1]  # the prompt alone, a few new tokens, every new token in the cache
    cont = [[[5, 6, 7], [8]], [[9, 10], [11, 12]], [[13], [14, 15, 16]]]
    scored = [[2, 1], [1, 2], [1, 3]]
    with pytest.raises(ValueError, match="kept count"):
        dec.score_after_generate([0, 5, n], cont, scored)
    with pytest.raises(ValueError, match="do not fit"):
        dec.score_after_generate(kept, [[[5] * 40, [8]]] + cont[1:], [[1, 1]] + scored[1:])
    got = dec.score_after_generate(kept, cont, scored)
    with pytest.raises(RuntimeError, match="needs the state of a generate"):
        dec.score_after_generate(kept, cont, scored)  # its buffers were written

    # the same contexts, written out and prefilled
    width = enc["input_ids"].shape[1] + max(kept)
    ctx = {}
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        if key not in enc:
            continue
        src = enc[key]
        new = torch.zeros(src.shape[0], width, dtype=src.dtype)
        for r, k in enumerate(kept):
            tail = out[r, :k] if key == "input_ids" else torch.full((k,), 1 if key == "attention_mask" else 0)
            row = torch.cat([src[r], tail.to(src.dtype)])
            new[r, width - len(row) :] = row
        ctx[key] = new
    ctx.update({k: v for k, v in enc.items() if k not in ctx})
    want = StaticDecoder(model).score(ctx, cont, scored)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # and the generation itself is unchanged by the reserve
    assert torch.equal(out, StaticDecoder(model).generate(enc, n, do_sample=False))
