"""Rollout decoding of the Qwen2.5-VL-7B architecture: transformers generate() vs the project's StaticDecoder.

    python -m vqinsight.bench decode --out $OUT/decode.json                  # 7B, bf16, one GPU
    python -m vqinsight.bench decode --size tiny --batches 2 --new-tokens 16 --out /tmp/decode.json   # CPU smoke

Prompt as in the H100 baseline measurement of transformers' generate(): one 16-frame 448×448 video
(2,048 video tokens) between 20 + 80 random text tokens, the same for every row. Random weights. For each batch size
both engines generate ``--new-tokens`` tokens with sampling (temperature 1, top-p 0.95, no eos so every row runs to
the end), after one warm-up call each; the baseline is measured IN THE SAME RUN. Reported: wall seconds,
new tokens/s, ratio to generate(), prefill seconds (transformers forward, both engines share it), decode ms per
step, and peak memory. Before timing, correctness on the real architecture: the StaticDecoder's greedy tokens are
fed back through a plain transformers forward (teacher forcing); the share of positions where transformers'
argmax equals the decoder's token is reported (bf16: near-ties may flip a few), along with the length of the
common prefix with generate()'s own greedy tokens.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from vqinsight.bench.common import is_oom, peak_gib, reset_peak, timed, write_result
from vqinsight.provenance import atomic_write_json, device_info, package_versions

log = logging.getLogger(__name__)


def make_inputs(model, batch: int, device, frames: int = 16, size: int = 448, seed: int = 0) -> dict[str, Any]:
    import torch

    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    gt, gh, gw = frames // 2, size // 14, size // 14
    n_patches = gt * gh * gw
    n_vid = n_patches // 4
    # plain text ids: the byte range of the project's tokenizer (its special tokens sit above it) on the tiny
    # model, ids above every special token on the 152k vocabulary
    lo, hi = (300, 100000) if cfg.text_config.vocab_size > 100000 else (0, 256)
    pre = torch.randint(lo, hi, (20,), generator=g)
    post = torch.randint(lo, hi, (80,), generator=g)
    ids = torch.cat([pre, torch.tensor([cfg.vision_start_token_id]), torch.full((n_vid,), cfg.video_token_id),
                     torch.tensor([cfg.vision_end_token_id]), post])  # fmt: skip
    ids = ids.unsqueeze(0).repeat(batch, 1).to(device)
    p = next(model.parameters())
    pv = torch.randn(n_patches * batch, 3 * 2 * 14 * 14, generator=g).to(device, p.dtype)
    thw = torch.tensor([[gt, gh, gw]] * batch, device=device)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values_videos": pv,
        "video_grid_thw": thw,
        "mm_token_type_ids": (ids == cfg.video_token_id).long() * 2,
    }


def correctness(model, device, n_new: int, shape: tuple[int, int] = (16, 448)) -> dict[str, Any]:
    """The decoder's greedy logits vs a teacher-forced transformers forward over the same tokens; graph vs eager.

    Random weights give nearly flat logits over 152k tokens, so bf16 rounding flips many argmaxes even when the
    computation is right: the logits themselves are compared (relative L2 error and cosine per position)."""
    import torch

    from vqinsight.fastdecode import StaticDecoder

    enc = make_inputs(model, 2, device, *shape, seed=1)
    eager = StaticDecoder(model, use_cuda_graph=False, compile=False)
    recorded: list[torch.Tensor] = []
    sample = eager._sample

    def record(logits):
        recorded.append(logits.clone())
        return sample(logits)

    eager._sample = record
    fast = eager.generate(enc, n_new, do_sample=False)
    graph = StaticDecoder(model, compile=False).generate(enc, n_new, do_sample=False)
    with torch.no_grad():
        full = torch.cat([enc["input_ids"], fast], dim=1)
        kw = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
        model.model.rope_deltas = None
        mm = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(fast)], dim=1)
        logits = model(input_ids=full, attention_mask=torch.ones_like(full), mm_token_type_ids=mm, **kw).logits
        length = enc["input_ids"].shape[1]
        tf = logits[:, length - 1 : -1].float()
    ours = torch.stack(recorded, dim=1)  # (B, n, V)
    rel = ((ours - tf).norm(dim=-1) / tf.norm(dim=-1)).flatten()
    cos = torch.nn.functional.cosine_similarity(ours, tf, dim=-1).flatten()
    top2 = tf.topk(2, dim=-1).values
    return {
        "new_tokens": n_new,
        "logits_rel_l2_error": {"mean": rel.mean().item(), "max": rel.max().item()},
        "logits_cosine_min": cos.min().item(),
        "teacher_forced_argmax_agreement": (tf.argmax(-1) == fast).float().mean().item(),
        "median_top2_gap": (top2[..., 0] - top2[..., 1]).median().item(),
        "median_abs_logit": tf.abs().median().item(),
        "cuda_graph_equals_eager": bool(torch.equal(graph, fast)),
        "fused_compiled_greedy_agreement_with_eager": (
            StaticDecoder(model, fuse_weights=True, compile=True).generate(enc, n_new, do_sample=False) == fast
        )
        .float()
        .mean()
        .item(),
    }


def load_model(size: str):
    """(random-weight model, device); eos off, so every row runs to the end as in the baseline."""
    import torch

    from vqinsight.bench.archs import build_model
    from vqinsight.models.tiny import build_tokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_model(size, build_tokenizer(), device, dtype, seed=0).eval()
    model.generation_config.eos_token_id = None
    return model, device


#: the decoders timed besides generate(): StaticDecoder keyword arguments. "static_decoder" is the eager step (a CUDA
#: graph, sorted top-p, lengths in buckets of 256 on CUDA); "fused" adds the judge's fused QKV and gate/up (frozen
#: weights); "_compiled" adds torch.compile (and with it the bisection top-p on CUDA): "static_decoder_compiled" is
#: the GRPO rollouts' default on CUDA, "fused_compiled" the judge's. "_sort" and "_matmul" undo one change each.
#: In docs/bench/2026-12-02-h200-decode-32-compiled-default.json, measured
#: while compile was briefly the CUDA default, "static_decoder" is today's "static_decoder_compiled" and
#: "static_decoder_eager" today's "static_decoder" with exact lengths.
VARIANTS: dict[str, dict[str, Any]] = {
    "static_decoder": {"compile": False},
    "static_decoder_greedy": {"greedy": True, "compile": False},
    "static_decoder_compiled": {"compile": True},
    "fused": {"fuse_weights": True, "compile": False},
    "fused_compiled": {"fuse_weights": True, "compile": True},
    "fused_compiled_sort": {"fuse_weights": True, "compile": True, "top_p_method": "sort"},
    "fused_compiled_matmul": {"fuse_weights": True, "compile": True, "attention": "matmul"},
}
DEFAULT_VARIANTS = ("static_decoder", "static_decoder_compiled", "fused", "fused_compiled")


def vision_attention(model, batched: bool) -> None:
    """The project's batched vision window attention (what its loader installs) on or off (transformers' loop)."""
    from vqinsight.models.vision_attention import batch_vision_attention, unbatch_vision_attention

    (batch_vision_attention if batched else unbatch_vision_attention)(model)


def top_p_timing(batch: int, vocab: int, device, top_p: float = 0.95, reps: int = 50) -> dict[str, Any]:
    """ms per call of the decode step's top-p masking on (batch, vocab) float32 logits: the sort (transformers' rule,
    the CPU default) and the bisection (the CUDA default), eager and compiled; and whether they keep the same set."""
    import time

    import torch

    from vqinsight.fastdecode import top_p_bisect, top_p_sort

    g = torch.Generator(device=device).manual_seed(0)
    logits = (torch.randn(batch, vocab, generator=g, device=device) * 2.0).float()
    fns = {"sort": top_p_sort, "bisect": top_p_bisect}
    if device.type == "cuda":
        fns["bisect_compiled"] = torch.compile(top_p_bisect)
    out: dict[str, Any] = {"batch": batch, "vocab": vocab, "top_p": top_p}
    kept = {}
    for name, fn in fns.items():
        kept[name] = torch.isfinite(fn(logits, top_p))  # warm-up / compile
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn(logits, top_p)
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[f"{name}_ms"] = 1000 * (time.perf_counter() - t0) / reps
    out["kept_per_row_mean"] = kept["sort"].sum(-1).float().mean().item()
    out["same_set_rows"] = {k: int((v == kept["sort"]).all(-1).sum()) for k, v in kept.items() if k != "sort"}
    return out


def run(a: argparse.Namespace, res: dict[str, Any], model, device) -> None:
    import torch

    from vqinsight.fastdecode import StaticDecoder

    vocab = model.config.text_config.vocab_size
    res["top_p_ms"] = [top_p_timing(b, vocab, device) for b in a.batches]
    log.info("top-p %s", res["top_p_ms"])
    res["correctness"] = correctness(model, device, a.check_tokens, (a.frames, a.frame_size))
    log.info("correctness %s", res["correctness"])
    atomic_write_json(a.out, res)
    sample = {"do_sample": True, "temperature": 1.0, "top_p": 0.95}
    for b in a.batches:
        enc = make_inputs(model, b, device, a.frames, a.frame_size)
        row: dict[str, Any] = {"batch": b, "prompt_tokens": int(enc["input_ids"].shape[1]), "new_tokens": a.new_tokens}
        with torch.no_grad():
            # the prefill alone: transformers as it ships (the vision tower's per-window loop, what generate()
            # runs) and with the project's batched window attention (what the project's decoders run)
            for batched, key in ((False, "prefill_s"), (True, "prefill_batched_vision_s")):
                vision_attention(model, batched)
                model.model.rope_deltas = None
                _, row[key] = timed(lambda enc=enc: model(**enc, use_cache=True, logits_to_keep=1), device)
            model.model.rope_deltas = None
            names = [n for n in a.variants if b in a.variant_batches or n == "static_decoder"]
            for name in (*names, "hf_generate"):
                vision_attention(model, name != "hf_generate")
                if name == "hf_generate":

                    def call(enc=enc):
                        model.model.rope_deltas = None
                        return model.generate(
                            **enc, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, **sample
                        )[:, enc["input_ids"].shape[1] :]

                else:
                    kw = dict(VARIANTS[name])
                    greedy = kw.pop("greedy", False)
                    dec = StaticDecoder(model, timing=True, **kw)

                    def call(enc=enc, dec=dec, greedy=greedy):
                        if greedy:
                            return dec.generate(enc, a.new_tokens, do_sample=False)
                        return dec.generate(enc, a.new_tokens, **sample)

                try:
                    t_first = None
                    if name == "hf_generate":  # a short warm-up: generate() has no per-shape state
                        model.generate(**enc, max_new_tokens=8, min_new_tokens=8, **sample)
                    else:
                        _, t_first = timed(call, device)  # same shapes: compiling and graph capture happen here
                    reset_peak(device)
                    out, t = timed(call, device)
                    assert out.shape == (b, a.new_tokens), out.shape
                    # the decoder times its own split; generate() = total - the separately timed prefill
                    split = dec.last_timing if name != "hf_generate" else {}
                    decode = max(split.get("decode_s", t - row["prefill_s"]), 1e-9)
                    row[name] = {
                        "s": t,
                        "tok_per_s": b * a.new_tokens / t,
                        "decode_ms_per_step": 1000 * decode / max(a.new_tokens - 1, 1),
                        "decode_tok_per_s": b * (a.new_tokens - 1) / decode,
                        "peak_GiB": peak_gib(device),
                        **({"prefill_s": split["prefill_s"]} if split else {}),
                        **({"first_call_s": t_first} if t_first is not None else {}),
                        **({"settings": VARIANTS[name]} if name in VARIANTS else {}),
                    }
                    if name == "hf_generate" and a.hf_repeat:
                        # generate()'s host cost is mostly cuDNN planning attention for each new KV length
                        # (the baseline profile); a second call over the same lengths reuses
                        # those plans, as a long run that has met every length would
                        _, t2 = timed(call, device)
                        row[name]["repeat_same_lengths"] = {
                            "s": t2,
                            "tok_per_s": b * a.new_tokens / t2,
                            "decode_ms_per_step": 1000 * max(t2 - row["prefill_s"], 1e-9) / max(a.new_tokens - 1, 1),
                        }
                except RuntimeError as e:
                    if not is_oom(e):
                        raise
                    row[name] = {"oom": str(e)[:300]}
                    reset_peak(device)
                finally:
                    dec = None
                log.info("batch %d %s: %s", b, name, row[name])
        vision_attention(model, False)
        base = row.get("hf_generate", {})
        for name in names:
            if "tok_per_s" in base and "tok_per_s" in row.get(name, {}):
                row[name]["speedup_tok_per_s"] = row[name]["tok_per_s"] / base["tok_per_s"]
                row[name]["speedup_decode"] = row[name]["decode_tok_per_s"] / base["decode_tok_per_s"]
        if "speedup_tok_per_s" in row.get("static_decoder", {}):
            row["speedup_tok_per_s"] = row["static_decoder"]["speedup_tok_per_s"]
            row["speedup_decode"] = row["static_decoder"]["speedup_decode"]
        res["batches"].append(row)
        atomic_write_json(a.out, res)


def run_groups(a: argparse.Namespace, res: dict[str, Any], model, device) -> None:
    """GRPO's rollout shape: P prompts x G rollouts each. generate(num_return_sequences=G) prefills every copy;
    the decoder prefills each prompt once (prefix sharing) and copies its cache."""
    import torch

    from vqinsight.fastdecode import StaticDecoder

    sample = {"do_sample": True, "temperature": 1.0, "top_p": 0.95}
    # the GRPO trainer's decoder: the project default (its weights change every step, so no fused copies)
    dec = StaticDecoder(model, timing=True)
    for prompts, g in ((a.group_prompts, a.group_size),):
        enc = make_inputs(model, prompts, device, a.frames, a.frame_size)
        row: dict[str, Any] = {"prompts": prompts, "rollouts_per_prompt": g, "new_tokens": a.new_tokens}
        calls = {
            "static_decoder_prefix_shared": lambda enc=enc, g=g: dec.generate(
                enc, a.new_tokens, num_return_sequences=g, **sample
            ),
            "hf_generate": lambda enc=enc, g=g: model.generate(
                **enc, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, num_return_sequences=g, **sample
            )[:, enc["input_ids"].shape[1] :],
        }
        with torch.no_grad():
            for name, call in calls.items():
                vision_attention(model, name != "hf_generate")
                model.model.rope_deltas = None
                if name == "hf_generate":
                    model.generate(**enc, max_new_tokens=8, min_new_tokens=8, num_return_sequences=g, **sample)
                else:
                    call()
                reset_peak(device)
                model.model.rope_deltas = None
                out, t = timed(call, device)
                assert out.shape == (prompts * g, a.new_tokens), out.shape
                row[name] = {"s": t, "tok_per_s": prompts * g * a.new_tokens / t, "peak_GiB": peak_gib(device)}
                if name != "hf_generate":
                    row[name].update(dec.last_timing)
                log.info("group %dx%d %s: %s", prompts, g, name, row[name])
        vision_attention(model, False)
        row["speedup_tok_per_s"] = row["static_decoder_prefix_shared"]["tok_per_s"] / row["hf_generate"]["tok_per_s"]
        res["groups"].append(row)
        atomic_write_json(a.out, res)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vqinsight.bench decode", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("results/bench/decode.json"))
    ap.add_argument("--size", choices=("7b", "tiny"), default="7b")
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--frames", type=int, default=16, help="video frames per prompt (even)")
    ap.add_argument("--frame-size", type=int, default=448, help="square frame side in pixels (a multiple of 28)")
    ap.add_argument("--check-tokens", type=int, default=64, help="greedy tokens for the correctness check")
    ap.add_argument("--group-prompts", type=int, default=4, help="GRPO shape: prompts per step")
    ap.add_argument("--group-size", type=int, default=8, help="GRPO shape: rollouts per prompt (G)")
    ap.add_argument(
        "--no-hf-repeat",
        dest="hf_repeat",
        action="store_false",
        help="skip the second generate() call over the same KV lengths (cuDNN plans cached)",
    )
    ap.add_argument("--skip-batches", action="store_true", help="only the GRPO-shape comparison")
    ap.add_argument(
        "--variant-batches",
        type=int,
        nargs="*",
        default=[32],
        help="batches that also time the --variants besides static_decoder",
    )
    ap.add_argument(
        "--variants",
        nargs="+",
        choices=tuple(VARIANTS),
        default=list(DEFAULT_VARIANTS),
        help="decoders timed at every batch in --variant-batches (static_decoder: at every batch)",
    )
    a = ap.parse_args(argv)
    res: dict[str, Any] = {
        "bench": "decode",
        "argv": sys.argv,
        "baseline": "transformers generate(), same model, prompt and sampling settings, same run",
        "device": device_info(),
        "packages": package_versions(("torch", "transformers")),
        "batches": [],
        "groups": [],
    }

    def body() -> None:
        model, device = load_model(a.size)
        res["params_B"] = sum(p.numel() for p in model.parameters()) / 1e9
        if not a.skip_batches:
            run(a, res, model, device)
        run_groups(a, res, model, device)

    return write_result(a.out, res, body)


if __name__ == "__main__":
    sys.exit(main())
