"""Which CPU kernels compute a run's float32 math: the config's ``cpu_float_order``, as environment variables.

The same float32 model and data give different sums on different CPUs: PyTorch picks its vectorised kernels by the
CPU's widest instructions (AVX2, AVX-512), and MKL, which computes the matrix products, picks its code path by the
CPU's model and vendor. The differences are a few units in the last place, but the demo's GRPO runs amplify them
into different models (docs/DEMO_LEARNING.md). Two orders:

* ``native`` (the default): the kernels as they are, the fastest on each CPU. Nothing is set.
* ``portable``: kernels that every x86-64 CPU with AVX2 runs alike: PyTorch's AVX2 kernels, oneDNN capped at AVX2,
  and MKL in its conditional-numerical-reproducibility mode ``COMPATIBLE``, which gives the same results on Intel
  and AMD processors. With a fixed number of threads per job (the demo's 1), a job then computes the same floats
  on any such CPU. The variables are read when torch loads, so they must be in a job's environment before it starts:
  the Snakefile sets them for every job of the run.

This module imports nothing heavy: the Snakefile and the scripts read it at DAG start.
"""

from __future__ import annotations

DEFAULT = "native"
PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE"}
FLOAT_ORDERS: dict[str, dict[str, str]] = {"native": {}, "portable": PORTABLE_ENV}
#: every variable that changes the float order: the orders' own and MKL's instruction cap, which a user may set by hand
ORDER_VARIABLES = tuple(sorted({k for env in FLOAT_ORDERS.values() for k in env} | {"MKL_ENABLE_INSTRUCTIONS"}))


def float_order_env(order: str | None) -> dict[str, str]:
    """The environment variables of a float order (None: the default); an unknown name is a ValueError."""
    order = DEFAULT if order is None else order
    try:
        return dict(FLOAT_ORDERS[order])
    except KeyError:
        raise ValueError(f"cpu_float_order must be one of {sorted(FLOAT_ORDERS)}, got {order!r}") from None


def active_float_order(environ) -> dict[str, str]:
    """The float-order variables an environment sets, with those that cap the kernels by hand (for a job's log and
    its provenance): {} under the native order with nothing set."""
    return {k: environ[k] for k in ORDER_VARIABLES if k in environ}


def fingerprint(steps: int = 8, seed: int = 0) -> str:
    """A hash of the floats a small training run computes in this process's float order (sha256, 16 hex digits).

    The run exercises the kernels the demo's GRPO jobs use: a 3-D convolution patch embedding, matrix products,
    RMS normalisation, rotary cos/sin, softmax attention, SiLU, Gumbel-max sampling (log of uniforms), a cross-entropy
    loss, its backward pass and AdamW, on one thread. Two processes in the same float order give the same hash; the
    portable order is meant to give the same hash on every x86-64 CPU with AVX2 (tests/unit/test_cpu_kernels.py).
    """
    import hashlib

    import torch

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(seed)
    d, heads, vocab, t = 64, 4, 97, 24
    hd = d // heads

    def p(*shape: int) -> torch.nn.Parameter:
        return torch.nn.Parameter(torch.randn(*shape, generator=g) * shape[-1] ** -0.5)

    params = {
        "patch": p(d, 3, 2, 7, 7),
        "emb": p(vocab, d),
        "qkv": p(3 * d, d),
        "o": p(d, d),
        "up": p(4 * d, d),
        "down": p(d, 4 * d),
        "head": p(vocab, d),
        "norm": torch.nn.Parameter(torch.ones(d)),
    }
    opt = torch.optim.AdamW(params.values(), lr=1e-2, weight_decay=0.01)
    video = torch.rand(1, 3, 4, 28, 28, generator=g)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))

    def rms(x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * params["norm"]

    def rotate(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        ang = pos[:, None].float() * inv_freq[None]
        cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
        x1, x2 = x.chunk(2, -1)
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def forward(tokens: torch.Tensor) -> torch.Tensor:
        vis = torch.nn.functional.conv3d(video, params["patch"], stride=(2, 7, 7)).flatten(2).transpose(1, 2)[0]
        h = torch.cat([vis, params["emb"][tokens]], 0)
        n = h.shape[0]
        q, k, v = (rms(h) @ params["qkv"].T).view(n, 3, heads, hd).unbind(1)
        pos = torch.arange(n)
        q, k = rotate(q.transpose(0, 1), pos), rotate(k.transpose(0, 1), pos)
        att = (q @ k.transpose(-1, -2)) * hd**-0.5
        att = att.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        h = h + (att @ v.transpose(0, 1)).transpose(0, 1).reshape(n, d) @ params["o"].T
        h = h + torch.nn.functional.silu(rms(h) @ params["up"].T) @ params["down"].T
        return rms(h)[-t:] @ params["head"].T

    tokens = torch.randint(0, vocab, (t,), generator=g)
    digest = hashlib.sha256()
    for _ in range(steps):
        logits = forward(tokens)
        u = torch.rand(logits.shape, generator=g).clamp_(min=1e-20, max=1.0 - 1e-7)
        sampled = (logits.detach() - torch.log(-torch.log(u))).argmax(-1)
        loss = torch.nn.functional.cross_entropy(logits[:-1], sampled[1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        digest.update(loss.detach().numpy().tobytes())
        tokens = sampled
    for name in sorted(params):
        digest.update(params[name].detach().numpy().tobytes())
    return digest.hexdigest()[:16]
