"""Continuous-batching decoding for Qwen2.5-VL with shared prompt prefixes: the judge's engine at stage-3 scale.

    from vqinsight.batchdecode import BatchDecoder, Request
    dec = BatchDecoder(model, max_batch=128)          # a Qwen2_5_VLForConditionalGeneration, eval mode
    outs = dec.generate(requests, 512, eos_token_id=eos, suppress_token_ids=vision_ids)   # list of token lists

A ``Request`` is one prompt already in model terms: its token ids with the vision placeholders expanded, its
M-RoPE positions (3, L) and the vision features to put on the placeholder positions (computed once per media
item by the caller, e.g. the judge's ``VisionCache``). ``requests_from_batch`` builds them from a processor batch.

What it does differently from ``fastdecode.StaticDecoder`` (which prefills a whole batch through transformers
and decodes it to its longest row):

- **Continuous batching.** ``max_batch`` cache slots; a row that emits eos (or reaches its own token limit) frees
  its slot, and the next pending request is prefilled into it at the next check (every ``check_every`` decode
  steps). Rows of one decode step sit at different lengths: each has its own write index and length mask.
- **Chunked prefill, one sequence at a time.** A request is prefilled alone, ``chunk_tokens`` tokens per forward,
  written straight into its slot of the static cache: the prefill's activations are those of one chunk, not of
  the whole batch, so memory goes to the KV cache and ``max_batch`` can be 128 or more on the 7B.
- **Prefix sharing.** Requests with the same ``share_key`` share their first ``share`` tokens (identical ids,
  positions and vision features: the judge's system prompt + first video, in both orders of a pair; GRPO's copies
  of one prompt). The shared prefix is prefilled once into one of ``prefix_slots`` pool slots; each member's own
  cache holds only its suffix and new tokens. Requests are admitted grouped by key, so few prefixes live at once.
- **Decode step** as in ``StaticDecoder`` (static cache, plain RoPE after the text tail, the query heads of a KV
  group as query rows, sampling and eos bookkeeping on the device, the step captured once as a CUDA graph), with
  **cascade attention**: each row attends to its own cache and to its prefix's pool slot (the queries of a slot's
  rows gathered into one attention call), and the two parts are merged by their log-sum-exp. A prefix's keys and
  values are read once per step for all its rows, and stored once. ``share_kv=False`` copies the prefix into every
  member's cache instead (one attention call per layer, more KV to store and read).
- **Early exit.** The loop ends when every request is done; with eos off, a request's ``max_new_tokens`` ends it
  (the benchmark's forced lengths).

The math equals transformers' (same modules for norms, projections and MLP); the CPU tests compare greedy tokens
with ``generate()`` on the tiny model, with and without sharing, with refilled slots and per-row limits.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from .batchrequests import Request, Score, requests_from_batch

log = logging.getLogger(__name__)
MAX_BATCH = 128  # default cache slots: the 7B judge at the paper shape fits an 80 GB GPU with room to spare


@dataclass
class _Slots:
    """Device buffers of one (slots, cache length, output width) shape; the CUDA graph is captured over them."""

    k: list[torch.Tensor]  # per layer (B, kv_heads, T, head_dim)
    v: list[torch.Tensor]
    cols: torch.Tensor  # (T,) 0..T-1
    tok: torch.Tensor  # (B,) token fed to the next step
    pos: torch.Tensor  # (B,) its rotary position
    n: torch.Tensor  # (B,) cache slots in use = where the fed token's key/value is written
    cnt: torch.Tensor  # (B,) tokens produced
    limit: torch.Tensor  # (B,) this row's max new tokens
    done: torch.Tensor  # (B,) bool
    out: torch.Tensor  # (B, W) produced tokens
    pool_k: list[torch.Tensor]  # per layer (P, kv_heads, Lp, head_dim): shared prefixes
    pool_v: list[torch.Tensor]
    pcols: torch.Tensor  # (Lp,) 0..Lp-1
    plen: torch.Tensor  # (P,) tokens of each prefix slot (0: none)
    qmap: torch.Tensor  # (P * R,) row whose query fills entry (p, r) of the prefix attention
    rowpos: torch.Tensor  # (B,) entry p * R + r of each row
    graph: Any = None


class BatchDecoder:
    """Continuous-batching, prefix-sharing decoding for a Qwen2.5-VL (or Qwen2-VL) conditional-generation model."""

    def __init__(
        self,
        model,
        *,
        max_batch: int = MAX_BATCH,
        chunk_tokens: int = 4096,
        check_every: int = 16,
        use_cuda_graph: bool | None = None,
        compile: bool = False,
        length_bucket: int | None = None,
        timing: bool = False,
        refill: str = "continuous",
        share_kv: bool = True,
        prefix_slots: int | None = None,
        rows_per_prefix: int = 16,
        attention: str = "auto",
    ) -> None:
        if refill not in ("continuous", "wave"):
            raise ValueError(f"refill must be 'continuous' or 'wave', got {refill!r}")
        if attention not in ("auto", "manual", "efficient"):
            raise ValueError(f"attention must be 'auto', 'manual' or 'efficient', got {attention!r}")
        if rows_per_prefix < 1 or (prefix_slots is not None and prefix_slots < 1):
            raise ValueError("prefix_slots and rows_per_prefix must be >= 1")
        if max_batch < 1 or chunk_tokens < 1:
            raise ValueError(f"max_batch and chunk_tokens must be >= 1, got {max_batch}, {chunk_tokens}")
        self.model = model
        self.max_batch, self.chunk_tokens = int(max_batch), int(chunk_tokens)
        self.check_every = max(1, int(check_every))
        base = model.model
        self.lm = base.language_model
        self.layers = list(self.lm.layers)
        cfg = self.lm.config
        attn = self.layers[0].self_attn
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(attn, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
        self.scale = self.head_dim**-0.5
        rot = self.lm.rotary_emb
        self.inv_freq = rot.inv_freq.float()
        self.rope_scaling = float(getattr(rot, "attention_scaling", 1.0))
        section = getattr(rot, "mrope_section", None)
        for src in ("rope_parameters", "rope_scaling"):
            if section is None:
                section = (getattr(cfg, src, None) or {}).get("mrope_section")
        self.mrope_section = [int(x) for x in section] if section else None
        if self.mrope_section and sum(self.mrope_section) != self.head_dim // 2:
            raise ValueError(f"mrope_section {self.mrope_section} does not sum to head_dim/2 = {self.head_dim // 2}")
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        cuda = self.device.type == "cuda"
        self.use_cuda_graph = cuda if use_cuda_graph is None else bool(use_cuda_graph)
        self.length_bucket = int(length_bucket) if length_bucket is not None else (256 if cuda else 1)
        self.timing = timing
        # "continuous": a finished row's slot takes the next request at the next check; "wave": slots are refilled
        # only once every row of the batch is done (fixed batching with early exit, for comparison)
        self.refill = refill
        # share_kv: a shared prefix stays in a pool of prefix_slots slots and each row's cache holds only its own
        # tokens; the decode step attends to both and merges them by their log-sum-exp (cascade attention). Off: the
        # prefix is copied into every member's cache (same numbers up to float summation order, more KV to read).
        self.share_kv = bool(share_kv)
        self.prefix_slots = int(prefix_slots) if prefix_slots is not None else max(4, self.max_batch // 8)
        self.rows_per_prefix = int(rows_per_prefix)
        # attention with its log-sum-exp for the cascade: "efficient" = PyTorch's memory-efficient CUDA kernel
        # (aten._scaled_dot_product_efficient_attention, checked against "manual" on first use), "manual" =
        # matmul + float32 softmax; "auto": efficient on CUDA
        self.attention = attention if attention != "auto" else ("efficient" if cuda else "manual")
        self._attention_checked = self.attention == "manual"
        self.scores: list[torch.Tensor | None] = []  # per request of the last generate(): its Score's totals
        self.compiled = bool(compile)
        self._decode_fn = torch.compile(self._decode_logits) if compile else self._decode_logits
        self._slots: _Slots | None = None
        self._sampling: dict[str, Any] = {}
        self.stats: dict[str, float] = {}
        log.info("batch decoder on %s (%s): %d slots, CUDA graph %s, compiled step %s", self.device,
                 str(self.dtype).removeprefix("torch."), self.max_batch, self.use_cuda_graph, compile)  # fmt: skip

    # ------------------------------------------------------------------------------------------------ math
    def _rope(self, pos3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (B, 1, T, head_dim) of (3, B, T) M-RoPE positions (plain RoPE when the three rows agree)."""
        freqs = pos3[..., None].float() * self.inv_freq.to(pos3.device)  # (3, B, T, hd/2)
        if self.mrope_section:
            parts = freqs.split(self.mrope_section, dim=-1)
            f = torch.cat([part[i % 3] for i, part in enumerate(parts)], dim=-1)
        else:
            f = freqs[0]
        emb = torch.cat((f, f), dim=-1)
        cos = (emb.cos() * self.rope_scaling).to(self.dtype)[:, None]
        sin = (emb.sin() * self.rope_scaling).to(self.dtype)[:, None]
        return cos, sin

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        emb = self.lm.embed_tokens
        return F.embedding(ids, emb.weight) if type(emb) is torch.nn.Embedding else emb(ids)

    def _qkv(self, layer, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """q (B, H, T, hd), k and v (B, KV, T, hd), rotary applied."""
        a = layer.self_attn
        b, t, _ = h.shape
        x = layer.input_layernorm(h)
        q = a.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = a.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = a.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q = q * cos + self._rotate_half(q) * sin
        k = k * cos + self._rotate_half(k) * sin
        return q, k, v

    def _finish_layer(self, layer, h: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """Residual, o_proj and MLP after attention output o (B, T, H*hd)."""
        h = h + layer.self_attn.o_proj(o)
        return h + layer.mlp(layer.post_attention_layernorm(h))

    def _attend_lse(self, q, k, v, bias) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention with its log-sum-exp: (out float32 (N, KV, M, hd), lse float32 (N, KV, M)) of q (N, KV, M, hd)
        over k, v (N, KV, S, hd) with additive bias (N, 1, 1, S); rows with every key masked give 0 and -inf."""
        if self.attention == "efficient":
            out, lse = self._efficient_lse(q, k, v, bias)
            # a row with every key masked has no finite log-sum-exp, and kernels mark it their own way (flash
            # kernels +inf; PyTorch's memory-efficient kernel gave finite values on an H100): it is read off the
            # bias instead, as -inf, which is what the merge of the cascade's two parts needs
            empty = ~torch.isfinite(bias).any(dim=-1)  # (N, 1, 1): every key of the row masked
            lse = torch.where(empty | ~torch.isfinite(lse), float("-inf"), lse)
        else:
            sc = torch.matmul(q, k.transpose(-1, -2)).float() * self.scale + bias.float()
            m = sc.amax(dim=-1, keepdim=True)
            m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
            p = torch.exp(sc - m)
            tot = p.sum(dim=-1, keepdim=True)
            out = torch.matmul((p / tot.clamp(min=1e-30)).to(v.dtype), v).float()
            lse = (m + tot.log()).squeeze(-1)
        return torch.where(torch.isfinite(lse)[..., None], out, 0.0), lse

    def _efficient_lse(self, q, k, v, bias) -> tuple[torch.Tensor, torch.Tensor]:
        """PyTorch's memory-efficient CUDA kernel with its log-sum-exp, both float32 (the kernel pads the lse)."""
        full = bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        eff = torch.ops.aten._scaled_dot_product_efficient_attention
        out, lse = eff(q, k, v, full, True, scale=self.scale)[:2]
        return out.float(), lse[..., : q.shape[2]].float()

    def _check_attention(self) -> None:
        """Use the efficient kernel only if it runs here and agrees with the manual math on random inputs."""
        self._attention_checked = True
        g, d = self.n_heads // self.n_kv, self.head_dim
        gen = torch.Generator(device=self.device).manual_seed(0)
        q, k, v = (torch.randn(3, self.n_kv, g if i == 0 else 512, d, generator=gen, device=self.device,
                               dtype=self.dtype) for i in range(3))  # fmt: skip
        lengths = torch.tensor([[300], [512], [0]], device=self.device)
        keep = torch.arange(512, device=self.device)[None, :] < lengths
        bias = torch.zeros(3, 512, device=self.device, dtype=self.dtype).masked_fill(~keep, float("-inf"))
        bias = bias[:, None, None]
        manual, self.attention = self.attention, "manual"
        ref = self._attend_lse(q, k, v, bias)
        self.attention = manual
        try:
            got = self._attend_lse(q, k, v, bias)
        except RuntimeError as e:  # kernel missing or refusing these shapes
            log.warning("efficient attention with log-sum-exp unavailable (%s); using matmul attention", e)
            self.attention = "manual"
            return
        d_out = (got[0][:2] - ref[0][:2]).abs().max().item()
        d_lse = (got[1][:2] - ref[1][:2]).abs().max().item()
        masked_ok = bool(torch.isneginf(got[1][2]).all()) and bool((got[0][2] == 0).all())
        if not (d_out <= 2e-2 and d_lse <= 2e-2 and masked_ok):  # NaN differences fail too
            log.warning(
                "efficient attention disagrees with the matmul reference (max |out diff| %.3g, max |lse diff| %.3g, "
                "a fully masked row gives out 0 and lse -inf: %s); using matmul attention",
                d_out,
                d_lse,
                masked_ok,
            )
            self.attention = "manual"

    @staticmethod
    def _merge(o1: torch.Tensor, l1: torch.Tensor, o2: torch.Tensor, l2: torch.Tensor) -> torch.Tensor:
        """Softmax attention over the union of two key sets from each set's output and log-sum-exp."""
        lse = torch.logaddexp(l1, l2)
        return o1 * torch.exp(l1 - lse)[..., None] + o2 * torch.exp(l2 - lse)[..., None]

    def _decode_logits(self, s: _Slots) -> torch.Tensor:
        """Logits (B, V) after each slot's s.tok at s.pos; its key/value written at own cache slot s.n (with the
        pool: after the row's shared prefix, which the step attends to in the pool)."""
        b = s.tok.shape[0]
        h = self._embed(s.tok)[:, None, :]
        cos, sin = self._rope(s.pos.view(1, b, 1).expand(3, b, 1))
        keep = s.cols[None, :] <= s.n[:, None]  # (B, T)
        bias = torch.zeros(keep.shape, dtype=h.dtype, device=h.device).masked_fill(~keep, float("-inf"))
        bias = bias[:, None, None, :]
        idx = s.n.view(b, 1, 1, 1).expand(b, self.n_kv, 1, self.head_dim)
        g = self.n_heads // self.n_kv
        cascade = self.share_kv
        if cascade:
            n_pool, rr = s.plen.shape[0], s.qmap.shape[0] // s.plen.shape[0]
            pkeep = s.pcols[None, :] < s.plen[:, None]
            pbias = torch.zeros(pkeep.shape, dtype=h.dtype, device=h.device).masked_fill(~pkeep, float("-inf"))
            pbias = pbias[:, None, None, :]
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, h, cos, sin)
            s.k[i].scatter_(2, idx, k)
            s.v[i].scatter_(2, idx, v)
            qg = q.reshape(b, self.n_kv, g, self.head_dim)  # the query heads of one KV group as query rows
            if cascade:
                oo, lo = self._attend_lse(qg, s.k[i], s.v[i], bias)
                qp = qg.index_select(0, s.qmap).view(n_pool, rr, self.n_kv, g, self.head_dim)
                qp = qp.transpose(1, 2).reshape(n_pool, self.n_kv, rr * g, self.head_dim)
                op, lp = self._attend_lse(qp, s.pool_k[i], s.pool_v[i], pbias)
                op = op.view(n_pool, self.n_kv, rr, g, self.head_dim).transpose(1, 2)
                op = op.reshape(n_pool * rr, self.n_kv, g, self.head_dim).index_select(0, s.rowpos)
                lp = lp.view(n_pool, self.n_kv, rr, g).transpose(1, 2).reshape(n_pool * rr, self.n_kv, g)
                o = self._merge(oo, lo, op, lp.index_select(0, s.rowpos)).to(h.dtype)
            else:
                o = F.scaled_dot_product_attention(qg, s.k[i], s.v[i], attn_mask=bias, scale=self.scale)
            h = self._finish_layer(layer, h, o.reshape(b, 1, self.n_heads * self.head_dim))
        return self.model.lm_head(self.lm.norm(h))[:, 0].float()

    def _prefill_chunk(self, k_rows, v_rows, h: torch.Tensor, pos3: torch.Tensor, at: int,
                       mask: torch.Tensor | None = None, prefix: tuple | None = None) -> torch.Tensor:  # fmt: skip
        """Hidden states (1, T, D) after the layers for chunk h (1, T, D) written at cache slots [at, at + T) of
        the one-row caches ``k_rows``/``v_rows``, attending to [0, at) and causally within the chunk (or as the
        (T, at + T) bool ``mask`` says). ``prefix`` = (pool k, pool v, slot, length): keys the chunk also sees,
        before its own."""
        t = h.shape[1]
        cos, sin = self._rope(pos3)
        plen = prefix[3] if prefix is not None else 0
        if mask is None:  # every earlier slot, and causal within the chunk: flash attention's lower-right causal
            mask = causal_lower_right(t, plen + at + t)
        elif plen:
            mask = torch.cat([torch.ones(t, plen, dtype=torch.bool, device=mask.device), mask], dim=1)
        g = self.n_heads // self.n_kv
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, h, cos, sin)
            k_rows[i][:, :, at : at + t] = k
            v_rows[i][:, :, at : at + t] = v
            kk, vv = k_rows[i][:, :, : at + t], v_rows[i][:, :, : at + t]
            if plen:
                pk, pv, slot = prefix[0][i], prefix[1][i], prefix[2]
                kk = torch.cat([pk[slot : slot + 1, :, :plen], kk], dim=2)
                vv = torch.cat([pv[slot : slot + 1, :, :plen], vv], dim=2)
            kk, vv = kk.repeat_interleave(g, dim=1), vv.repeat_interleave(g, dim=1)
            o = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, scale=self.scale)
            h = self._finish_layer(layer, h, o.transpose(1, 2).reshape(1, t, self.n_heads * self.head_dim))
        return h

    def _prefill(self, req: Request, k_rows, v_rows, start: int, stop: int, offset: int = 0,
                 prefix: tuple | None = None) -> torch.Tensor:  # fmt: skip
        """Prefill tokens [start, stop) of ``req`` into the one-row caches (token j at cache slot j - offset),
        chunk by chunk, after ``prefix`` (see _prefill_chunk); the last hidden state (1, D)."""
        h_last = None
        for a in range(start, stop, self.chunk_tokens):
            b = min(stop, a + self.chunk_tokens)
            h = self._embed(req.ids[a:b].to(self.device))
            for first, feats in req.vision:
                lo, hi = max(first, a), min(first + feats.shape[0], b)
                if lo < hi:
                    h[lo - a : hi - a] = feats[lo - first : hi - first].to(self.device, self.dtype)
            pos3 = req.positions[:, None, a:b].to(self.device)
            h_last = self._prefill_chunk(k_rows, v_rows, h[None], pos3, a - offset, prefix=prefix)[:, -1]
        return h_last

    def _score_chunk(self, k_rows, v_rows, base: int, refeed: int, p0: torch.Tensor, spec: Score,
                     prefix: tuple | None = None) -> torch.Tensor:  # fmt: skip
        """Summed log-probabilities (C,) of ``spec``'s continuations after the context in cache slots [0, base)
        followed by token ``refeed`` at position ``p0`` (3,), whose output was not kept. One forward: the refeed
        token, the continuations' common head, then each continuation's own tail as a branch that sees the context,
        the head and itself only (written at [base, base + T), beyond the context; nothing else is overwritten)."""
        conts = spec.continuations
        head = spec.head()
        tail_toks = list(conts[0][:head])
        starts, toks = [], [refeed, *tail_toks]
        for c in conts:
            starts.append(len(toks))
            toks += c[head:]
        t = len(toks)
        dev = self.device
        rel = torch.zeros(t, dtype=torch.long)  # position offset from p0
        rel[: 1 + head] = torch.arange(1 + head)
        cols = torch.arange(base + t)
        mask = torch.zeros(t, base + t, dtype=torch.bool)
        mask[:, :base] = True
        for i in range(1 + head):
            mask[i, base : base + i + 1] = True
        for c, st in zip(conts, starts, strict=True):
            n = len(c) - head
            rel[st : st + n] = torch.arange(1 + head, 1 + head + n)
            for j in range(n):
                mask[st + j, base : base + 1 + head] = True
                mask[st + j, base + st : base + st + j + 1] = True
        del cols
        pos3 = (p0.view(3, 1) + rel.view(1, t))[:, None, :].to(dev)
        h = self._embed(torch.tensor(toks, device=dev))[None]
        h = self._prefill_chunk(k_rows, v_rows, h, pos3, base, mask.to(dev), prefix)[0]
        totals = []
        for c, k, st in zip(conts, spec.scored, starts, strict=True):
            # chunk index of continuation token i: the head's at 1 + i, the branch's at st + (i - head)
            where = [1 + i if i < head else st + i - head for i in range(len(c))]
            pred = [0] + where[:-1]  # the output that predicts token i
            rows = pred[len(c) - k :]
            logp = torch.log_softmax(self.model.lm_head(self.lm.norm(h[rows])).float(), dim=-1)
            ids = torch.tensor(c[len(c) - k :], device=dev)
            totals.append(logp.gather(1, ids[:, None]).sum())
        return torch.stack(totals).cpu()

    def _scratch(self, length: int):
        shape = (1, self.n_kv, self._bucket(length), self.head_dim)
        kw = {"device": self.device, "dtype": self.dtype}
        return [torch.zeros(shape, **kw) for _ in self.layers], [torch.zeros(shape, **kw) for _ in self.layers]

    @torch.no_grad()
    def score(self, requests: Sequence[Request], specs: Sequence[Score]) -> list[torch.Tensor]:
        """Summed log-probabilities (C,) per request of its Score's continuations after the prompt (``kept`` must
        be 0): each prompt prefilled once into a scratch cache, its continuations scored in one forward."""
        out = []
        for req, spec in zip(requests, specs, strict=True):
            if spec.kept:
                raise ValueError("score() has no generated tokens to keep; use kept = 0")
            n = req.ids.numel()
            k_rows, v_rows = self._scratch(n + spec.chunk_tokens())
            self._prefill(req, k_rows, v_rows, 0, n - 1)
            out.append(self._score_chunk(k_rows, v_rows, n - 1, int(req.ids[-1]), req.positions[:, -1], spec))
        return out

    @torch.no_grad()
    def logits_after(self, req: Request, tokens: Sequence[int]) -> torch.Tensor:
        """Next-token logits (V,) float32 after the prompt and ``tokens`` (prefilled from scratch, no sharing)."""
        ext = req.extended(tokens)
        k_rows, v_rows = self._scratch(ext.ids.numel())
        h = self._prefill(ext, k_rows, v_rows, 0, ext.ids.numel())
        return self.model.lm_head(self.lm.norm(h)).float()[0]

    # ------------------------------------------------------------------------------------------------ sampling
    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        cfg = self._sampling
        if cfg["suppress"]:
            logits = logits.index_fill(1, self._suppress_ids, float("-inf"))
        if not cfg["do_sample"]:
            return logits.argmax(dim=-1)
        logits = logits / cfg["temperature"]
        if cfg["top_p"] < 1.0:  # transformers' nucleus: drop a token once the mass before it reaches top_p
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = torch.softmax(sorted_logits, dim=-1)
            sorted_logits = sorted_logits.masked_fill((probs.cumsum(dim=-1) - probs) >= cfg["top_p"], float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
        u = torch.rand_like(logits).clamp_(min=1e-20, max=1.0 - 1e-7)
        return (logits - torch.log(-torch.log(u))).argmax(dim=-1)  # Gumbel-max = a draw from softmax(logits)

    def _finished(self, tok: torch.Tensor, cnt: torch.Tensor, limit: torch.Tensor) -> torch.Tensor:
        stop = cnt >= limit
        if self._sampling["eos"]:
            stop = stop | torch.isin(tok, self._eos_ids)
        return stop

    def _step(self, s: _Slots) -> None:
        nxt = self._sample(self._decode_fn(s))
        live = ~s.done
        col = s.cnt.clamp(max=s.out.shape[1] - 1)[:, None]
        s.out.scatter_(1, col, torch.where(live[:, None], nxt[:, None], s.out.gather(1, col)))
        step = live.long()
        s.n += step
        s.pos += step
        s.cnt += step
        s.tok.copy_(torch.where(live, nxt, s.tok))
        s.done |= live & self._finished(nxt, s.cnt, s.limit)

    # ------------------------------------------------------------------------------------------------ buffers
    def _bucket(self, n: int) -> int:
        return -(-n // self.length_bucket) * self.length_bucket

    def _buffers(self, b: int, total: int, width: int, n_pool: int, pool_len: int) -> _Slots:
        s = self._slots
        shape_now = (b, total, width, n_pool, pool_len)
        if s is not None and (s.tok.shape[0], s.cols.shape[0], s.out.shape[1], s.plen.shape[0],
                              s.pcols.shape[0]) == shape_now:  # fmt: skip
            return s
        self._slots = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        kw = {"device": self.device, "dtype": self.dtype}
        z = {"device": self.device, "dtype": torch.long}
        pshape = (n_pool, self.n_kv, pool_len, self.head_dim)
        self._slots = _Slots(
            k=[torch.zeros(b, self.n_kv, total, self.head_dim, **kw) for _ in self.layers],
            v=[torch.zeros(b, self.n_kv, total, self.head_dim, **kw) for _ in self.layers],
            cols=torch.arange(total, **z),
            tok=torch.zeros(b, **z),
            pos=torch.zeros(b, **z),
            n=torch.zeros(b, **z),
            cnt=torch.zeros(b, **z),
            limit=torch.ones(b, **z),
            done=torch.ones(b, dtype=torch.bool, device=self.device),
            out=torch.zeros(b, width, **z),
            pool_k=[torch.zeros(pshape, **kw) for _ in self.layers],
            pool_v=[torch.zeros(pshape, **kw) for _ in self.layers],
            pcols=torch.arange(pool_len, **z),
            plen=torch.zeros(n_pool, **z),
            qmap=torch.zeros(n_pool * self.rows_per_prefix, **z),
            rowpos=torch.zeros(b, **z),
        )
        return self._slots

    def _capture(self, s: _Slots) -> None:
        small = [s.tok, s.pos, s.n, s.cnt, s.limit, s.done, s.out]
        saved = [t.clone() for t in small]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up; its cache writes land beyond each row's valid slots
                self._step(s)
        torch.cuda.current_stream().wait_stream(stream)
        for t, v in zip(small, saved, strict=True):
            t.copy_(v)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step(s)
        s.graph = graph

    # ------------------------------------------------------------------------------------------------ driver
    def _pool_slot(self, s: _Slots, req: Request) -> tuple[int, int] | None:
        """(pool slot, row entry) holding ``req``'s prefix, prefilled or copied there if needed; None: no room."""
        key = (req.share_key, req.share)
        pool, rows_per = self._pool, self.rows_per_prefix
        for p, st in enumerate(pool):
            if st["key"] == key and len(st["rows"]) < rows_per:
                if not (torch.equal(st["ids"], req.ids[: req.share])
                        and torch.equal(st["pos"], req.positions[:, : req.share])):  # fmt: skip
                    raise ValueError(
                        f"requests of share key {req.share_key!r} differ in their first {req.share} tokens"
                    )
                self.stats["prefix_hits"] += 1
                return p, min(set(range(rows_per)) - st["rows"])
        free = [p for p, st in enumerate(pool) if not st["rows"] and self._waiting.get(st["key"], 0) == 0]
        if not free:
            return None
        p = next((q for q in free if pool[q]["key"] is None), free[0])
        full = next((q for q, st in enumerate(pool) if st["key"] == key), None)
        if full is not None:  # every entry of the key's slot is taken: a second slot, copied
            for i in range(len(self.layers)):
                s.pool_k[i][p].copy_(s.pool_k[i][full])
                s.pool_v[i][p].copy_(s.pool_v[i][full])
            self.stats["prefix_hits"] += 1
        else:
            self._prefill(req, [k[p : p + 1] for k in s.pool_k], [v[p : p + 1] for v in s.pool_v], 0, req.share)
            self.stats["prefix_prefills"] += 1
            self.stats["prefill_tokens"] += req.share
        pool[p] = {"key": key, "rows": set(), "ids": req.ids[: req.share].clone(),
                   "pos": req.positions[:, : req.share].clone()}  # fmt: skip
        s.plen[p] = req.share
        return p, 0

    def _admit(self, s: _Slots, slot: int, req: Request, limit: int) -> bool:
        """Prefill ``req`` into cache slot ``slot`` (after its shared prefix) and emit its first token; False when
        its prefix has no pool slot yet."""
        k_rows = [k[slot : slot + 1] for k in s.k]
        v_rows = [v[slot : slot + 1] for v in s.v]
        start, offset, prefix, entry = 0, 0, None, None
        if req.share:
            entry = self._pool_slot(s, req)
            if entry is None:
                return False
            p, r = entry
            self._pool[p]["rows"].add(r)
            self._row_entry[slot] = entry
            prefix = (s.pool_k, s.pool_v, p, req.share)
            start = req.share
            if self.share_kv:
                offset = req.share
                s.qmap[p * self.rows_per_prefix + r] = slot
                s.rowpos[slot] = p * self.rows_per_prefix + r
            else:  # copied into the row's own cache
                for i in range(len(self.layers)):
                    k_rows[i][:, :, : req.share].copy_(s.pool_k[i][p : p + 1, :, : req.share])
                    v_rows[i][:, :, : req.share].copy_(s.pool_v[i][p : p + 1, :, : req.share])
                prefix = None
        elif self.share_kv:
            s.rowpos[slot] = self._empty_entry  # a prefix slot that stays empty: nothing to attend to there
        n = req.ids.numel()
        h = self._prefill(req, k_rows, v_rows, start, n, offset, prefix)
        self.stats["prefill_tokens"] += n - start
        logits = self.model.lm_head(self.lm.norm(h)).float()
        first = self._sample(logits)  # (1,)
        s.tok[slot : slot + 1].copy_(first)
        s.out[slot, 0:1].copy_(first)
        s.n[slot] = n - offset
        s.pos[slot] = int(req.positions.max()) + 1
        s.cnt[slot] = 1
        s.limit[slot] = limit
        s.done[slot : slot + 1].copy_(self._finished(first, s.cnt[slot : slot + 1], s.limit[slot : slot + 1]))
        return True

    def _release(self, slot: int) -> None:
        entry = self._row_entry.pop(slot, None)
        if entry is not None:
            self._pool[entry[0]]["rows"].discard(entry[1])

    def _score_finished(self, s: _Slots, slot: int, req: Request, r: int, new: list[int], spec: Score | None):
        """Score ``spec`` from slot ``slot``'s cache (prompt + new tokens) into self.scores[r], if it fits."""
        if spec is None:
            return
        if spec.kept > len(new):
            raise ValueError(f"request {r}: kept {spec.kept} > its {len(new)} new tokens")
        own = req.share if (self.share_kv and req.share) else 0  # prompt tokens outside the row's own cache
        base = req.ids.numel() - own + spec.kept - 1
        if base + spec.chunk_tokens() > s.cols.shape[0]:
            return
        if spec.kept == 0:
            refeed, p0 = int(req.ids[-1]), req.positions[:, -1]
        else:
            refeed = new[spec.kept - 1]
            p0 = torch.full((3,), int(req.positions.max()) + spec.kept, dtype=torch.long)
        prefix = None
        if own:
            prefix = (s.pool_k, s.pool_v, self._row_entry[slot][0], own)
        k_rows = [k[slot : slot + 1] for k in s.k]
        v_rows = [v[slot : slot + 1] for v in s.v]
        self.scores[r] = self._score_chunk(k_rows, v_rows, base, refeed, p0, spec, prefix)
        self.stats["scored"] += 1

    @torch.no_grad()
    def generate_padded(
        self,
        enc: dict[str, Any],
        max_new_tokens: int,
        *,
        num_return_sequences: int | Sequence[int] = 1,
        eos_token_id: int | list[int] | None = None,
        **kw: Any,
    ) -> torch.Tensor:
        """``fastdecode.StaticDecoder.generate``'s contract over a processor batch: new tokens
        (sum(copies), max_new_tokens), a prompt's copies adjacent (they share the whole prompt), eos-padded after a
        row's eos. GRPO's rollouts (``rollout_engine: batch``)."""
        base = requests_from_batch(self.model, enc)
        copies = (
            [num_return_sequences] * len(base) if isinstance(num_return_sequences, int) else list(num_return_sequences)
        )
        if len(copies) != len(base) or any(c < 1 for c in copies):
            raise ValueError(f"num_return_sequences {num_return_sequences!r} for {len(base)} prompts")
        reqs = [Request(r.ids, r.positions, r.vision, r.ids.numel(), ("prompt", i))
                for i, r in enumerate(base) for _ in range(copies[i])]  # fmt: skip
        outs = self.generate(reqs, max_new_tokens, eos_token_id=eos_token_id, **kw)
        eos = eos_token_id[0] if isinstance(eos_token_id, list | tuple) else eos_token_id
        pad = int(eos) if eos is not None else 0
        out = torch.full((len(reqs), max_new_tokens), pad, dtype=torch.long)
        for i, o in enumerate(outs):
            out[i, : len(o)] = torch.tensor(o, dtype=torch.long)
        return out.to(self.device)

    def _sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    @torch.no_grad()
    def generate(
        self,
        requests: Sequence[Request],
        max_new_tokens: int,
        *,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        eos_token_id: int | list[int] | None = None,
        suppress_token_ids: Sequence[int] | None = None,
        score: Callable[[int, list[int]], Score | None] | None = None,
        reserve_tokens: int = 0,
    ) -> list[list[int]]:
        """New tokens of each request, in request order: up to and including its first eos, at most its
        ``max_new_tokens`` (or the call's).

        ``score(i, new_tokens)``, called when request i finishes, may return a ``Score`` (context: the prompt and
        its first ``kept`` new tokens): its continuations are scored from the row's own cache before the slot is
        reused (the judge's answer margin, without a second prefill), the totals left in ``self.scores[i]`` (None
        where ``score`` gave None or the continuations do not fit the ``reserve_tokens`` free slots)."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if do_sample and temperature <= 0:
            raise ValueError("temperature must be > 0 when sampling")
        if reserve_tokens < 0:
            raise ValueError(f"reserve_tokens must be >= 0, got {reserve_tokens}")
        if not requests:
            return []
        if isinstance(eos_token_id, int):
            eos_token_id = [eos_token_id]
        eos = tuple(int(t) for t in eos_token_id) if eos_token_id else ()
        suppress = tuple(sorted({int(t) for t in suppress_token_ids or ()}))
        sampling = {"do_sample": do_sample, "temperature": float(temperature), "top_p": float(top_p),
                    "eos": eos, "suppress": suppress}  # fmt: skip
        limits = [min(r.max_new_tokens or max_new_tokens, max_new_tokens) for r in requests]
        # the buffers' shape depends on the call's cap, not on the rows' own caps, so calls with other per-row
        # limits reuse the buffers and the captured step
        own = [r.ids.numel() - (r.share if self.share_kv else 0) for r in requests]
        total = self._bucket(max(own) + max_new_tokens + reserve_tokens)
        pool_len = self._bucket(max([r.share for r in requests] + [1]))
        # no more prefix slots than the call has distinct shared prefixes
        n_keys = len({(r.share_key, r.share) for r in requests if r.share})
        n_slots = max(1, min(self.prefix_slots, n_keys))
        n_pool = n_slots + (1 if self.share_kv else 0)  # + one that stays empty
        s = self._buffers(min(self.max_batch, len(requests)), total, max_new_tokens, n_pool, pool_len)
        if self.attention == "efficient" and not self._attention_checked:
            self._check_attention()
        if sampling != self._sampling:
            s.graph = None  # the captured step bakes the sampling settings in
            self._sampling = sampling
            self._eos_ids = torch.tensor(eos, dtype=torch.long, device=self.device)
            self._suppress_ids = torch.tensor(suppress, dtype=torch.long, device=self.device)
        s.done.fill_(True)
        s.n.zero_()
        s.plen.zero_()
        self._pool = [{"key": None, "rows": set()} for _ in range(n_slots)]
        self._empty_entry = n_slots * self.rows_per_prefix  # entry 0 of the slot that stays empty
        self._row_entry: dict[int, tuple[int, int]] = {}
        self.scores = [None] * len(requests)
        self.stats = {"prefix_prefills": 0, "prefix_hits": 0, "prefill_tokens": 0, "decode_steps": 0,
                      "row_steps": 0, "admissions": 0, "scored": 0, "slots": s.tok.shape[0], "cache_len": total,
                      "pool_slots": n_slots if self.share_kv else 0, "pool_len": pool_len,
                      "share_kv": self.share_kv, "attention": self.attention,
                      "prefill_s": 0.0, "decode_s": 0.0}  # fmt: skip
        # group members adjacent (first appearance of the key), so few prefixes are alive at a time
        first_seen: dict[Any, int] = {}
        self._waiting: dict[Any, int] = {}
        for i, r in enumerate(requests):
            if r.share:
                first_seen.setdefault((r.share_key, r.share), i)
                self._waiting[(r.share_key, r.share)] = self._waiting.get((r.share_key, r.share), 0) + 1
        order = sorted(range(len(requests)),
                       key=lambda i: (first_seen.get((requests[i].share_key, requests[i].share), i), i))  # fmt: skip
        pending = deque(order)
        results: list[list[int] | None] = [None] * len(requests)
        owner = [-1] * s.tok.shape[0]
        live = 0
        while pending or live:
            t0 = self._sync() if self.timing else 0.0
            if self.refill == "continuous" or live == 0:
                for slot in range(len(owner)):
                    if owner[slot] >= 0 or not pending:
                        continue
                    r = pending[0]
                    if not self._admit(s, slot, requests[r], limits[r]):
                        break  # its prefix waits for a pool slot: rows of other prefixes must finish first
                    pending.popleft()
                    if requests[r].share:
                        self._waiting[(requests[r].share_key, requests[r].share)] -= 1
                    owner[slot] = r
                    live += 1
                    self.stats["admissions"] += 1
            if live == 0 and pending:
                raise RuntimeError("no request could be admitted: prefix_slots too small")
            if self.timing:
                t1 = self._sync()
                self.stats["prefill_s"] += t1 - t0
            if self.use_cuda_graph and s.graph is None and max_new_tokens > 1:
                self._capture(s)
            done = s.done.cpu()
            steps = 0
            if not bool(done.all()):
                for _ in range(self.check_every):
                    if s.graph is not None:
                        s.graph.replay()
                    else:
                        self._step(s)
                steps = self.check_every
                done = s.done.cpu()
            self.stats["decode_steps"] += steps
            self.stats["row_steps"] += steps * live
            fin = [slot for slot in range(len(owner)) if owner[slot] >= 0 and bool(done[slot])]
            if fin:
                idx = torch.tensor(fin, device=self.device)
                outs, cnts = s.out.index_select(0, idx).cpu(), s.cnt.index_select(0, idx).cpu()
                for j, slot in enumerate(fin):
                    r = owner[slot]
                    results[r] = outs[j, : int(cnts[j])].tolist()
                    if score is not None:
                        self._score_finished(s, slot, requests[r], r, results[r], score(r, results[r]))
                    self._release(slot)
                    owner[slot] = -1
                    live -= 1
            if self.timing:
                self.stats["decode_s"] += self._sync() - t1
        return results  # type: ignore[return-value]
