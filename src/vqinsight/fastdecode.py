"""Fast rollout decoding for Qwen2.5-VL: HF prefill, then a static-cache decode step replayed as one CUDA graph.

    from vqinsight.fastdecode import StaticDecoder
    dec = StaticDecoder(model)                      # a Qwen2_5_VLForConditionalGeneration, eval mode
    tokens = dec.generate(enc, max_new_tokens=512, temperature=1.0, top_p=0.95, eos_token_id=eos,
                          suppress_token_ids=vision_ids)   # (B, 512) long, eos-padded after a row's eos

Why (docs/PERFORMANCE.md): `generate()` spends most of each decode step of the 7B model on the host (cuDNN
attention planning for a new KV length every step, the dynamic cache's concatenations, generate's own
bookkeeping), several times what reading the weights and the KV cache once takes on the GPU. This module keeps
the prompt's prefill in transformers (vision tower, 3-D multimodal positions, `rope_deltas`) and replaces the
decode loop:

- **Static KV cache** of (B, kv_heads, prompt_len + max_new_tokens, head_dim) per layer, filled from the prefill
  cache once; each step writes its key/value at a device-side index (``index_copy_``), so no tensor changes shape.
- **Precomputed positions.** After a text-only prompt tail, Qwen2.5-VL's three M-RoPE position rows are equal, so a
  decode token's rotary embedding is plain RoPE at ``position = non-pad prompt length + rope_delta + i``, kept on the
  device and incremented inside the step.
- **Attention** for one query token runs over the whole static cache with a validity mask, the grouped-query heads
  of a KV group handled by a reshape (never by repeating K/V), so each cached key and value is read once: one
  ``scaled_dot_product_attention`` call with an additive mask on CUDA, two batched matmuls on the CPU.
- **Length buckets.** On CUDA the cache length is rounded up to a multiple of 256 (masked slots), so the next batch,
  whose prompt length is almost always different, reuses the cache and its CUDA graph.
- **No host synchronisation per step.** Sampling (temperature, top-p, Gumbel-max), the EOS bookkeeping, writing
  the token into the output buffer and advancing the counters all happen on the device. On CUDA the whole step is
  captured once as a CUDA graph per batch shape and replayed; the host checks for "all rows finished" only every
  ``check_every`` steps.
- **Compiled on CUDA** by default (``compile=None``): ``torch.compile`` fuses the step's element-wise work, with
  batch and cache length dynamic, so changing GRPO shapes do not recompile; the top-p nucleus is then found by
  bisection instead of a sort. The CPU keeps the eager step.
- **Per-prompt copies.** ``num_return_sequences`` (an int, or one count per prompt) prefills each prompt once and
  copies its cache: GRPO's G rollouts of a prompt, and its frame-shuffled rollouts in the same batch.

The math equals transformers' (same modules for projections, norms and MLP); the CPU test compares greedy tokens
with ``generate()`` on the tiny demo model, and ``python -m vqinsight.bench decode`` compares logits with a
teacher-forced transformers forward on the 7B architecture before timing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def top_p_sort(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """``logits`` (B, V) with every token outside the top-p nucleus set to -inf: transformers' rule (sort, cumsum)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    # drop a token when the mass before it already reaches top_p (the first token always stays)
    drop = (probs.cumsum(dim=-1) - probs) >= top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)


def top_p_bisect(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """``logits`` (B, V) float32 with every token outside the top-p nucleus set to -inf, without a sort.

    The nucleus of the sorted rule (keep the most probable tokens until their mass reaches top_p) is the set of
    tokens whose probability is >= t*, the largest probability value t with mass(p >= t) >= top_p. Probabilities are
    non-negative floats, so their int32 bit patterns order like the values: t* is found by halving the bit interval
    [0, max + 1) 30 times (probabilities are <= 1.0 = 0x3F800000 < 2**30), each halving one masked sum over the
    vocabulary. Differences from the sort: ties at t* are all kept, and the masses are summed in another order.
    """
    probs = torch.softmax(logits, dim=-1)
    bits = probs.view(torch.int32)
    lo = torch.zeros_like(bits[:, :1])  # mass(p >= 0) = 1 >= top_p
    hi = bits.amax(dim=-1, keepdim=True) + 1  # mass(p >= max + ulp) = 0 < top_p
    for _ in range(30):
        mid = lo + (hi - lo) // 2
        ok = torch.where(bits >= mid, probs, 0.0).sum(dim=-1, keepdim=True) >= top_p
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
    return logits.masked_fill(bits < lo, float("-inf"))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


@dataclass
class _State:
    """Device buffers of one (batch, total length) shape; a CUDA graph is captured over exactly these tensors."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    mask: torch.Tensor  # (B, T) bool: cache slots that hold a real token
    tok: torch.Tensor  # (B,) the token fed to the next step
    pos: torch.Tensor  # (B,) its rotary position
    widx: torch.Tensor  # (1,) cache slot it is written to
    ctr: torch.Tensor  # (1,) output column of the token the step produces
    done: torch.Tensor  # (B,) bool: the row emitted eos
    out: torch.Tensor  # (B, max_new) produced tokens
    graph: Any = None


def _check_continuations(continuations: list[list[list[int]]], scored: list[list[int]]) -> int:
    """Refuse uneven continuation counts or scored counts outside 1..len; return the longest continuation."""
    if len({len(c) for c in continuations}) != 1:
        raise ValueError("every row needs the same number of continuations")
    for row, counts in zip(continuations, scored, strict=True):
        for toks, k in zip(row, counts, strict=True):
            if not 1 <= k <= len(toks):
                raise ValueError(f"scored count {k} is outside 1..{len(toks)} for a continuation")
    return max(len(t) for row in continuations for t in row)


class StaticDecoder:
    """Static-cache, CUDA-graph decoding for a Qwen2.5-VL (or Qwen2-VL) conditional-generation model."""

    def __init__(
        self,
        model,
        *,
        use_cuda_graph: bool | None = None,
        check_every: int = 32,
        timing: bool = False,
        fuse_weights: bool = False,
        compile: bool | None = None,
        attention: str = "auto",
        top_p_method: str = "auto",
        length_bucket: int | None = None,
    ) -> None:
        if attention not in ("auto", "matmul", "sdpa"):
            raise ValueError(f"attention must be 'auto', 'matmul' or 'sdpa', got {attention!r}")
        if top_p_method not in ("auto", "sort", "bisect"):
            raise ValueError(f"top_p_method must be 'auto', 'sort' or 'bisect', got {top_p_method!r}")
        if length_bucket is not None and length_bucket < 1:
            raise ValueError(f"length_bucket must be >= 1, got {length_bucket}")
        self.model = model
        self.timing = timing  # synchronise and record the prefill / decode split of the last call in .last_timing
        self.last_timing: dict[str, float] = {}
        base = model.model
        self.lm = base.language_model
        self.layers = list(self.lm.layers)
        attn = self.layers[0].self_attn
        cfg = self.lm.config
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(attn, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
        self.scale = self.head_dim**-0.5
        rot = self.lm.rotary_emb
        self.inv_freq = rot.inv_freq.float()
        self.rope_scaling = float(getattr(rot, "attention_scaling", 1.0))
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.use_cuda_graph = (self.device.type == "cuda") if use_cuda_graph is None else use_cuda_graph
        # attention of the step's query token: "matmul" = two batched matmuls with a float32 softmax; "sdpa" = one
        # scaled_dot_product_attention call over the static cache with an additive mask (the 7 query heads of a KV
        # group as 7 query rows), faster per layer on a GPU (docs/PERFORMANCE.md). "auto": sdpa on
        # CUDA, matmul elsewhere, so the CPU demo's rollouts keep their float summation order.
        self.sdpa = attention == "sdpa" or (attention == "auto" and self.device.type == "cuda")
        cuda = self.device.type == "cuda"
        self.compiled = cuda if compile is None else bool(compile)
        # top-p: "sort" = sort the vocabulary and cut the cumulative mass (transformers' rule); "bisect" = the same
        # nucleus found as a probability threshold by 30 halvings of its float bit pattern (no sort; ties at the
        # threshold are all kept). "auto": bisect when the step is compiled on CUDA (docs/PERFORMANCE.md), the sort
        # otherwise, so the CPU demo's draws stay as they were (uncompiled, the bisection's 30 passes are slower
        # than one sort).
        self.bisect_top_p = top_p_method == "bisect" or (top_p_method == "auto" and cuda and self.compiled)
        self._auto_top_p = top_p_method == "auto"
        # length_bucket: the static cache's length is rounded up to a multiple of it, so prompts of other lengths
        # reuse one cache, one CUDA graph and one compiled step (GRPO and the judge see a new prompt length almost
        # every batch); the extra slots are masked. Default 256 on CUDA, 1 (exact length) elsewhere.
        self.length_bucket = int(length_bucket) if length_bucket is not None else (256 if cuda else 1)
        self.check_every = max(1, int(check_every))
        self._states: dict[tuple, _State] = {}
        self._sampling: dict[str, Any] = {}
        # what score_after_generate needs of the last generate() call; None once another call may have reused the
        # state's buffers
        self._last_generation: dict[str, Any] | None = None
        # fuse_weights: one QKV and one gate/up matrix per layer (4 matmuls per layer instead of 7). They are copies,
        # so a model whose weights change (GRPO) must call refresh_weights() before generating; +~8.5 GB on 7B.
        self.fused: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] | None = None
        if fuse_weights:
            self.refresh_weights()
        # compile: torch.compile fuses the element-wise work (norms, rotary, masking, the top-p search) of the step
        # into few kernels (docs/PERFORMANCE.md). None (the default): on CUDA, off elsewhere (the CPU demo keeps its
        # eager step). The compile costs tens of seconds once per process on the 7B (less with a warm inductor
        # cache); batch, cache length and output width are dynamic (_mark_dynamic), so GRPO's changing shapes do
        # not recompile. If compiling fails (no triton,
        # no C compiler), the step runs eagerly.
        self._forward_fn = self._forward
        self._top_p_fn = top_p_bisect
        if self.compiled:
            self._forward_fn = self._fallback(torch.compile(self._forward), "_forward_fn", self._forward)
            self._top_p_fn = self._fallback(torch.compile(top_p_bisect), "_top_p_fn", top_p_bisect)
        log.info(
            "static decoder on %s (%s): CUDA graph %s, compiled step %s, sdpa %s, fused weights %s, top-p %s",
            self.device, str(self.dtype).removeprefix("torch."), self.use_cuda_graph, self.compiled, self.sdpa,
            fuse_weights, "bisect" if self.bisect_top_p else "sort",
        )  # fmt: skip

    def _fallback(self, compiled, attr: str, eager):
        """``compiled``, replaced by ``eager`` for good if its first call fails (a later failure is raised)."""

        def call(*args):
            try:
                out = compiled(*args)
            except Exception as e:  # noqa: BLE001 - inductor/triton errors have no common base class
                log.warning("torch.compile of the decode step failed (%s: %s); running it eagerly",
                            type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")  # fmt: skip
                self.compiled = False
                self.bisect_top_p = self.bisect_top_p and not self._auto_top_p  # auto: the sort when eager
                setattr(self, attr, eager)
                return eager(*args)
            setattr(self, attr, compiled)
            return out

        return call

    @torch.no_grad()
    def refresh_weights(self) -> None:
        """(Re)build the fused QKV and gate/up weights from the model's current ones."""
        fused = []
        for layer in self.layers:
            a, m = layer.self_attn, layer.mlp
            w_qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], dim=0)
            b_qkv = None
            if a.q_proj.bias is not None:
                b_qkv = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias], dim=0)
            fused.append((w_qkv, b_qkv, torch.cat([m.gate_proj.weight, m.up_proj.weight], dim=0)))
        self.fused = fused

    # ------------------------------------------------------------------------------------------------ one step
    def _forward(self, s: _State) -> torch.Tensor:
        """Logits (B, V) of the next token after s.tok at s.pos, its key/value written at s.widx."""
        b = s.tok.shape[0]
        # the embedding as a function, not the module: decoding needs none of its forward hooks (gradient
        # checkpointing adds some), and calling them would put them under torch.compile's guards
        emb = self.lm.embed_tokens
        h = (F.embedding(s.tok, emb.weight) if type(emb) is torch.nn.Embedding else emb(s.tok))[:, None, :]
        freqs = s.pos.float()[:, None] * self.inv_freq.to(h.device)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.rope_scaling).to(h.dtype)[:, None, None, :]  # (B, 1, 1, hd)
        sin = (emb.sin() * self.rope_scaling).to(h.dtype)[:, None, None, :]
        keep = s.mask[:, None, None, :]
        if self.sdpa:
            bias = torch.zeros(keep.shape, dtype=h.dtype, device=h.device).masked_fill(~keep, float("-inf"))
        g = self.n_heads // self.n_kv
        nq, nk = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        for i, layer in enumerate(self.layers):
            a = layer.self_attn
            x = layer.input_layernorm(h)
            if self.fused is not None:
                qkv = torch.nn.functional.linear(x, self.fused[i][0], self.fused[i][1])
                q, k, v = qkv.split([nq, nk, nk], dim=-1)
            else:
                q, k, v = a.q_proj(x), a.k_proj(x), a.v_proj(x)
            q = q.reshape(b, 1, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, 1, hd)
            k = k.reshape(b, 1, self.n_kv, self.head_dim).transpose(1, 2)  # (B, KV, 1, hd)
            v = v.reshape(b, 1, self.n_kv, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            s.k[i].index_copy_(2, s.widx, k)
            s.v[i].index_copy_(2, s.widx, v)
            qg = q.reshape(b, self.n_kv, g, self.head_dim)  # heads of one kv group are adjacent
            if self.sdpa:
                o = torch.nn.functional.scaled_dot_product_attention(
                    qg, s.k[i], s.v[i], attn_mask=bias, scale=self.scale
                )  # (B, KV, g, hd)
            else:
                scores = torch.matmul(qg, s.k[i].transpose(-1, -2)).float() * self.scale  # (B, KV, g, T)
                scores = scores.masked_fill(~keep, float("-inf"))
                o = torch.matmul(torch.softmax(scores, dim=-1).to(h.dtype), s.v[i])  # (B, KV, g, hd)
            h = h + a.o_proj(o.reshape(b, 1, self.n_heads * self.head_dim))
            x = layer.post_attention_layernorm(h)
            if self.fused is not None:
                gate, up = torch.nn.functional.linear(x, self.fused[i][2]).chunk(2, dim=-1)
                h = h + layer.mlp.down_proj(layer.mlp.act_fn(gate) * up)
            else:
                h = h + layer.mlp(x)
        h = self.lm.norm(h)
        return self.model.lm_head(h)[:, 0].float()

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        cfg = self._sampling
        if cfg["suppress"]:
            logits = logits.index_fill(1, self._suppress_ids, float("-inf"))
        if not cfg["do_sample"]:
            return logits.argmax(dim=-1)
        logits = logits / cfg["temperature"]
        if cfg["top_p"] < 1.0:
            logits = (self._top_p_fn if self.bisect_top_p else top_p_sort)(logits, cfg["top_p"])
        u = torch.rand_like(logits).clamp_(min=1e-20, max=1.0 - 1e-7)
        return (logits - torch.log(-torch.log(u))).argmax(dim=-1)  # Gumbel-max = a draw from softmax(logits)

    def _emit(self, s: _State, nxt: torch.Tensor) -> None:
        eos = self._sampling["eos"]
        if eos is not None:
            nxt = torch.where(s.done, torch.full_like(nxt, eos[0]), nxt)
            s.done |= torch.isin(nxt, self._eos_ids)
        s.out.index_copy_(1, s.ctr, nxt[:, None])
        s.tok.copy_(nxt)

    def _step(self, s: _State) -> None:
        s.mask.index_fill_(1, s.widx, True)
        nxt = self._sample(self._forward_fn(s))
        self._emit(s, nxt)
        s.pos += 1
        s.widx += 1
        s.ctr += 1

    # ------------------------------------------------------------------------------------------------ driver
    def _bucket(self, n: int) -> int:
        return -(-n // self.length_bucket) * self.length_bucket

    def _state(self, b: int, total: int, max_new: int) -> _State:
        key = (b, total, max_new)
        if key not in self._states:
            self._states.clear()  # one shape at a time: the cache is the memory cost
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            kw = {"device": self.device, "dtype": self.dtype}
            shape = (b, self.n_kv, total, self.head_dim)
            zl = {"device": self.device, "dtype": torch.long}
            self._states[key] = _State(
                k=[torch.zeros(shape, **kw) for _ in self.layers],
                v=[torch.zeros(shape, **kw) for _ in self.layers],
                mask=torch.zeros(b, total, dtype=torch.bool, device=self.device),
                tok=torch.zeros(b, **zl),
                pos=torch.zeros(b, **zl),
                widx=torch.zeros(1, **zl),
                ctr=torch.zeros(1, **zl),
                done=torch.zeros(b, dtype=torch.bool, device=self.device),
                out=torch.zeros(b, max_new, **zl),
            )
            if self.compiled:
                self._mark_dynamic(self._states[key])
        return self._states[key]

    @staticmethod
    def _mark_dynamic(s: _State) -> None:
        """Batch, cache length and output width as dynamic dimensions from the first compile on, so a new shape
        (GRPO's shuffled rollouts are a smaller batch; a longer completion cap moves the cache to another length
        bucket) never recompiles. Left to dynamo, each new shape would recompile the step."""
        from torch._dynamo import maybe_mark_dynamic

        for t in (*s.k, *s.v):
            maybe_mark_dynamic(t, 0)
            maybe_mark_dynamic(t, 2)
        for t in (s.mask, s.out):
            maybe_mark_dynamic(t, 0)
            maybe_mark_dynamic(t, 1)
        for t in (s.tok, s.pos, s.done):
            maybe_mark_dynamic(t, 0)

    def _capture(self, s: _State) -> None:
        small = [s.mask, s.tok, s.pos, s.widx, s.ctr, s.done, s.out]
        saved = [t.clone() for t in small]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up (allocator, kernels); its cache writes are overwritten later
                self._step(s)
        torch.cuda.current_stream().wait_stream(stream)
        for t, v in zip(small, saved, strict=True):
            t.copy_(v)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step(s)
        s.graph = graph

    @torch.no_grad()
    def prefill(self, enc: dict[str, Any]):
        """transformers forward over the prompt: (last-position logits, cache, rope_deltas (B, 1))."""
        self.model.model.rope_deltas = None
        out = self.model(**enc, use_cache=True, logits_to_keep=1)
        deltas = self.model.model.rope_deltas
        if deltas is None:
            deltas = torch.zeros(enc["input_ids"].shape[0], 1, dtype=torch.long, device=self.device)
        return out.logits[:, -1].float(), out.past_key_values, deltas

    @torch.no_grad()
    def generate(
        self,
        enc: dict[str, Any],
        max_new_tokens: int,
        *,
        do_sample: bool = True,
        temperature: float = 1.0,
        top_p: float = 1.0,
        eos_token_id: int | list[int] | None = None,
        suppress_token_ids: list[int] | None = None,
        num_return_sequences: int | Sequence[int] = 1,
        reserve_tokens: int = 0,
    ) -> torch.Tensor:
        """New tokens (B * num_return_sequences, max_new_tokens), the copies of a prompt adjacent; after a row's eos
        the row holds eos (the first id when ``eos_token_id`` is a list, any of which ends a row). ``enc`` must be
        left-padded (or unpadded), as transformers' processors do for generation.

        With num_return_sequences = G (GRPO's group), each prompt is prefilled ONCE and its cache copied G times
        (prefix sharing); transformers' generate() prefills every copy. A sequence gives each prompt its own number
        of copies (>= 1; GRPO's G ordered rollouts of a prompt and k shuffled-frame ones in one batch): then
        sum(num_return_sequences) rows. ``reserve_tokens``: cache slots kept free after the new tokens for
        score_after_generate."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if do_sample and temperature <= 0:
            raise ValueError("temperature must be > 0 when sampling")
        ids, am = enc["input_ids"], enc.get("attention_mask")
        if am is None:
            am = torch.ones_like(ids)
        if bool((am[:, -1] == 0).any()):
            raise ValueError("the prompt batch is right-padded; use left padding for generation")
        suppress = tuple(sorted({int(t) for t in suppress_token_ids or ()}))
        if isinstance(eos_token_id, int):
            eos_token_id = [eos_token_id]
        eos_ids = tuple(int(t) for t in eos_token_id) if eos_token_id else None
        sampling = {"do_sample": do_sample, "temperature": float(temperature), "top_p": float(top_p),
                    "eos": eos_ids, "suppress": suppress}  # fmt: skip
        if sampling != self._sampling:
            for st in self._states.values():
                st.graph = None  # the captured step bakes the sampling settings (and these tensors) in
            self._sampling = sampling
            self._eos_ids = torch.tensor(eos_ids or (), dtype=torch.long, device=self.device)
            self._suppress_ids = torch.tensor(suppress, dtype=torch.long, device=self.device)

        self._last_generation = None
        t0 = self._clock()
        if isinstance(num_return_sequences, int):
            copies = [num_return_sequences] * ids.shape[0]
        else:
            copies = [int(c) for c in num_return_sequences]
            if len(copies) != ids.shape[0]:
                raise ValueError(f"num_return_sequences has {len(copies)} entries for {ids.shape[0]} prompts")
        if any(c < 1 for c in copies):
            raise ValueError(f"num_return_sequences must be >= 1, got {num_return_sequences}")
        logits, cache, deltas = self.prefill(enc)
        t1 = self._clock()
        g = copies[0] if len(set(copies)) == 1 else 0  # 0: per-prompt counts
        if g != 1:
            reps = torch.tensor(copies, device=logits.device) if g == 0 else g
            logits, deltas, am = (x.repeat_interleave(reps, dim=0) for x in (logits, deltas, am))
        b, length = sum(copies), ids.shape[1]
        rows = None if g else torch.repeat_interleave(torch.tensor(copies, device=logits.device))
        if reserve_tokens < 0:
            raise ValueError(f"reserve_tokens must be >= 0, got {reserve_tokens}")
        s = self._state(b, self._bucket(length + max_new_tokens + reserve_tokens), max_new_tokens)
        for i, layer_cache in enumerate(cache.layers):
            keys, values = layer_cache.keys, layer_cache.values
            if rows is not None:  # each prompt's copies (one temporary of the copied rows per layer)
                s.k[i][:, :, :length].copy_(keys.index_select(0, rows))
                s.v[i][:, :, :length].copy_(values.index_select(0, rows))
            elif g > 1:  # (P, ...) -> (P*G, ...) in place in the static cache, without a temporary copy
                s.k[i][:, :, :length].view(-1, g, *keys.shape[1:]).copy_(keys[:, None])
                s.v[i][:, :, :length].view(-1, g, *values.shape[1:]).copy_(values[:, None])
            else:
                s.k[i][:, :, :length].copy_(keys)
                s.v[i][:, :, :length].copy_(values)
            s.k[i][:, :, length:].zero_()  # a reused cache holds an earlier batch's keys there (masked anyway)
            s.v[i][:, :, length:].zero_()
        del cache
        s.mask.zero_()
        s.mask[:, :length] = am.bool()
        s.done.zero_()
        s.out.zero_()
        s.ctr.fill_(0)
        self._emit(s, self._sample(logits))  # the first new token comes from the prefill logits
        s.pos.copy_(am.sum(dim=1) + deltas[:, 0].to(torch.long))
        s.widx.fill_(length)
        s.ctr.fill_(1)
        if self.use_cuda_graph and s.graph is None and max_new_tokens > 1:
            self._capture(s)
        for i in range(1, max_new_tokens):
            if s.graph is not None:
                s.graph.replay()
            else:
                self._step(s)
            if eos_ids and i % self.check_every == 0 and bool(s.done.all()):
                s.out[:, i + 1 :] = eos_ids[0]
                break
        out = s.out.clone()
        steps = int(s.widx.item()) - length  # new tokens now in the cache (the last emitted one is not)
        last_prompt = ids[:, -1] if g == 1 else ids[:, -1].repeat_interleave(torch.tensor(copies, device=ids.device))
        self._last_generation = {
            "state": s,
            "length": length,
            "end": length + steps,
            "start": s.pos - steps,  # rotary position of the first new token, per row
            "mask": s.mask.clone(),
            "last_prompt": last_prompt.to(self.device),
        }
        if self.timing:
            t2 = self._clock()
            self.last_timing = {"prefill_s": t1 - t0, "decode_s": t2 - t1}
        return out

    def room_after_generate(self) -> int:
        """Cache slots left after the last generate() for score_after_generate's tokens (-1: no usable state)."""
        g = self._last_generation
        return -1 if g is None else int(g["mask"].shape[1]) - g["end"]

    @torch.no_grad()
    def score_after_generate(
        self, kept: Sequence[int], continuations: list[list[list[int]]], scored: list[list[int]]
    ) -> torch.Tensor:
        """``score`` with the prompts' context read from the last generate() call's cache: no prefill.

        Row b's context is its prompt plus its first ``kept[b]`` new tokens, exactly as generate() produced them;
        ``continuations[b][c]`` follows that context and its last ``scored[b][c]`` tokens are summed. The cache
        slots of the row's later new tokens are masked out and the continuation is written after them, at the
        rotary positions it would have right after the context (attention sees only the mask and the positions, so
        the result is that of a prefill of context + continuation, up to float summation order). The context's
        last token is fed again, because its logits were not kept. Needs the same rows as the last generate()
        (one sequence each) and room_after_generate() > the longest continuation; another generate() or score()
        call in between is an error.
        """
        g = self._last_generation
        if g is None:
            raise RuntimeError("score_after_generate needs the state of a generate() call (none, or reused since)")
        s, length, end = g["state"], g["length"], g["end"]
        b = s.tok.shape[0]
        if len(kept) != b or len(continuations) != b or len(scored) != b:
            raise ValueError(f"{len(kept)} kept counts / {len(continuations)} continuation lists / {len(scored)} "
                             f"scored lists for the {b} rows of the last generate()")  # fmt: skip
        for k in kept:
            if not 0 <= k <= end - length:
                raise ValueError(f"kept count {k} is outside 0..{end - length} (new tokens in the cache)")
        longest = _check_continuations(continuations, scored)
        if longest + 1 > self.room_after_generate():
            raise ValueError(f"{longest + 1} tokens do not fit the {self.room_after_generate()} free cache slots")
        kept_t = torch.tensor(list(kept), dtype=torch.long, device=self.device)
        refed = torch.where(kept_t == 0, g["last_prompt"], s.out.gather(1, (kept_t - 1).clamp(min=0)[:, None])[:, 0])
        cols = torch.arange(g["mask"].shape[1], device=self.device)[None, :]
        first = (length + kept_t - 1)[:, None]  # the slot of the re-fed token: masked, written again after `end`
        base = g["mask"] & ~((cols >= first) & (cols < end))
        pos0 = g["start"] + kept_t - 1
        self._last_generation = None  # the buffers are written below; a second call would see them changed
        return self._teacher_force(s, continuations, scored, base, pos0, end, lead=refed)

    def _teacher_force(
        self,
        s: _State,
        continuations: list[list[list[int]]],
        scored: list[list[int]],
        mask: torch.Tensor,
        pos: torch.Tensor,
        widx: int,
        *,
        lead: torch.Tensor | None = None,
        logp0: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Summed log-probabilities (B, C): each continuation fed token by token from the cache state ``mask`` /
        ``pos`` / ``widx`` (restored for every c). ``logp0`` (B, V) scores a continuation's first token; with
        ``lead`` (B,) instead, that token is fed first as context and its output scores the first token."""
        b, c = len(continuations), len(continuations[0])
        shift = 0 if lead is None else 1
        totals = torch.zeros(b, c, dtype=torch.float32, device=self.device)
        for j in range(c):
            seqs = [row[j] for row in continuations]
            n = max(len(t) for t in seqs) + shift
            tok = torch.zeros(b, n, dtype=torch.long)
            weight = torch.zeros(b, n, dtype=torch.float32)
            for r, t in enumerate(seqs):
                tok[r, shift : shift + len(t)] = torch.tensor(t)
                weight[r, shift + len(t) - scored[r][j] : shift + len(t)] = 1.0
            tok, weight = tok.to(self.device), weight.to(self.device)
            if lead is not None:
                tok[:, 0] = lead
            s.mask.copy_(mask)
            s.pos.copy_(pos)
            s.widx.fill_(widx)
            if logp0 is not None:
                totals[:, j] += weight[:, 0] * logp0.gather(1, tok[:, :1])[:, 0]
            for t in range(n - 1):
                s.tok.copy_(tok[:, t])
                s.mask.index_fill_(1, s.widx, True)
                logp = torch.log_softmax(self._forward_fn(s), dim=-1)
                totals[:, j] += weight[:, t + 1] * logp.gather(1, tok[:, t + 1 : t + 2])[:, 0]
                s.pos += 1
                s.widx += 1
        return totals

    @torch.no_grad()
    def score(
        self, enc: dict[str, Any], continuations: list[list[list[int]]], scored: list[list[int]]
    ) -> torch.Tensor:
        """Summed log-probabilities (B, C) of C token continuations per prompt, by teacher forcing after ONE prefill.

        ``continuations[b][c]`` follows prompt b (``enc``, left-padded); only its last ``scored[b][c]`` tokens are
        summed (the leading ones are context). Each continuation is fed token by token through the static cache,
        which is rewound to the prompt for the next one: the prompt (the long multimodal part) is processed once
        instead of once per continuation.
        """
        ids, am = enc["input_ids"], enc.get("attention_mask")
        if am is None:
            am = torch.ones_like(ids)
        if bool((am[:, -1] == 0).any()):
            raise ValueError("the prompt batch is right-padded; use left padding")
        b, length = ids.shape
        if len(continuations) != b or len(scored) != b:
            raise ValueError(f"{len(continuations)} continuation lists / {len(scored)} counts for {b} prompts")
        longest = _check_continuations(continuations, scored)
        self._last_generation = None  # _state() below may hand out the generation's buffers
        logits0, cache, deltas = self.prefill(enc)
        s = self._state(b, self._bucket(length + longest), 1)
        for i, layer_cache in enumerate(cache.layers):
            s.k[i][:, :, :length].copy_(layer_cache.keys)
            s.v[i][:, :, :length].copy_(layer_cache.values)
        del cache
        mask = torch.zeros_like(s.mask)
        mask[:, :length] = am.bool()
        start_pos = am.sum(dim=1) + deltas[:, 0].to(torch.long)
        logp0 = torch.log_softmax(logits0, dim=-1)
        return self._teacher_force(s, continuations, scored, mask, start_pos, length, logp0=logp0)

    def _clock(self) -> float:
        import time

        if not self.timing:
            return 0.0
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()
