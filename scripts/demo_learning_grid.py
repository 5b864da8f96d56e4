"""Train the demo's task models over a grid of seeds x CPU float orders and write the distribution of what they learn.

The demo's tiny judges are trained by GRPO, whose trajectory is chaotic in its numerics: the same recipe on another
CPU (another float summation order in the kernels) or with another seed can end in another model. A learning claim
is only worth stating if it holds across both. This script measures that:

    python scripts/demo_learning_grid.py --workdir /tmp/grid --seeds 0 1 2 3 4 --float-orders portable best avx2 \
        --jobs 2 --out docs/bench/demo_learning_grid.json

* The demo's data (every manifest and frame cache) and the untrained tiny model are built once, in
  ``<workdir>/base``, by the demo DAG itself.
* Each cell (seed, float order) runs the demo DAG's training rules in ``<workdir>/cells/<seed>_<order>`` with
  ``--config seed=<seed> cpu_float_order=<native|portable>``: the format warm start (demo_base), stage 1, the
  stage-2 format warm starts and the stage-2 task models of ``--task-models``; the data are hard links to the
  base's.
* Float orders: ``portable`` is the demo's own (``cpu_float_order: portable``, vqinsight.cpu_kernels: the same sums on
  any x86-64 CPU with AVX2); ``best`` leaves the CPU kernels as they are; ``avx2`` caps ATen, oneDNN and MKL at AVX2,
  which on a machine with AVX-512 or AMX changes the summation order of the matmuls. ``best`` and ``avx2`` differ
  from CPU to CPU (by vendor too: MKL picks its code path by the processor).
* Jobs import this checkout's ``src`` (PYTHONPATH), so a grid can run from a separate worktree of a fixed commit.
* The JSON lists every cell's held-out metrics before and after training and, per claim, how many seeds it holds
  for under each float order; the claims are those of docs/DEMO_LEARNING.md and the workflow tests.

A cell takes about 12 minutes of one core; ``--jobs`` cells run side by side (one thread each).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

log = logging.getLogger("demo_grid")
ROOT = Path(__file__).resolve().parents[1]
RUN = "results/demo"
DATA_DIRS = ("raw", "manifests", "frames", "quarantine", "models/tiny")
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
# float order -> (the config's cpu_float_order, environment): the Snakefile sets the portable order's variables itself
FLOAT_ORDERS = {"best": ("native", {}), "avx2": ("native", AVX2), "portable": ("portable", {})}
# task model -> (eval.json path under results/demo/grpo, held-out task)
MODELS = {
    "stage1": ("stage1/model", "image_score"),
    "comp": ("stage2/comp/full/model", "comparison"),
    "naturalvideo": ("stage2/naturalvideo/full/model", "video_score"),
    "aigcvideo": ("stage2/aigcvideo/full/model", "multidim_score"),
}


def claims(m: dict) -> dict[str, bool | None]:
    """The demo's learning claims on one cell's metrics (None: the model was not trained in this cell).

    The same statements as the workflow tests (tests/workflow/test_workflow.py) and the README's demo table.
    """
    out: dict[str, bool | None] = {}
    s1 = m.get("stage1")
    # the warm start must not already rank the right way (a negative SRCC is no head start: greedy answers of a
    # near-uniform start follow tiny image-dependent differences, either way)
    out["stage1: SRCC <= 0.2 -> >= 0.3"] = (
        None if s1 is None else (s1["before"]["srcc"] <= 0.2 and s1["after"]["srcc"] >= 0.3)
    )
    c = m.get("comp")
    out["comp: +15 points, both letters"] = (
        None
        if c is None
        else c["after"]["accuracy"] >= c["before"]["accuracy"] + 0.15 and 0.05 <= c["after"]["rate_A"] <= 0.95
    )
    n = m.get("naturalvideo")
    out["naturalvideo: LSVQ SRCC >= 0.3"] = None if n is None else n["after"]["srcc"] >= 0.3
    a = m.get("aigcvideo")
    out["aigcvideo: LGVQ spatial SRCC >= 0.3"] = None if a is None else a["after"]["spatial"]["srcc"] >= 0.3
    return out


def smk(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), *args]
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        subprocess.run(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, check=True)


def build_base(workdir: Path, configfile: Path, jobs: int) -> Path:
    base = workdir / "base"
    base.mkdir(parents=True, exist_ok=True)
    log.info(f"building the demo data in {base}")
    smk(
        [
            "--configfile",
            str(configfile),
            "--cores",
            str(jobs),
            "--rerun-triggers",
            "mtime",
            "--",
            *data_targets(configfile),
        ],
        base,
        _env(),
        base / "grid.log",
    )
    return base


def data_targets(configfile: Path) -> list[str]:
    """Every manifest and frame cache of the config, and the untrained tiny model."""
    cfg = yaml.safe_load(configfile.read_text())
    frames = [d for d in cfg["data"]["frame_cache"] if d in cfg["datasets"]]
    return (
        [f"{RUN}/manifests/{d}.parquet" for d in cfg["datasets"]]
        + [f"{RUN}/frames/{d}.json" for d in frames]
        + [f"{RUN}/models/tiny"]
    )


def targets(task_models: list[str]) -> list[str]:
    return [f"{RUN}/grpo/{MODELS[t][0]}" for t in ["stage1", *task_models]]


def run_cell(
    base: Path, workdir: Path, configfile: Path, seed: int, order: str, task_models: list[str], keep: bool
) -> dict:
    cell = workdir / "cells" / f"{seed}_{order}"
    if cell.exists() and not keep:
        shutil.rmtree(cell)
    for d in DATA_DIRS:  # hard links keep the base's mtimes: nothing upstream of the training reruns
        if not (cell / RUN / d).exists():
            (cell / RUN / d).parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["cp", "-al", str(base / RUN / d), str(cell / RUN / d)], check=True)
    cpu_float_order, order_env = FLOAT_ORDERS[order]
    env = {**_env(), **order_env}
    t0 = time.time()
    log.info(f"cell seed={seed} order={order} started")
    smk(
        [
            "--configfile",
            str(configfile),
            "--config",
            f"seed={seed}",
            f"cpu_float_order={cpu_float_order}",
            "--cores",
            "1",
            "--rerun-triggers",
            "mtime",
            "--",
            *targets(task_models),
        ],
        cell,
        env,
        cell / "grid.log",
    )
    metrics = {}
    for name in ["stage1", *task_models]:
        path, task = MODELS[name]
        ev = json.loads((cell / RUN / "grpo" / path / "eval.json").read_text())
        metrics[name] = {"before": ev["before"][task], "after": ev["after"][task]}
    wall = time.time() - t0
    log.info(f"cell seed={seed} order={order} done in {wall:.0f} s")
    return {
        "seed": seed,
        "float_order": order,
        "wall_s": round(wall, 1),
        "metrics": metrics,
        "claims": claims(metrics),
    }


def summarise(cells: list[dict], orders: list[str]) -> dict:
    names = list(cells[0]["claims"]) if cells else []
    out = {}
    for name in names:
        per = {}
        for order in orders:
            vals = [c["claims"][name] for c in cells if c["float_order"] == order and c["claims"][name] is not None]
            per[order] = {"holds": sum(vals), "of": len(vals)}
        out[name] = per
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--configfile", type=Path, default=ROOT / "config" / "demo.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--float-orders", nargs="+", default=["portable"], choices=list(FLOAT_ORDERS))
    ap.add_argument(
        "--task-models", nargs="*", default=["comp", "naturalvideo", "aigcvideo"], choices=list(MODELS)[1:]
    )
    ap.add_argument("--jobs", type=int, default=2, help="cells side by side")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--keep-cells",
        action="store_true",
        help="reuse existing cells: only missing models are trained (delete a model directory to retrain it)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    workdir = args.workdir.resolve()
    base = build_base(workdir, args.configfile.resolve(), args.jobs)
    grid = [(s, o) for s in args.seeds for o in args.float_orders]
    cells: list[dict] = []

    def write() -> None:
        doc = {
            "command": " ".join(["python", "scripts/demo_learning_grid.py", *(argv or sys.argv[1:])]),
            "git": _git(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_flags": _cpu_flags(),
            "configfile": str(args.configfile),
            "cells": sorted(cells, key=lambda c: (c["float_order"], c["seed"])),
            "summary": summarise(cells, args.float_orders),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")

    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [
            pool.submit(run_cell, base, workdir, args.configfile.resolve(), s, o, args.task_models, args.keep_cells)
            for s, o in grid
        ]
        for f in futures:
            try:
                cells.append(f.result())
            except subprocess.CalledProcessError as e:
                log.error(f"a cell failed: {e}")
            write()  # a partial grid is kept if a later cell fails or the run is stopped
    log.info("summary: %s", json.dumps(summarise(cells, args.float_orders), indent=1))


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
    }


def _git() -> dict[str, object]:
    """The checkout's commit and the files that differ from it (a grid may run with one recipe changed)."""

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "changed": git("status", "--short").splitlines()}


def _cpu_flags() -> list[str]:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":")[1].split()
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f.startswith(("avx2", "avx512f", "amx")))


if __name__ == "__main__":
    main()
