"""Stage-3 pairwise judging throughput: the batch engine against the static engine and transformers generate().

    python -m vqinsight.bench judge --out $OUT/judge.json                       # 7B architecture, bf16, one GPU
    python -m vqinsight.bench judge --size tiny --prompts 1 --videos 4 --frames 4 --frame-size 56 \\
        --new-tokens 8 --max-batch 4 --batch 3 --naive 1 --out /tmp/judge.json  # CPU smoke run

Stage 3 judges all C(N, 2) pairs of each prompt's N = 10 videos in both orders (90 judgments per prompt). Every
engine runs the project's ``vqinsight.judge`` Judge on the same rows: the full-style comparison prompt, two
16-frame 448×448 videos = 4,096 video tokens, random weights, greedy, ``--new-tokens`` new tokens, eos off (random
weights never emit it), so every judgment runs to its cap. Phases, each written to the JSON as it ends:

* ``batch``: engine "batch" (``batchdecode.BatchDecoder``): each video encoded once (``VisionCache``), continuous
  batching over ``--max-batch`` slots, system prompt + first video prefilled once per group. ``--prompts`` prompts
  so that the slots fill. Generation alone, then (``--margin``) with the answer margin scored from each row's cache.
* ``mixed``: the same rows with lengths forced per row, uniform in [``--min-tokens``, ``--new-tokens``] (one draw
  per judgment from a fixed seed): the batch engine with continuous refill against the same engine refilling only
  when the whole batch is done (fixed batching with early exit: what forced eos gives a fixed batch).
* ``static``: engine "static" (``fastdecode.StaticDecoder``, CUDA graph, compiled step) in batches of ``--batch``
  over the first ``--static-judgments`` judgments; generation, then the margin pass.
* ``generate``: engine "hf" (processor + transformers ``generate()``) on one batch of ``--batch`` judgments, after
  a 16-token call on the same batch (warm).
* ``naive``: engine "hf", one pair per call, ``--naive`` judgments (warm).

Agreement: greedy tokens of each engine against the batch engine's on the judgments both made (identical rows,
first divergence); where they diverge, the batch engine's logits at that step are recomputed by a prefill of prompt +
common tokens, and the logit difference of the two engines' tokens is reported (a near tie at bf16 precision is why
greedy tokens diverge). Ceilings measured in the same run (bf16 matmul rate, device copy bandwidth) give a floor
time per judgment from the counted prefill tokens and the bytes each decode step reads.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from vqinsight.bench.common import matmul_peak_tflops, peak_gib, reset_peak, timed, write_result
from vqinsight.provenance import atomic_write_json, device_info, package_versions

log = logging.getLogger(__name__)
ISSUE_ESTIMATE = 7.5  # judgments/s the issue estimates as within reach on one H100


class ArrayLoader:
    """The judge's media loader over in-memory frames (path -> (T, H, W, 3) uint8)."""

    def __init__(self, videos: dict[str, np.ndarray]) -> None:
        self.videos = videos

    def __call__(self, path: str, media_type: str) -> np.ndarray:
        return self.videos[path]


def make_rows(prompt: int, n_videos: int) -> list[dict[str, Any]]:
    """One comparison row per unordered pair of prompt ``prompt``'s videos."""
    return [
        {
            "sample_id": f"bench/p{prompt}/{i}-{j}",
            "task": "comparison",
            "media": [f"p{prompt}v{i}", f"p{prompt}v{j}"],
            "media_type": "video",
            "prompt_text": "A corgi runs along a beach at sunset, waves rolling in, cinematic lighting.",
            "gt_choice": "A",
        }
        for i, j in itertools.combinations(range(n_videos), 2)
    ]


def copy_bandwidth(device: Any, gib: float = 2.0) -> float:
    """Device-to-device copy rate in GB/s (bytes read + written), best of 5."""
    import torch

    n = int(gib * 2**30) // 2
    a = torch.empty(n, dtype=torch.bfloat16, device=device).normal_()
    b = torch.empty_like(a)
    b.copy_(a)
    best = min(timed(lambda: b.copy_(a), device)[1] for _ in range(5))
    return 2 * a.numel() * 2 / best / 1e9


def agreement(ref: dict[str, list[int]], other: dict[str, list[int]]) -> dict[str, Any]:
    """Identical rows and first divergences of ``other``'s tokens against ``ref``'s on the keys both have."""
    keys = [k for k in other if k in ref]
    firsts = []
    for k in keys:
        a, b = ref[k], other[k]
        n = min(len(a), len(b))
        d = next((i for i in range(n) if a[i] != b[i]), n if len(a) == len(b) else n)
        firsts.append(d if d < max(len(a), len(b)) else None)
    div = [d for d in firsts if d is not None]
    return {
        "rows": len(keys),
        "identical": len(keys) - len(div),
        "first_divergence_median": float(np.median(div)) if div else None,
        "first_divergence_min": min(div) if div else None,
        "diverged": {k: d for k, d in zip(keys, firsts, strict=True) if d is not None},
    }


def free(*objs: Any) -> None:
    import torch

    for o in objs:
        if getattr(o, "batch", None) is not None:
            o.batch._slots = o.batch._store = None
        if getattr(o, "decoder", None) is not None:
            o.decoder._states.clear()
            o.decoder._last_generation = None
            o.decoder.fused = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run(a: argparse.Namespace, res: dict[str, Any]) -> None:
    import torch

    from vqinsight import records
    from vqinsight.answer_format import answer_prefix
    from vqinsight.batchdecode import BatchDecoder
    from vqinsight.bench.archs import build_model, count_params
    from vqinsight.judge import batched, engine, formats
    from vqinsight.models.tiny import build_processor, build_tokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tokenizer = build_tokenizer()
    model = build_model(a.size, tokenizer, device, dtype, seed=0).eval()
    model.generation_config.eos_token_id = None  # random weights: every judgment runs to its cap
    pixels = a.frame_size * a.frame_size
    processor = build_processor(tokenizer, video_min_pixels=pixels, video_max_pixels=pixels)
    rng = np.random.default_rng(0)
    videos = {
        f"p{p}v{i}": rng.integers(0, 256, (a.frames, a.frame_size, a.frame_size, 3), dtype=np.uint8)
        for p in range(a.prompts)
        for i in range(a.videos)
    }
    loader = ArrayLoader(videos)
    items = records.expand([r for p in range(a.prompts) for r in make_rows(p, a.videos)])
    rows = [it.row for it in items]
    keys = [it.key for it in items]
    n = len(items)
    limits = [int(x) for x in np.random.default_rng(1).integers(a.min_tokens, a.new_tokens + 1, n)]
    res["shape"] = {"prompts": a.prompts, "videos_per_prompt": a.videos, "judgments": n, "frames": a.frames,
                    "frame_size": a.frame_size, "new_tokens": a.new_tokens, "max_batch": a.max_batch,
                    "fixed_batch": a.batch}  # fmt: skip
    if device.type == "cuda":
        res["ceilings"] = {"matmul": matmul_peak_tflops(device), "copy_GBps": copy_bandwidth(device)}
    atomic_write_json(a.out, res)
    kw = {"fmt": "vqinsight", "style": "full", "max_new_tokens": a.new_tokens}
    verdicts = formats.CANDIDATES["comparison"]
    tokens: dict[str, dict[str, list[int]]] = {}

    def fill(judge) -> float:
        judge.vision.entries.clear()
        judge.vision.hits = judge.vision.misses = 0

        def go():  # as the batch engine fills it: the processor in threads, then the tower
            judge.vision.prefetch([((name, "video"), "video", lambda name=name: videos[name]) for name in videos])

        return timed(go, device)[1]

    ctx = {"jb": None, "t_vis": 0.0}

    def batch_judge():
        if ctx["jb"] is None:
            jb = engine.Judge(model, processor, loader, engine="batch", max_batch=a.max_batch,
                              cache_items=len(videos), **kw)  # fmt: skip
            jb._eos_ids = lambda: []  # as generation_config.eos_token_id = None for generate()
            jb.batch.timing = True
            if a.cuda_graph is not None:
                jb.batch.use_cuda_graph = a.cuda_graph
            jb.generate(rows[:2], limits=[4, 4])  # kernels and allocator warm (the real shape is captured below)
            ctx["t_vis"] = fill(jb)
            res["vision"] = {"videos": len(videos), "s": ctx["t_vis"], "s_per_video": ctx["t_vis"] / len(videos)}
            ctx["jb"] = jb
        jb = ctx["jb"]
        jb.batch.max_batch, jb.batch.prefix_slots, jb.batch.share_kv = a.max_batch, max(4, a.max_batch // 8), True
        return jb

    def probe(name: str) -> None:
        """Agreement of engine ``name``'s tokens with the batch engine's, logits recomputed at divergences."""
        if "batch" not in tokens or name not in tokens:
            return
        ag = agreement(tokens["batch"], tokens[name])
        dec = BatchDecoder(model, max_batch=1)
        jp = engine.Judge(model, processor, loader, engine="batch", max_batch=1, cache_items=4, **kw)
        diffs = []
        for k, d in list(ag["diverged"].items())[: a.probe]:
            req = batched.row_requests(jp, [rows[keys.index(k)]])[0]
            logits = dec.logits_after(req, tokens["batch"][k][:d])
            logits[jp.suppress] = float("-inf")
            x, y = tokens["batch"][k][d], tokens[name][k][d]
            top = logits.topk(2).values
            diffs.append({"key": k, "step": d, "logit_ours": float(logits[x]), "logit_theirs": float(logits[y]),
                          "top2_gap": float(top[0] - top[1])})  # fmt: skip
        ag["probed"], ag["diverged"] = diffs, len(ag["diverged"])
        res.setdefault("agreement", {})[name] = ag
        free(jp)

    def ratio(name: str) -> None:
        ours = res.get("batch", {}).get("judgments_per_s")
        if ours and name in ("static", "generate", "naive") and name in res:
            res.setdefault("ratios", {})[f"batch_over_{name}"] = ours / res[name]["judgments_per_s"]

    def ph_batch():
        jb = batch_judge()
        reset_peak(device)
        _, t = timed(lambda: jb.generate(rows), device)
        tokens["batch"] = dict(zip(keys, jb.last_tokens, strict=True))
        st = dict(jb.batch.stats)
        res["batch"] = {"generate_s": t, "judgments_per_s": n / (ctx["t_vis"] + t), "stats": st,
                        "peak_GiB": peak_gib(device)}  # fmt: skip
        res.setdefault("ratios", {})["of_issue_estimate_7.5"] = res["batch"]["judgments_per_s"] / ISSUE_ESTIMATE
        if "ceilings" in res:
            res["floor"] = floor(res, count_params(model.config), model)
            res["ratios"]["of_floor"] = res["batch"]["judgments_per_s"] / res["floor"]["judgments_per_s"]
        log.info("batch engine: %.2f judgments/s (%s)", res["batch"]["judgments_per_s"], st)
        free(jb)

    def ph_margin():
        jb = batch_judge()
        _, t = timed(lambda: jb.generate(rows, verdicts=verdicts), device)
        same = jb.last_tokens == list(tokens.get("batch", {}).values())
        res["batch_with_margin"] = {"generate_s": t, "judgments_per_s": n / (ctx["t_vis"] + t),
                                    "margin_rows": dict(jb.margin_stats), "stats": dict(jb.batch.stats),
                                    "same_tokens": same}  # fmt: skip
        free(jb)

    def ph_mixed():
        jb = batch_judge()
        out = {"limits": {"min": min(limits), "max": max(limits), "mean": float(np.mean(limits))}}
        got = {}
        for mode in ("continuous", "wave"):
            jb.batch.refill = mode
            _, t = timed(lambda: jb.generate(rows, limits=limits), device)
            got[mode] = list(jb.last_tokens)
            out[mode] = {"generate_s": t, "judgments_per_s": n / t, "stats": dict(jb.batch.stats),
                         "useful_tokens": sum(limits)}  # fmt: skip
            log.info("mixed lengths, %s refill: %.1f s", mode, t)
            res["mixed"] = out
            atomic_write_json(a.out, res)
        jb.batch.refill = "continuous"
        out["continuous_over_wave"] = out["wave"]["generate_s"] / out["continuous"]["generate_s"]
        out["same_tokens"] = got["continuous"] == got["wave"]
        out["lengths_as_forced"] = [len(x) for x in got["continuous"]] == limits
        free(jb)

    def ph_variants():
        for var in [v for v in a.variants.split(",") if v]:
            size, _, mode = var.partition(":")
            if mode not in ("", "copy"):
                raise ValueError(f"variant {var!r}: SLOTS or SLOTS:copy")
            jb = batch_judge()
            dec = jb.batch
            dec.max_batch, dec.prefix_slots, dec.share_kv = int(size), max(4, int(size) // 8), mode != "copy"
            reset_peak(device)
            _, t = timed(lambda jb=jb: jb.generate(rows), device)
            ag = agreement(tokens["batch"], dict(zip(keys, jb.last_tokens, strict=True))) if "batch" in tokens else {}
            ag.pop("diverged", None)
            res.setdefault("batch_variants", {})[var] = {
                "generate_s": t, "judgments_per_s": n / (ctx["t_vis"] + t), "stats": dict(dec.stats),
                "peak_GiB": peak_gib(device), "agreement_with_batch": ag,
            }  # fmt: skip
            log.info("batch engine, variant %s: %.2f judgments/s", var, n / (ctx["t_vis"] + t))
            free(jb)
            atomic_write_json(a.out, res)

    def ph_static():
        m = min(n, a.static_judgments)
        js = engine.Judge(model, processor, loader, engine="static", cache_items=len(videos), **kw)
        js._eos_ids = lambda: []
        js.max_new_tokens = 4
        js.generate(rows[: a.batch])  # compile + kernels (the 512-token state is captured in the first batch)
        js.max_new_tokens = a.new_tokens
        reset_peak(device)
        t_vis = fill(js)
        t_gen = t_margin = 0.0
        got = {}
        for s in range(0, m, a.batch):
            part = rows[s : min(m, s + a.batch)]
            comps, t = timed(lambda part=part: js.generate(part), device)
            t_gen += t
            got.update(zip(keys[s : s + len(part)], js.last_tokens, strict=True))
            _, t = timed(lambda part=part, comps=comps: js.candidate_probs(
                part, [answer_prefix(c) for c in comps], verdicts), device)  # fmt: skip
            t_margin += t
        tokens["static"] = got
        res["static"] = {"judgments": m, "vision_s": t_vis * m / n, "generate_s": t_gen, "margin_s": t_margin,
                         "judgments_per_s": m / (t_vis * m / n + t_gen),
                         "judgments_per_s_with_margin": m / (t_vis * m / n + t_gen + t_margin),
                         "margin_rows": dict(js.margin_stats), "peak_GiB": peak_gib(device)}  # fmt: skip
        log.info("static engine: %.2f judgments/s", res["static"]["judgments_per_s"])
        free(js)

    def ph_generate():
        jh = engine.Judge(model, processor, loader, engine="hf", **kw)
        part = rows[: a.batch]
        jh.max_new_tokens = 16
        _, t_cold = timed(lambda: jh.generate(part), device)  # first call on this batch (short)
        jh.max_new_tokens = a.new_tokens
        reset_peak(device)
        _, t = timed(lambda: jh.generate(part), device)
        tokens["generate"] = dict(zip(keys[: len(part)], jh.last_tokens, strict=True))
        res["generate"] = {"batch": len(part), "generate_s": t, "judgments_per_s": len(part) / t,
                           "first_call_16_tokens_s": t_cold, "peak_GiB": peak_gib(device)}  # fmt: skip
        log.info("generate(), batch %d: %.2f judgments/s", len(part), res["generate"]["judgments_per_s"])
        free(jh)

    def ph_naive():
        if not a.naive:
            return
        jh = engine.Judge(model, processor, loader, engine="hf", **kw)
        jh.max_new_tokens = 16
        jh.generate(rows[:1])
        jh.max_new_tokens = a.new_tokens
        t_all, got = 0.0, {}
        for k, row in list(zip(keys, rows, strict=True))[: a.naive]:
            _, t = timed(lambda row=row: jh.generate([row]), device)
            t_all += t
            got[k] = jh.last_tokens[0]
        tokens["naive"] = got
        res["naive"] = {"judgments": a.naive, "generate_s": t_all, "judgments_per_s": a.naive / t_all}
        free(jh)

    run_phase = {"batch": ph_batch, "margin": ph_margin, "mixed": ph_mixed, "variants": ph_variants,
                 "static": ph_static, "generate": ph_generate, "naive": ph_naive}  # fmt: skip
    with torch.no_grad():
        for name in [x for x in a.phases.split(",") if x]:
            if name not in run_phase:
                raise ValueError(f"unknown phase {name!r}; valid: {', '.join(run_phase)}")
            try:
                run_phase[name]()
                ratio(name)
                probe(name)
            except Exception:  # noqa: BLE001 - one phase failing (an OOM, a kernel) must not lose the others
                res.setdefault("phase_errors", {})[name] = traceback.format_exc()[-3000:]
                log.exception("phase %s failed", name)
                for obj in (ctx["jb"],):
                    if obj is not None:
                        free(obj)
            atomic_write_json(a.out, res)


def floor(res: dict[str, Any], params: dict[str, int], model: Any) -> dict[str, Any]:
    """Time per judgment if the prefill ran at the measured matmul rate (2 FLOP per language-model parameter and
    prefilled token) and each decode step read the language model's weights, every slot's whole own cache and the
    prefix pool once at the measured copy rate; token and step counts are this run's (vision excluded)."""
    st, n = res["batch"]["stats"], res["shape"]["judgments"]
    cfg = model.model.language_model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    prefill_s = 2 * params["language"] * st["prefill_tokens"] / n / (res["ceilings"]["matmul"]["tflops"] * 1e12)
    kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 2  # K and V, bf16
    kv_tokens = st["cache_len"] * st["slots"] + st["pool_len"] * (st["pool_slots"] + 1 if st["share_kv"] else 0)
    step_bytes = 2 * params["language"] + kv_per_token * kv_tokens
    decode_s = step_bytes * st["decode_steps"] / n / (res["ceilings"]["copy_GBps"] * 1e9)
    return {"prefill_s_per_judgment": prefill_s, "decode_s_per_judgment": decode_s, "decode_step_GB": step_bytes / 1e9,
            "judgments_per_s": 1 / (prefill_s + decode_s)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vqinsight.bench judge", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("results/bench/judge.json"))
    ap.add_argument("--size", choices=("7b", "tiny"), default="7b")
    ap.add_argument("--prompts", type=int, default=2, help="prompts (each: all pairs of its videos, both orders)")
    ap.add_argument("--videos", type=int, default=10, help="videos per prompt")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--frame-size", type=int, default=448, help="square frame side in pixels (multiple of 28)")
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--min-tokens", type=int, default=100, help="mixed variant: shortest forced length")
    ap.add_argument("--max-batch", type=int, default=128, help="batch engine: cache slots")
    ap.add_argument("--batch", type=int, default=30, help="judgments per static-engine and generate() batch")
    ap.add_argument("--static-judgments", type=int, default=90, help="judgments timed with the static engine")
    ap.add_argument("--naive", type=int, default=2, help="judgments timed with one pair per generate() call")
    ap.add_argument("--probe", type=int, default=4, help="divergent rows whose logits are recomputed per engine")
    ap.add_argument("--phases", default="batch,static,generate,naive,margin,mixed,variants",
                    help="phases to run, in this order (each written to --out as it ends)")  # fmt: skip
    ap.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                    help="batch engine: replay the decode step as a CUDA graph (default: on CUDA)")  # fmt: skip
    ap.add_argument("--variants", default="",
                    help="batch engine again with other slot counts, e.g. '270,135:copy' (copy: the shared prefix "
                    "copied into every row instead of the pool)")  # fmt: skip
    a = ap.parse_args(argv)
    if a.videos < 2 or a.naive < 0 or a.batch < 1 or not 1 <= a.min_tokens <= a.new_tokens:
        ap.error("--videos must be >= 2, --naive >= 0, --batch >= 1, 1 <= --min-tokens <= --new-tokens")
    res: dict[str, Any] = {
        "bench": "judge",
        "argv": sys.argv,
        "device": device_info(),
        "packages": package_versions(("torch", "transformers")),
    }
    return write_result(a.out, res, lambda: run(a, res))


if __name__ == "__main__":
    sys.exit(main())
