"""What the batch decoder decodes: prompts as ``Request``s (tokens, M-RoPE positions, vision features, the shared
prefix) and ``Score``s (continuations to score after a generation), and how to build them from a processor batch.

``batchdecode.BatchDecoder`` consumes them; the judge builds its requests from its ``VisionCache``
(``judge.batched``), GRPO's rollouts from the trainer's processor batch (``requests_from_batch``).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Request:
    """One prompt in model terms (see the module doc)."""

    ids: torch.Tensor  # (L,) long: prompt tokens, vision placeholders expanded, no padding
    positions: torch.Tensor  # (3, L) long: M-RoPE positions (get_rope_index)
    vision: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (first index, (n, hidden) features)
    share: int = 0  # leading tokens shared with every request of the same share_key
    share_key: Hashable | None = None
    max_new_tokens: int | None = None  # this request's cap (default: the generate() call's)

    def __post_init__(self) -> None:
        self.ids = torch.as_tensor(self.ids, dtype=torch.long).reshape(-1).cpu()
        self.positions = torch.as_tensor(self.positions, dtype=torch.long).cpu()
        n = self.ids.numel()
        if n < 1:
            raise ValueError("a request needs at least one prompt token")
        if tuple(self.positions.shape) != (3, n):
            raise ValueError(f"positions must be (3, {n}), got {tuple(self.positions.shape)}")
        for start, feats in self.vision:
            if start < 0 or start + feats.shape[0] > n:
                raise ValueError(f"vision features [{start}, {start + feats.shape[0]}) outside the {n} prompt tokens")
        if self.share_key is None:
            self.share = 0
        if not 0 <= self.share <= n:
            raise ValueError(f"share must be in 0..{n}, got {self.share}")
        self.share = min(self.share, n - 1)  # the last prompt token is always the row's own (its logits start it)
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    def extended(self, tokens: Sequence[int]) -> Request:
        """This prompt followed by generated ``tokens`` (text positions continuing after the prompt's largest)."""
        t = torch.as_tensor(list(tokens), dtype=torch.long)
        start = int(self.positions.max()) + 1
        pos = torch.arange(start, start + t.numel()).view(1, -1).expand(3, -1)
        return Request(torch.cat([self.ids, t]), torch.cat([self.positions, pos], dim=1), self.vision,
                       self.share, self.share_key, self.max_new_tokens)  # fmt: skip


@dataclass
class Score:
    """Token continuations to score after a context: the prompt plus the first ``kept`` generated tokens.

    ``continuations[c]`` follows that context; the log-probabilities of its last ``scored[c]`` tokens are summed
    (the leading ones are context, e.g. re-tokenised reasoning up to ``<answer>``)."""

    kept: int
    continuations: list[list[int]]
    scored: list[int]

    def __post_init__(self) -> None:
        if self.kept < 0 or not self.continuations or len(self.scored) != len(self.continuations):
            raise ValueError("a Score needs kept >= 0 and one scored count per continuation")
        for toks, k in zip(self.continuations, self.scored, strict=True):
            if not 1 <= k <= len(toks):
                raise ValueError(f"scored count {k} is outside 1..{len(toks)} for a continuation")

    def head(self) -> int:
        """Length of the continuations' common first tokens."""
        head, conts = 0, self.continuations
        while all(len(c) > head for c in conts) and len({c[head] for c in conts}) == 1:
            head += 1
        return head

    def chunk_tokens(self) -> int:
        """Tokens of its scoring forward: the re-fed context token, the common head once, each branch."""
        head = self.head()
        return 1 + head + sum(len(c) - head for c in self.continuations)


def first_block_end(ids: torch.Tensor, end_token_id: int) -> int:
    """Tokens up to and including the first ``end_token_id`` (the first vision block's end); 0 when absent."""
    hits = (torch.as_tensor(ids) == end_token_id).nonzero()
    return int(hits[0]) + 1 if len(hits) else 0


def rope_positions(model: Any, ids: torch.Tensor, mm_types: torch.Tensor, **grids: Any) -> torch.Tensor:
    """(3, B, L) M-RoPE positions of an unpadded (B, L) batch (transformers' get_rope_index)."""
    base = model.model
    if not any(v is not None for v in grids.values()):
        n = ids.shape[1]
        return torch.arange(n, device=ids.device).view(1, 1, n).expand(3, ids.shape[0], n).clone()
    base.rope_deltas = None
    try:
        pos, _ = base.get_rope_index(ids, mm_token_type_ids=mm_types, **grids)
    except TypeError:  # transformers releases whose get_rope_index finds the vision tokens by id itself
        pos, _ = base.get_rope_index(ids, **grids)
    return pos


def requests_from_batch(
    model: Any,
    enc: dict[str, Any],
    *,
    keys: Sequence[Hashable | None] | None = None,
    share: str | Sequence[int] = "first_vision",
    max_new_tokens: Sequence[int | None] | None = None,
) -> list[Request]:
    """Requests from a processor batch (left- or unpadded; pixels or precomputed ``mm_encoder_outputs``).

    ``keys[b]``: row b's share key (None: no sharing). ``share``: "first_vision" (up to the end of the first
    vision block; the whole prompt but its last token for a text-only row) or one shared length per row. The caller
    guarantees that rows of one key agree on those tokens, including the media behind them."""
    ids_all, am = enc["input_ids"], enc.get("attention_mask")
    b = ids_all.shape[0]
    if am is None:
        am = torch.ones_like(ids_all)
    cfg = model.config
    end_id = getattr(cfg, "vision_end_token_id", None)
    if end_id is None:
        end_id = getattr(getattr(cfg, "text_config", None), "vision_end_token_id", None)
    image_id = getattr(cfg, "image_token_id", None)
    video_id = getattr(cfg, "video_token_id", None)
    feats: dict[str, list[torch.Tensor]] = {}
    outputs = enc.get("mm_encoder_outputs") or {}
    with torch.no_grad():
        for kind, pix, grid in (("image", "pixel_values", "image_grid_thw"),
                                ("video", "pixel_values_videos", "video_grid_thw")):  # fmt: skip
            if outputs.get(kind) is not None:
                feats[kind] = list(outputs[kind].pooler_output)
            elif enc.get(pix) is not None:
                get = model.model.get_image_features if kind == "image" else model.model.get_video_features
                feats[kind] = list(get(enc[pix], enc[grid], return_dict=True).pooler_output)
    pending = {k: iter(v) for k, v in feats.items()}
    grid_iter = {k: iter(enc[g]) if enc.get(g) is not None else None
                 for k, g in (("image", "image_grid_thw"), ("video", "video_grid_thw"))}  # fmt: skip
    spg = enc.get("second_per_grid_ts")
    spg_iter = iter(torch.as_tensor(spg).tolist()) if spg is not None else None
    out = []
    for r in range(b):
        ids = ids_all[r][am[r].bool()].cpu()
        types = (ids == image_id).long() + 2 * (ids == video_id).long()
        vision, grids = [], {"image_grid_thw": [], "video_grid_thw": [], "second_per_grid_ts": []}
        i = 0
        while i < len(ids):
            t = int(types[i])
            if t == 0:
                i += 1
                continue
            j = i
            while j < len(ids) and int(types[j]) == t:
                j += 1
            kind = "image" if t == 1 else "video"
            f = next(pending[kind])
            if f.shape[0] != j - i:
                raise ValueError(f"row {r}: {j - i} {kind} placeholders for {f.shape[0]} features")
            vision.append((i, f))
            grids[f"{kind}_grid_thw"].append(next(grid_iter[kind]))
            if kind == "video" and spg_iter is not None:
                grids["second_per_grid_ts"].append(next(spg_iter))
            i = j
        kw = {
            "image_grid_thw": torch.stack(grids["image_grid_thw"]) if grids["image_grid_thw"] else None,
            "video_grid_thw": torch.stack(grids["video_grid_thw"]) if grids["video_grid_thw"] else None,
        }
        if grids["second_per_grid_ts"]:
            kw["second_per_grid_ts"] = torch.tensor(grids["second_per_grid_ts"])
        pos = rope_positions(model, ids[None], types[None], **kw)[:, 0].cpu()
        key = keys[r] if keys is not None else None
        if isinstance(share, str):
            n_share = first_block_end(ids, end_id) if vision else len(ids) - 1
        else:
            n_share = int(share[r])
        cap = max_new_tokens[r] if max_new_tokens is not None else None
        out.append(Request(ids, pos, vision, n_share if key is not None else 0, key, cap))
    return out
