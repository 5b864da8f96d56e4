"""The job runner of ``python -m vqinsight.bench smoke run``: replays a plan's shell commands as Snakemake would run
them, several at once on one GPU where its memory allows, and records per job the wall time, the peak GPU memory of
its processes (NVML), the log lines that show its fast paths, and a kill-and-resume of one training job."""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from vqinsight.provenance import atomic_write_json, device_info, package_versions

log = logging.getLogger("vqinsight.bench.smoke")
GIB = 2**30
#: log lines that tell which fast paths a job took (StaticDecoder's settings line, the judge's margin line, a failed
#: compile falling back to eager, resuming from a checkpoint; the batch engine's settings and attention fallback)
EVIDENCE = re.compile(
    r"static decoder|batch decoder|margins:|torch\.compile of the decode step failed|efficient attention|resum|"
    r"out of memory|Traceback",
    re.IGNORECASE,
)


# -------------------------------------------------------------------------------------------------------- run
#: a job's expected peak GPU memory (GiB) for packing jobs onto one GPU; conservative, from docs/PERFORMANCE.md's
#: measurements (3B GRPO step 43.5 GiB at 512 tokens, judging ~15 GiB at batch 8, T2V sampling 6 GiB, DPO 24 GiB).
#: A GPU rule not listed here runs alone. The report holds the measured peaks.
# GiB per job of the smoke config on one GPU, from the first H100 run (process peaks: GRPO stage 1 44.3, stage 2
# comp 39.3, judge 8.9, t2v_sample 8.5, model writing 8.5, CLIP 1.5) plus a margin; SFT and DPO not yet measured
GPU_GIB = {"grpo_stage1": 48, "grpo_stage2": 48, "stage3_refine_judge": 48, "sft_baseline": 48, "dpo_train": 36,
           "judge_predict": 12, "stage3_judge": 12, "stage3_winrate_judge": 12, "t2v_sample": 10, "clip_predict": 4,
           "smoke_models": 10}  # fmt: skip
CKPT_ARG = re.compile(r"--checkpoint-dir (\S+)")


class GpuMemory:
    """Peak GPU memory per job, sampled by NVML every ``period`` s in a thread: the memory of the job's processes
    (its session; CUDA context and allocator cache included: what a SLURM job must leave room for) and the device's
    used memory while it ran. Without NVML or a GPU every figure is None."""

    def __init__(self, period: float = 0.1) -> None:
        self.period, self.jobs, self._stop = period, {}, threading.Event()
        self.total = self.name = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nv, self._h = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
            self.total, self.name = pynvml.nvmlDeviceGetMemoryInfo(self._h).total, pynvml.nvmlDeviceGetName(self._h)
        except Exception:  # noqa: BLE001 - no NVML, no driver, no GPU
            self._nv = None
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()

    def free_gib(self) -> float:
        """The device's free memory now (inf without NVML)."""
        return self._nv.nvmlDeviceGetMemoryInfo(self._h).free / GIB if self._nv is not None else float("inf")

    def watch(self, sid: int, rec: dict[str, Any]) -> None:
        if self._nv is not None:
            rec.update(peak_gpu_proc_gib=0.0, peak_gpu_device_gib=0.0)
        self.jobs[sid] = rec

    def _sample(self) -> None:
        dev = self._nv.nvmlDeviceGetMemoryInfo(self._h).used / GIB
        per_sid: dict[int, float] = {}
        for p in self._nv.nvmlDeviceGetComputeRunningProcesses(self._h):
            try:
                sid = int(Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
            except (OSError, IndexError, ValueError):
                continue
            per_sid[sid] = per_sid.get(sid, 0.0) + (p.usedGpuMemory or 0) / GIB
        for sid, rec in list(self.jobs.items()):
            rec["peak_gpu_device_gib"] = round(max(rec["peak_gpu_device_gib"], dev), 2)
            rec["peak_gpu_proc_gib"] = round(max(rec["peak_gpu_proc_gib"], per_sid.get(sid, 0.0)), 2)

    def _poll(self) -> None:
        while not self._stop.wait(self.period):
            if self._nv is not None and self.jobs:
                try:
                    self._sample()
                except Exception as exc:  # noqa: BLE001 - a failed sample must not stop the run
                    log.warning("NVML sample failed: %s", exc)


def _tail(path: str, n: int = 30) -> list[str]:
    try:
        return Path(path).read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def _evidence(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [ln[:300] for ln in lines if EVIDENCE.search(ln)][:12]


def _made(path: str) -> bool:
    """An output counts as made if it exists, a directory only if it is not empty (empty model directories are
    what the dry run needs where the weights are not written yet)."""
    p = Path(path)
    return p.exists() and (not p.is_dir() or any(p.iterdir()))


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


class Running:
    """One started job: its process (own session), start time, time limit and kill trigger."""

    def __init__(self, job: dict[str, Any], mem: GpuMemory, limit: float, kill_glob: str | None) -> None:
        for o in job["output"]:  # stale outputs go, as Snakemake removes them
            p = Path(o)
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        for p in job["output"] + job["log"]:
            Path(p).parent.mkdir(parents=True, exist_ok=True)
        self.job, self.limit, self.kill_glob, self.rec = job, limit, kill_glob, {"killed": False}
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(["bash", "-c", "set -o pipefail; " + job["shell"]], start_new_session=True)
        self.mem = mem
        mem.watch(self.proc.pid, self.rec)

    def kill(self, why: str) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.rec["killed"] = why

    def poll(self, stop_at: float) -> bool:
        """True once the job has ended (by itself, by its time limit or at ``stop_at``, or at its kill trigger)."""
        if self.proc.poll() is None:
            now = time.perf_counter()
            if self.kill_glob and glob.glob(self.kill_glob):
                self.kill("checkpoint")
            elif now - self.t0 > self.limit:
                self.kill("timeout")
            elif now > stop_at:
                self.kill("stop")
            else:
                return False
        self.mem.jobs.pop(self.proc.pid, None)
        job = self.job
        self.rec.update(
            rc=self.proc.returncode,
            wall_s=round(time.perf_counter() - self.t0, 1),
            ok=self.proc.returncode == 0 and all(_made(o) for o in job["output"]),
            evidence=_evidence(job["log"][0]) if job["log"] else [],
        )
        if not self.rec["ok"] and self.rec["killed"] != "checkpoint":
            self.rec["log_tail"] = _tail(job["log"][0]) if job["log"] else []
        return True


def run(args: argparse.Namespace) -> int:
    """Replay the plan's jobs: in schedule order, each after the jobs it reads from, several at once where the
    GPU's memory (``GPU_GIB`` estimates against ``--gpu-budget-gib``) and ``--max-jobs`` allow; a ready GPU job
    that does not fit waits, and later ones that fit start beside the running ones (on the first GPU run, holding
    them back left the GPU to stage 1 alone for 7 minutes). The report is rewritten after every change."""
    plan = json.loads(args.plan.read_text())
    jobs = {j["jobid"]: j for j in plan["jobs"]}
    seq = [k for k in plan["schedule"] if not args.rules or jobs[k]["rule"] in set(args.rules)]
    mem = GpuMemory()
    budget = args.gpu_budget_gib or (mem.total / GIB - 4 if mem.total else 76.0)
    report: dict[str, Any] = {
        "config": plan.get("config"), "label": args.label, "device": {**device_info(), "gpu": mem.name},
        "packages": package_versions(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "deadline_s": args.deadline_s, "stop_s": args.stop_s, "gpu_budget_gib": budget, "jobs": [],
    }  # fmt: skip
    entries = {}
    for jid in seq:
        entries[jid] = {k: jobs[jid][k] for k in ("jobid", "rule", "wildcards", "gpu", "shell")}
        entries[jid]["status"] = "pending"
        report["jobs"].append(entries[jid])
    t_start = time.perf_counter()
    stop_at = t_start + (args.stop_s if args.stop_s is not None else args.deadline_s + args.job_timeout_s)
    running: dict[int, Running] = {}
    finished: dict[int, bool] = {}  # jobid -> ok
    killed_once = False

    def start(jid: int, kill_glob: str | None = None) -> None:
        job, e = jobs[jid], entries[jid]
        log.info("start %d %s %s (%d running)", jid, job["rule"], job["wildcards"], len(running))
        e.update(status="running", started_s=round(time.perf_counter() - t_start, 1))
        for path in CKPT_ARG.findall(job["shell"]) if args.ckpt_root else []:  # checkpoints on another disk
            link, target = Path(path), args.ckpt_root / path.replace("/", "_")
            if not link.is_symlink():
                target.mkdir(parents=True, exist_ok=True)
                link.parent.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(link, ignore_errors=True)
                link.symlink_to(target.resolve(), target_is_directory=True)
        running[jid] = Running(job, mem, min(args.job_timeout_s, stop_at - time.perf_counter()), kill_glob)
        e["concurrent"] = max(e.get("concurrent", 0), len(running) - 1)

    while True:
        changed = False
        for jid, r in list(running.items()):
            for other in running:
                entries[other]["concurrent"] = max(entries[other].get("concurrent", 0), len(running) - 1)
            if not r.poll(stop_at):
                continue
            changed, e = True, entries[jid]
            del running[jid]
            if r.rec["killed"] == "checkpoint":
                killed_once, e["killed_run"] = True, r.rec
                log.info("killed %s after a checkpoint (%.1f s); running it again", e["rule"], r.rec["wall_s"])
                start(jid)
                continue
            if "killed_run" in e:
                r.rec["resumed"] = any("resum" in ln.lower() for ln in r.rec["evidence"])
            e.update(r.rec, status="ok" if r.rec["ok"] else "failed")
            finished[jid] = r.rec["ok"]
            for path in CKPT_ARG.findall(e["shell"]) if r.rec["ok"] and args.prune_checkpoints else []:
                e["checkpoint_bytes"] = _du(Path(path))
                shutil.rmtree(Path(path).resolve(), ignore_errors=True)
            log.info("  %d %s -> %s in %.1f s, GPU %s GiB", jid, e["rule"], e["status"], r.rec["wall_s"],
                     r.rec.get("peak_gpu_proc_gib"))  # fmt: skip
        now = time.perf_counter() - t_start
        gpu_used = sum(GPU_GIB.get(jobs[k]["rule"], budget) for k in running if jobs[k]["gpu"])
        for jid in seq:
            e, job = entries[jid], jobs[jid]
            needs = [n for n in job["needs"] if n in entries]  # jobs left out by --rules: their files are checked
            if e["status"] != "pending":
                continue
            if all(_made(o) for o in job["output"]) and not any(n in running for n in needs):
                e["status"], finished[jid], changed = "done before", True, True
            elif any(finished.get(n) is False for n in needs):
                e["status"], finished[jid], changed = "skipped: an input job failed", False, True
            elif now > args.deadline_s:
                e["status"], changed = "not run: deadline", True
            elif not all(n in finished for n in needs):
                continue
            elif missing := [i for i in job["input"] if not _made(i)]:
                e["status"] = f"not run: inputs missing ({', '.join(missing[:3])})"
                finished[jid], changed = False, True
            elif len(running) < args.max_jobs:
                need = GPU_GIB.get(job["rule"], budget) if job["gpu"] else 0
                if job["gpu"] and running and (gpu_used + need > budget or need > mem.free_gib() - 1):
                    continue  # a later, smaller GPU job may still fit (first fit in schedule order)
                kill = args.kill_glob if (args.kill == job["rule"] and not killed_once) else None
                start(jid, kill)
                gpu_used, changed = gpu_used + need, True
        if changed or not running:
            report["elapsed_s"] = round(time.perf_counter() - t_start, 1)
            atomic_write_json(args.report, report)
        if not running and all(e["status"] != "pending" for e in entries.values()):
            return 0
        time.sleep(0.2)
