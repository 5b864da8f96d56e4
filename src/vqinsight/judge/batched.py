"""The judge's ``batch`` engine: rows as ``batchdecode.Request``s, and the answer margin from each row's own cache.

Each row's prompt is tokenised with its vision placeholders expanded to the ``VisionCache`` counts, its M-RoPE
positions computed once, and its media features attached. The prefix up to the end of the first media block (the
system prompt, "Video A:" and the first video) is shared by every row whose first media item and prefix tokens are
the same: in stage 3 the 9 judgments per prompt that put a given video first, in both orders of its pairs.

The margin (``engine`` module doc) needs the log-likelihood of each answer string after the judge's own completion up
to ``<answer>``. The completion text is tokenised on its own (the prompt ends with the chat template's assistant
header, a special token and a newline) followed by each answer string; where those tokens agree with the generated
ones, the row is scored from the cache it generated in, before its slot is reused (``batchdecode.Score``); the
re-tokenised tail (at most ``max_refeed`` tokens before the answer) and the answer strings are teacher-forced in
one forward. Rows that re-tokenise differently earlier are scored by a prefill of prompt + completion.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..answer_format import answer_prefix
from ..batchrequests import Request, Score, first_block_end, rope_positions


def _runs(types: torch.Tensor) -> list[tuple[int, int, int]]:
    """(start, stop, type) of each run of equal non-zero token types."""
    out, i, n = [], 0, len(types)
    vals = types.tolist()
    while i < n:
        if vals[i] == 0:
            i += 1
            continue
        j = i
        while j < n and vals[j] == vals[i]:
            j += 1
        out.append((i, j, vals[i]))
        i = j
    return out


def _tokenise(judge: Any, tok: Any, end_id: int, text: str, entries: list[Any], row: dict[str, Any]):
    """(ids, M-RoPE positions (3, L), first token of each media block, shared length, its tokens as bytes)."""
    from .engine import mm_token_types

    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    types = mm_token_types(tok, ids[None])[0]
    runs = _runs(types)
    if len(runs) != len(entries):
        raise ValueError(f"{row.get('sample_id')}: {len(runs)} media blocks in the prompt, {len(entries)} media")
    grids: dict[str, list[Any]] = {"image": [], "video": []}
    for (a, b, t), e in zip(runs, entries, strict=True):
        if b - a != e.n_tokens or (t == 2) != (e.kind == "video"):
            raise ValueError(f"{row.get('sample_id')}: prompt placeholders do not match the row's media")
        grids[e.kind].append(e)
    kw: dict[str, Any] = {}
    for kind in ("image", "video"):
        kw[f"{kind}_grid_thw"] = torch.cat([e.grid for e in grids[kind]]) if grids[kind] else None
    if grids["video"] and all(e.second_per_grid is not None for e in grids["video"]):
        kw["second_per_grid_ts"] = torch.tensor([e.second_per_grid for e in grids["video"]])
    pos = rope_positions(judge.model, ids[None], types[None], **kw)[:, 0]
    share = first_block_end(ids, end_id) if entries else 0
    return ids, pos, [a for a, _, _ in runs], share, ids[:share].numpy().tobytes()


def row_requests(judge: Any, rows: list[dict[str, Any]], limits: list[int] | None = None) -> list[Request]:
    """One request per row (``limits[i]``: row i's own max new tokens), shared prefixes keyed by first media item."""

    tok = judge.processor.tokenizer
    end_id = tok.convert_tokens_to_ids("<|vision_end|>")
    # rows of one prompt differ only in which media fill the placeholders: their tokens and positions are the same
    # when the media have the same token counts and grids, so each (text, media shapes) is tokenised once
    cache = judge.__dict__.setdefault("_request_cache", {})
    media = []  # every media item of the call, processed in threads before the rows are tokenised
    for r in rows:
        kind, mt = ("image" if r["media_type"] == "image" else "video"), r["media_type"]
        media += [((m, mt), kind, lambda m=m, mt=mt: judge.loader(m, mt)) for m in r["media"]]
    judge.vision.prefetch(media)
    out = []
    for i, row in enumerate(rows):
        text, entries = judge.expand_prompt(row)
        shapes = tuple((e.kind, e.n_tokens, tuple(e.grid.reshape(-1).tolist()), e.second_per_grid) for e in entries)
        got = cache.get((text, shapes))
        if got is None:
            got = _tokenise(judge, tok, end_id, text, entries, row)
            if len(cache) >= 1024:
                cache.clear()
            cache[(text, shapes)] = got
        ids, pos, starts, share, head = got
        vision = [(a, e.features) for a, e in zip(starts, entries, strict=True)]
        key = (row["media"][0], row["media_type"], head) if share else None
        out.append(Request(ids, pos, vision, share, key, limits[i] if limits else None))
    return out


def answer_score(judge: Any, strings: list[str], new: list[int]) -> tuple[Score | None, list[list[int]], list[int]]:
    """(Score from the generation's cache or None, each answer sequence after the prompt, its scored counts)."""
    from .engine import answer_token_counts

    tok = judge.processor.tokenizer
    eos = set(judge.eos_ids())
    cut = next((i for i, t in enumerate(new) if t in eos), len(new))
    new = new[:cut]
    prefix = answer_prefix(tok.decode(new, skip_special_tokens=True))
    seqs = [tok(prefix + s, add_special_tokens=False)["input_ids"] for s in strings]
    counts = answer_token_counts(tok, [prefix + s for s in strings], strings)
    m = min(len(new), *(len(q) - k for q, k in zip(seqs, counts, strict=True)))
    for q in seqs:
        same = 0
        while same < m and q[same] == new[same]:
            same += 1
        m = same
    if max(len(q) - m for q in seqs) > judge.max_refeed + max(counts):
        return None, seqs, counts
    return Score(m, [q[m:] for q in seqs], counts), seqs, counts


def generate(judge: Any, rows: list[dict[str, Any]], *, sample: bool, k: int, temperature: float,
             strings: list[str] | None, limits: list[int] | None = None) -> list[list[int]]:  # fmt: skip
    """New tokens per row (k per row, adjacent, when sampling); greedy with ``strings``: the answer strings'
    log-likelihoods left in ``judge.batch_scores`` for ``candidate_totals``."""
    t0 = time.perf_counter()
    reqs = row_requests(judge, rows, limits)
    t_requests = time.perf_counter() - t0
    if sample:  # k copies of each prompt share it whole
        reqs = [Request(r.ids, r.positions, r.vision, r.ids.numel(), ("copy", i), r.max_new_tokens)
                for i, r in enumerate(reqs) for _ in range(k)]  # fmt: skip
    fallback: dict[int, tuple[list[list[int]], list[int]]] = {}

    def hook(i: int, new: list[int]) -> Score | None:
        spec, seqs, counts = answer_score(judge, strings, new)
        fallback[i] = (seqs, counts)
        return spec

    use_hook = strings is not None and not sample
    out = judge.batch.generate(
        reqs,
        judge.max_new_tokens,
        do_sample=sample,
        temperature=temperature,
        eos_token_id=judge.eos_ids() or None,
        suppress_token_ids=judge.suppress,
        score=hook if use_hook else None,
        reserve_tokens=judge.reserve_tokens if use_hook else 0,
    )
    judge.batch.stats["requests_s"] = t_requests  # host time spent tokenising rows and computing positions
    judge.batch_scores = None
    if use_hook:
        totals = []
        for i, req in enumerate(reqs):
            got = judge.batch.scores[i]
            if got is None:  # re-tokenised too differently, or no room: prefill prompt + completion
                seqs, counts = fallback[i]
                got = judge.batch.score([req], [Score(0, seqs, counts)])[0]
                judge.margin_stats["prefilled"] += 1
            else:
                judge.margin_stats["from_cache"] += 1
            totals.append(got.float())
        judge.batch_scores = {"rows": rows, "strings": list(strings), "totals": torch.stack(totals)}
    return out


def candidate_totals(judge: Any, rows: list[dict[str, Any]], prefixes: list[str], strings: list[str]):
    """Summed log-likelihoods (n, len(strings)) of the answer strings after each row's prompt and prefix: those of
    the last greedy generation of these rows when it scored them, else by prefill."""
    from .engine import answer_token_counts

    got = judge.batch_scores
    if got is not None and got["rows"] is rows and got["strings"] == list(strings):
        return got["totals"]
    tok = judge.processor.tokenizer
    specs = []
    for p in prefixes:
        seqs = [tok(p + s, add_special_tokens=False)["input_ids"] for s in strings]
        specs.append(Score(0, seqs, answer_token_counts(tok, [p + s for s in strings], strings)))
    return torch.stack(judge.batch.score(row_requests(judge, rows), specs)).float()
