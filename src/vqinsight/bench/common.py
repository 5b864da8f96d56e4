"""Helpers shared by the GPU benchmarks: synchronised timing, peak memory, OOM detection, the JSON result file."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vqinsight.provenance import atomic_write_json

log = logging.getLogger("vqinsight.bench")
GIB = 2**30


def _cuda(device: Any) -> bool:
    return str(device).startswith("cuda")


def sync(device: Any) -> None:
    import torch

    if _cuda(device):
        torch.cuda.synchronize()


def reset_peak(device: Any) -> None:
    """Free cached blocks and restart the peak-memory counter (CUDA only)."""
    import torch

    if _cuda(device):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: Any) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / GIB if _cuda(device) else None


def is_oom(e: BaseException) -> bool:
    return "out of memory" in str(e).lower()


def timed(fn: Callable[[], Any], device: Any) -> tuple[Any, float]:
    """(fn(), wall seconds), synchronised on both sides."""
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


def write_result(out: Path, res: dict[str, Any], body: Callable[[], None]) -> int:
    """Run the benchmark body, then write `res` to `out` (0); on an error keep what was measured plus the
    traceback (1)."""
    try:
        body()
    except Exception as e:
        res["error"] = traceback.format_exc()[-3000:]
        atomic_write_json(out, res)
        log.error("%s", e)
        return 1
    atomic_write_json(out, res)
    log.info("wrote %s", out)
    return 0


def matmul_peak_tflops(device: Any, n: int = 8192, iters: int = 50) -> dict[str, Any]:
    """Dense bf16 matmul rate of this GPU, measured now (``n``³ products, best of 3 bursts of ``iters``).

    MFU figures divide by this as well as by fixed peaks, so a run on another GPU kind (H200 vs H100) or clock
    state has its own ceiling in the same file.
    """
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(5):  # warm-up (cuBLAS heuristics, clocks)
        a @ b

    def burst() -> None:
        for _ in range(iters):
            a @ b

    best = min(timed(burst, device)[1] for _ in range(3))
    return {"tflops": 2 * n**3 * iters / best / 1e12, "shape": [n, n, n], "iters": iters, "dtype": "bfloat16"}
