"""The continuous-batching decoder against transformers' generate() on the tiny Qwen2.5-VL (CPU, eager step)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from vqinsight.batchdecode import BatchDecoder
from vqinsight.batchrequests import Request, Score, requests_from_batch
from vqinsight.models.load import load_model_and_processor, vision_token_ids
from vqinsight.models.tiny import build_tiny


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory):
    torch.set_num_threads(1)
    d: Path = build_tiny(tmp_path_factory.mktemp("models") / "tiny")
    model, processor = load_model_and_processor(str(d))
    return model.eval(), processor


def _video(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (4, 56, 84, 3), dtype=np.uint8)


def _encode(processor, rows):
    """A left-padded processor batch of (videos, text) rows, each video as its own content part."""
    texts, videos = [], []
    for vids, text in rows:
        content = []
        for i, v in enumerate(vids):
            content += [{"type": "text", "text": f"Video {'AB'[i]}:"}, {"type": "video", "video": v}]
        msgs = [{"role": "system", "content": [{"type": "text", "text": "You judge videos."}]},
                {"role": "user", "content": [*content, {"type": "text", "text": text}]}]  # fmt: skip
        texts.append(processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False))
        videos += vids
    processor.tokenizer.padding_side = "left"
    return processor(text=texts, videos=videos or None, padding=True, return_tensors="pt")


def _reference(model, processor, rows, n, eos=None):
    """generate() one row at a time (no padding): each row's new tokens up to and including its eos."""
    sup = vision_token_ids(model)
    outs = []
    for row in rows:
        enc = _encode(processor, [row])
        kw = {"eos_token_id": eos} if eos is not None else {"min_new_tokens": n}
        with torch.no_grad():
            seq = model.generate(**enc, do_sample=False, max_new_tokens=n, suppress_tokens=sup, **kw)
        new = seq[0, enc["input_ids"].shape[1] :].tolist()
        if eos is not None and eos in new:
            new = new[: new.index(eos) + 1]
        outs.append(new)
    return outs


MIXED = [
    ([_video(1), _video(2)], "Which of the two videos is better? Explain in detail, then answer."),
    ([_video(3)], "Rate it."),
    ([], "Say something about video quality xxxxx"),
    ([_video(4), _video(1)], "Which is better?"),
]


def test_greedy_tokens_equal_generate_with_slots_refilled(loaded):
    """Four prompts of different lengths and media through two slots: every row equals its own generate()."""
    model, processor = loaded
    n = 24
    ref = _reference(model, processor, MIXED, n)
    reqs = requests_from_batch(model, _encode(processor, MIXED))
    dec = BatchDecoder(model, max_batch=2, check_every=5)
    out = dec.generate(reqs, n, suppress_token_ids=vision_token_ids(model))
    assert out == ref
    assert dec.stats["admissions"] == 4 and dec.stats["prefix_prefills"] == 0
    sup = set(vision_token_ids(model))
    assert not any(t in sup for row in out for t in row), "vision placeholders are never produced"


def _pairs(n_videos: int):
    """Every ordered pair of n_videos videos (both orders), as comparison rows keyed by their first video."""
    rows, keys = [], []
    for i, j in itertools.permutations(range(n_videos), 2):
        rows.append(([_video(10 + i), _video(10 + j)], "Which video is better? Answer Video A or Video B."))
        keys.append(f"v{i}")
    return rows, keys


def test_prefix_sharing_prefills_each_first_video_once_and_changes_no_token(loaded):
    model, processor = loaded
    rows, keys = _pairs(3)  # 6 judgments, 2 per first video, interleaved in the input order below
    order = [0, 2, 4, 1, 3, 5]
    rows, keys = [rows[i] for i in order], [keys[i] for i in order]
    enc = _encode(processor, rows)
    n = 16
    sup = vision_token_ids(model)
    plain = BatchDecoder(model, max_batch=3).generate(requests_from_batch(model, enc), n, suppress_token_ids=sup)
    shared_reqs = requests_from_batch(model, enc, keys=keys)
    end = model.config.vision_end_token_id
    for r in shared_reqs:  # the prefix ends with video A's block; video B's block follows in the suffix
        assert r.ids[r.share - 1] == end and int((r.ids[r.share :] == end).sum()) == 1
    dec = BatchDecoder(model, max_batch=3, check_every=3)
    shared = dec.generate(shared_reqs, n, suppress_token_ids=sup)
    assert shared == plain, "results come back in request order, whatever the admission order"
    assert dec.stats["prefix_prefills"] == 3 and dec.stats["prefix_hits"] == 3
    own = sum(r.ids.numel() - r.share for r in shared_reqs)
    assert dec.stats["prefill_tokens"] == own + 3 * shared_reqs[0].share, "each prefix once, each suffix once"
    assert plain == _reference(model, processor, rows, n)


def test_per_row_limits_end_rows_early_and_keep_their_tokens(loaded):
    model, processor = loaded
    n = 20
    full = BatchDecoder(model, max_batch=4).generate(requests_from_batch(model, _encode(processor, MIXED)), n)
    caps = [3, 20, 7, 1]
    reqs = requests_from_batch(model, _encode(processor, MIXED), max_new_tokens=caps)
    dec = BatchDecoder(model, max_batch=2, check_every=2)
    out = dec.generate(reqs, n)
    assert [len(o) for o in out] == caps
    assert out == [f[:c] for f, c in zip(full, caps, strict=True)]
    # the short rows freed their slots early: fewer decode steps than two waves of the longest row
    assert dec.stats["decode_steps"] < 2 * n


def test_eos_ends_a_row_as_generate_does(loaded):
    model, processor = loaded
    n = 24
    greedy = _reference(model, processor, MIXED, n)
    eos = greedy[0][5]  # pretend the 6th greedy token of row 0 is the end of sequence
    ref = _reference(model, processor, MIXED, n, eos=eos)
    out = BatchDecoder(model, max_batch=3, check_every=4).generate(
        requests_from_batch(model, _encode(processor, MIXED)), n, eos_token_id=eos,
        suppress_token_ids=vision_token_ids(model),
    )  # fmt: skip
    assert out == ref
    assert len(out[0]) == 6 and out[0][-1] == eos


def test_sampling_is_seeded_and_a_one_token_nucleus_is_greedy(loaded):
    model, processor = loaded
    reqs = requests_from_batch(model, _encode(processor, MIXED[:3]))
    dec = BatchDecoder(model, max_batch=3)
    torch.manual_seed(0)
    a = dec.generate(reqs, 12, do_sample=True, temperature=1.0, top_p=0.9)
    torch.manual_seed(0)
    assert dec.generate(reqs, 12, do_sample=True, temperature=1.0, top_p=0.9) == a
    assert dec.generate(reqs, 12, do_sample=True, top_p=1e-6) == dec.generate(reqs, 12)


def test_copies_of_one_prompt_share_it_whole(loaded):
    """GRPO's G rollouts of one prompt: share everything but the last prompt token."""
    model, processor = loaded
    enc = _encode(processor, MIXED[:2])
    base = requests_from_batch(model, enc)
    reqs = [Request(r.ids, r.positions, r.vision, share=r.ids.numel(), share_key=("p", i))
            for i, r in enumerate(base) for _ in range(3)]  # fmt: skip
    assert all(r.share == r.ids.numel() - 1 for r in reqs)
    dec = BatchDecoder(model, max_batch=4)
    out = dec.generate(reqs, 10)
    single = BatchDecoder(model, max_batch=2).generate(base, 10)
    assert out == [o for o in single for _ in range(3)]
    assert (
        dec.stats["prefix_prefills"] == 2 and dec.stats["prefill_tokens"] == sum(r.ids.numel() - 1 for r in base) + 6
    )


def test_bad_requests_are_refused(loaded):
    model, processor = loaded
    r = requests_from_batch(model, _encode(processor, MIXED[:1]))[0]
    with pytest.raises(ValueError, match="positions must be"):
        Request(r.ids, r.positions[:, :-1])
    with pytest.raises(ValueError, match="outside"):
        Request(r.ids[:5], r.positions[:, :5], r.vision)
    with pytest.raises(ValueError, match="max_new_tokens"):
        BatchDecoder(model).generate([r], 0)
    r = requests_from_batch(model, _encode(processor, MIXED[:1]), keys=["k"])[0]
    assert r.share > 0
    other = Request(r.ids.flip(0), r.positions, share=r.share, share_key="k")
    same = Request(r.ids, r.positions, r.vision, share=r.share, share_key="k")
    with pytest.raises(ValueError, match="differ in their first"):
        BatchDecoder(model, max_batch=1).generate([same, other], 2)


def _hf_logprobs(model, processor, row, tokens):
    """log p of each of ``tokens`` after the row's prompt (and the tokens before it), by one transformers forward."""
    enc = dict(_encode(processor, [row]))
    extra = torch.tensor([tokens])
    n = enc["input_ids"].shape[1]
    enc["input_ids"] = torch.cat([enc["input_ids"], extra], dim=1)
    enc["attention_mask"] = torch.cat([enc["attention_mask"], torch.ones_like(extra)], dim=1)
    if "mm_token_type_ids" in enc:
        enc["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(extra)], dim=1)
    with torch.no_grad():
        logp = torch.log_softmax(model(**enc).logits[0].float(), dim=-1)
    return torch.stack([logp[n - 1 + i, t] for i, t in enumerate(tokens)])


def test_scores_from_the_generation_cache_and_from_scratch_equal_a_transformers_forward(loaded):
    """The judge's margin: continuations after the prompt and the first `kept` generated tokens, summed over
    their last `scored` tokens, with a common head and branches of different lengths."""
    model, processor = loaded
    rows = MIXED[:3]
    reqs = requests_from_batch(model, _encode(processor, rows), keys=["a", "b", "c"])
    kept = [5, 0, 12]

    def spec(i, new):
        k = kept[i]
        tail = new[k : k + 3]
        return Score(k, [tail + [7, 8], tail + [9], tail + [10], [11, 12]], [2, 1, 1, 2])

    dec = BatchDecoder(model, max_batch=2, check_every=3)
    new = dec.generate(reqs, 12, score=spec, reserve_tokens=8)
    assert dec.stats["scored"] == 3
    scratch = dec.score(
        [r.extended(n[:k]) for r, n, k in zip(reqs, new, kept, strict=True)],
        [Score(0, spec(i, new[i]).continuations, spec(i, new[i]).scored) for i in range(3)],
    )
    for i, row in enumerate(rows):
        sp = spec(i, new[i])
        want = torch.stack([
            _hf_logprobs(model, processor, row, new[i][: kept[i]] + c)[-k:].sum()
            for c, k in zip(sp.continuations, sp.scored, strict=True)
        ])  # fmt: skip
        torch.testing.assert_close(dec.scores[i], want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(scratch[i], want, rtol=1e-4, atol=1e-4)
    # no room left: the row is not scored (the caller falls back to score())
    longest = max(range(3), key=lambda i: reqs[i].ids.numel())
    dec.generate(reqs, 12, score=lambda i, new: Score(len(new), [list(range(5, 25))], [1]), reserve_tokens=0)
    assert dec.scores[longest] is None


def test_wave_refill_waits_for_the_whole_batch(loaded):
    model, processor = loaded
    caps = [2, 20, 2, 20]
    reqs = requests_from_batch(model, _encode(processor, MIXED), max_new_tokens=caps)
    cont = BatchDecoder(model, max_batch=2, check_every=2)
    wave = BatchDecoder(model, max_batch=2, check_every=2, refill="wave")
    a, b = cont.generate(reqs, 20), wave.generate(reqs, 20)
    assert a == b
    assert cont.stats["decode_steps"] < wave.stats["decode_steps"]


@pytest.mark.parametrize(("share_kv", "slots", "per"), [(False, 4, 16), (True, 1, 1), (True, 2, 2)])
def test_prefix_pool_sizes_and_copy_mode_change_no_token(loaded, share_kv, slots, per):
    """The prefix copied into each row (share_kv off), or a pool too small for every group at once (rows wait
    for a slot; a full slot is copied to a second one): the same tokens as without sharing."""
    model, processor = loaded
    rows, keys = _pairs(3)
    enc = _encode(processor, rows)
    plain = BatchDecoder(model, max_batch=3).generate(requests_from_batch(model, enc), 10)
    dec = BatchDecoder(model, max_batch=3, share_kv=share_kv, prefix_slots=slots, rows_per_prefix=per)
    assert dec.generate(requests_from_batch(model, enc, keys=keys), 10) == plain
    assert dec.stats["admissions"] == 6
    if per == 1:
        assert dec.stats["prefix_prefills"] == 3, "one prefill per first video, even through one slot"


def test_manual_attention_with_lse_merges_to_full_softmax():
    """The cascade's two-part attention (own keys + pool keys, merged by log-sum-exp) equals one softmax over
    both; a part with every key masked contributes nothing."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 11, 8), torch.randn(2, 3, 11, 8)
    keep = torch.ones(2, 11, dtype=torch.bool)
    keep[0, 9:] = False
    keep[1, :4] = False  # row 1: its first part entirely masked
    bias = torch.zeros(2, 11).masked_fill(~keep, float("-inf"))[:, None, None]
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=8**-0.5)

    class Probe(BatchDecoder):
        def __init__(self):  # only what _attend_lse needs
            self.attention, self.scale = "manual", 8**-0.5

    pr = Probe()
    o1, l1 = pr._attend_lse(q, k[:, :, :4], v[:, :, :4], bias[..., :4])
    o2, l2 = pr._attend_lse(q, k[:, :, 4:], v[:, :, 4:], bias[..., 4:])
    assert torch.isneginf(l1[1]).all() and (o1[1] == 0).all()
    torch.testing.assert_close(BatchDecoder._merge(o1, l1, o2, l2), ref, rtol=1e-5, atol=1e-5)


def test_generate_padded_keeps_the_static_decoders_contract(loaded):
    """GRPO's call (a processor batch, copies per prompt, eos padding) gives the StaticDecoder's tokens."""
    from vqinsight.fastdecode import StaticDecoder

    model, processor = loaded
    enc = _encode(processor, MIXED[:3])
    sup = vision_token_ids(model)
    ref = StaticDecoder(model).generate(enc, 12, do_sample=False, num_return_sequences=[2, 1, 3],
                                        suppress_token_ids=sup)  # fmt: skip
    dec = BatchDecoder(model, max_batch=8)
    got = dec.generate_padded(enc, 12, do_sample=False, num_return_sequences=[2, 1, 3], suppress_token_ids=sup)
    assert torch.equal(got, ref)
    eos = int(ref[0, 4])
    ref_eos = StaticDecoder(model).generate(enc, 12, do_sample=False, eos_token_id=eos, suppress_token_ids=sup)
    got_eos = dec.generate_padded(enc, 12, do_sample=False, eos_token_id=[eos], suppress_token_ids=sup)
    assert torch.equal(got_eos, ref_eos)
    assert dec.stats["prefix_prefills"] == 3


def _kernel_like(offset: float, masked: str = "plus_inf"):
    """A stand-in for the CUDA kernel on the CPU: exact attention, the output shifted by ``offset``, fully masked
    rows marked as flash kernels mark them (``plus_inf``: lse +inf, output NaN) or with finite values
    (``finite``: lse 0, output 1), as PyTorch's memory-efficient kernel did on the first GPU smoke run."""

    def efficient_lse(self, q, k, v, bias):
        sc = torch.matmul(q.float(), k.float().transpose(-1, -2)) * self.scale + bias.float()
        lse = torch.logsumexp(sc, dim=-1)
        out = torch.matmul(torch.softmax(sc, dim=-1), v.float()) + offset
        if masked == "finite":
            return torch.nan_to_num(out, nan=1.0), torch.where(torch.isneginf(lse), 0.0, lse)
        return out, torch.where(torch.isneginf(lse), float("inf"), lse)

    return efficient_lse


@pytest.mark.parametrize("masked", ["plus_inf", "finite"])
def test_a_kernel_marking_masked_rows_its_own_way_is_used_and_gives_the_same_tokens(loaded, monkeypatch, masked):
    """The cascade merges two attention parts by their log-sum-exp, and a part with every key masked (a judgment
    without a shared prefix) must count as -inf there whatever the kernel returns for it (+inf, or finite values:
    the first H100 run's kernel check failed on exactly that); such a kernel passes the check and decodes the
    matmul attention's tokens."""
    model, processor = loaded
    rows, keys = _pairs(3)
    reqs = requests_from_batch(model, _encode(processor, rows), keys=keys)
    ref = BatchDecoder(model, max_batch=4).generate(reqs, 8)
    monkeypatch.setattr(BatchDecoder, "_efficient_lse", _kernel_like(0.0, masked))
    dec = BatchDecoder(model, max_batch=4, attention="efficient")
    assert dec.generate(reqs, 8) == ref
    assert dec.attention == "efficient" and dec.stats["attention"] == "efficient"


def test_a_kernel_that_disagrees_falls_back_naming_the_difference(loaded, monkeypatch, caplog):
    model, processor = loaded
    rows, keys = _pairs(2)
    reqs = requests_from_batch(model, _encode(processor, rows), keys=keys)
    monkeypatch.setattr(BatchDecoder, "_efficient_lse", _kernel_like(0.1))
    dec = BatchDecoder(model, max_batch=2, attention="efficient")
    with caplog.at_level("WARNING", logger="vqinsight.batchdecode"):
        got = dec.generate(reqs, 6)
    assert got == BatchDecoder(model, max_batch=2).generate(reqs, 6)
    assert dec.attention == "manual"
    assert "max |out diff| 0.1" in caplog.text and "using matmul attention" in caplog.text


def test_an_attention_kernel_that_cannot_run_falls_back_to_matmul(loaded):
    """attention="efficient" where PyTorch's memory-efficient kernel does not run (here: the CPU): checked on
    first use, then the matmul attention, with the same tokens."""
    model, processor = loaded
    rows, keys = _pairs(2)
    reqs = requests_from_batch(model, _encode(processor, rows), keys=keys)
    dec = BatchDecoder(model, max_batch=2, attention="efficient")
    assert dec.generate(reqs, 6) == BatchDecoder(model, max_batch=2).generate(reqs, 6)
    assert dec.attention == "manual"
    with pytest.raises(ValueError, match="attention must be"):
        BatchDecoder(model, attention="flash")
