"""Optional vLLM engine for the judge: ``python -m vqinsight.judge --engine vllm``.

vLLM is the engine a cluster user would pick for stage 3's judging at scale (all C(N, 2) pairs of every prompt's
videos, in both orders). It is not a dependency of this project: install it on the cluster (``pip install vllm``,
in an environment whose torch matches the vLLM wheel). The default engines (``static``, ``hf``) do not need it.

**What has been run.** vLLM cannot be installed on the GPU machines this project is developed on, so this engine has
run only against a stand-in ``vllm`` module (tests/unit/test_vllm_engine.py) that executes the requests with
transformers on the tiny model. That checks the project's side of the contract: the prompts, the media, the
sampling settings and how the outputs are read. The judge's records equal the ``hf`` engine's there. vLLM's own
processing of the video frames has not been run.

**Requests.** One per row: ``{"prompt": text, "multi_modal_data": {"video": [frames, ...]}}`` (or ``"image"``). The
text is the chat the other engines use (same template, same placeholders). The frames are what the project's
``MediaLoader`` gives: already sampled and resized to the pixel budget. vLLM then runs the model's HF processor on
them, as transformers does for the ``hf`` engine; ``mm_processor_kwargs`` carries the same pixel limits.

**Decoding.** Greedy (temperature 0) or sampled (``n = k``, the given temperature, top-p 1, top-k off), with
``max_tokens`` as the judge's. The vision placeholder tokens are suppressed with a logit bias of -100, the most
vLLM allows.

**Margin.** The log-probability of an answer string is read from ``prompt_logprobs``: one request per (row, string)
whose prompt ends in the completion's answer prefix plus the string (``max_tokens=1``). The last ``count`` prompt
tokens are summed, ``count`` being the string's tokens as the other engines count them. This costs one prefill per
string. Whether vLLM reuses the cached prefix for requests that ask for prompt logprobs depends on its version.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: vLLM clamps logit biases to [-100, 100]
SUPPRESS_BIAS = -100.0


class VLLMJudgeEngine:
    """Generation and answer-string log-probabilities for the judge through ``vllm.LLM``."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        max_new_tokens: int,
        suppress_token_ids: Sequence[int] = (),
        seed: int = 0,
        max_media_per_prompt: int = 2,
        mm_processor_kwargs: dict[str, Any] | None = None,
        llm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        try:
            import vllm
        except ImportError as e:
            raise RuntimeError(
                "--engine vllm needs the vllm package, which is not installed in this environment "
                "(pip install vllm on the cluster; the static engine needs nothing more)"
            ) from e
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.vllm = vllm
        self.max_new_tokens = int(max_new_tokens)
        self.seed = int(seed)
        self.bias = {int(t): SUPPRESS_BIAS for t in suppress_token_ids}
        kw: dict[str, Any] = {
            "model": str(model_path),
            "seed": self.seed,
            "limit_mm_per_prompt": {"image": max_media_per_prompt, "video": max_media_per_prompt},
            "enable_prefix_caching": True,
        }
        if mm_processor_kwargs:
            kw["mm_processor_kwargs"] = dict(mm_processor_kwargs)
        kw.update(llm_kwargs or {})
        log.info("vLLM engine: LLM(%s)", ", ".join(f"{k}={v!r}" for k, v in kw.items()))
        self.llm = vllm.LLM(**kw)

    @staticmethod
    def request(text: str, media: Sequence[Any], kind: str) -> dict[str, Any]:
        """One vLLM prompt: the chat text and the row's media in prompt order."""
        if kind not in ("image", "video"):
            raise ValueError(f"media kind must be 'image' or 'video', got {kind!r}")
        req: dict[str, Any] = {"prompt": text}
        if media:
            req["multi_modal_data"] = {kind: list(media)}
        return req

    def _run(self, requests: list[dict[str, Any]], params: Any) -> list[Any]:
        outs = self.llm.generate(requests, params, use_tqdm=False)
        if len(outs) != len(requests):
            raise RuntimeError(f"vLLM returned {len(outs)} outputs for {len(requests)} requests")
        return list(outs)

    def generate(
        self, requests: list[dict[str, Any]], *, sample: bool = False, k: int = 1, temperature: float = 1.0
    ) -> list[list[str]]:
        """Completion texts per request: one greedy, or ``k`` sampled."""
        sp = self.vllm.SamplingParams
        if sample:
            params = sp(n=int(k), temperature=float(temperature), top_p=1.0, max_tokens=self.max_new_tokens,
                        logit_bias=self.bias or None, seed=self.seed)  # fmt: skip
        else:
            params = sp(n=1, temperature=0.0, max_tokens=self.max_new_tokens, logit_bias=self.bias or None)
        texts = []
        for out in self._run(requests, params):
            got = [c.text for c in out.outputs]
            if len(got) != (int(k) if sample else 1):
                raise RuntimeError(
                    f"vLLM returned {len(got)} completions for one request, wanted {k if sample else 1}"
                )
            texts.append(got)
        return texts

    def tail_logprobs(self, requests: list[dict[str, Any]], counts: Sequence[int]) -> list[float]:
        """Summed log-probability of the last ``counts[i]`` prompt tokens of each request (teacher forcing)."""
        if len(counts) != len(requests):
            raise ValueError(f"{len(counts)} token counts for {len(requests)} requests")
        params = self.vllm.SamplingParams(n=1, temperature=0.0, max_tokens=1, prompt_logprobs=0)
        totals = []
        for out, n in zip(self._run(requests, params), counts, strict=True):
            ids, lps = list(out.prompt_token_ids), list(out.prompt_logprobs or [])
            if len(lps) != len(ids) or not 1 <= n < len(ids):
                raise RuntimeError(
                    f"vLLM gave {len(lps)} prompt logprobs for {len(ids)} prompt tokens (scoring the last {n})"
                )
            total = 0.0
            for tok, entry in zip(ids[-n:], lps[-n:], strict=True):
                if entry is None or tok not in entry:
                    raise RuntimeError(f"vLLM's prompt logprobs lack prompt token {tok}")
                total += float(entry[tok].logprob)
            totals.append(total)
        return totals
