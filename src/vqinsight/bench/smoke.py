"""The paper config's DAG on one GPU (config/smoke.yaml): random-weight checkpoints, the jobs' rendered commands, a
replay that times every job and records its peak GPU memory.

    # 1. on the GPU machine: the real architectures with random weights, as local checkpoint directories
    python -m vqinsight.bench smoke models --root results/smoke/models
    # 2. render every job's exact command (where Snakemake runs; elsewhere, empty model directories suffice)
    snakemake -n -p --cores 16 --configfile config/config.yaml config/smoke.yaml > dry.txt
    python -m vqinsight.bench smoke plan --dry-run dry.txt --out smoke-plan.json
    # 3. replay the jobs (most important first), time each, sample the GPU's memory, write the report as it goes
    python -m vqinsight.bench smoke run --plan smoke-plan.json --report smoke.json --deadline-s 3600 \\
        [--kill dpo_train --kill-glob 'results/smoke/stage3/checkpoints/united_r1/step-*/COMPLETE']
    python -m vqinsight.bench smoke summary --reports smoke.json [more.json] --out merged.json   # + Markdown table

``models`` writes the Qwen2.5-VL-3B-Instruct architecture (bf16, the project's byte-level tokenizer, the paper's
pixel budgets in its processor), the ModelScope text-to-video-ms-1.7b layout (UNet3D without the w-embedding, SD
VAE, OpenCLIP ViT-H text tower, byte-level CLIP tokenizer) with a random rank-32 LoRA list in T2V-Turbo's
``unet_lora.pt`` order, and CLIP ViT-B/16 for the CLIP baselines. ``run`` skips a job whose outputs exist (as
Snakemake would), removes a job's stale outputs before it starts, skips the jobs downstream of a failure, and stops
starting jobs after ``--deadline-s``. Peak GPU memory is the device's used memory sampled by NVML every 0.1 s while
the job runs (what a SLURM job must leave room for: CUDA context, allocator cache and all). With ``--kill`` the
first job of that rule is SIGKILLed once ``--kill-glob`` matches a file (a complete checkpoint), then run again: the
report records whether the rerun resumed (its log says so) and both wall times.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from vqinsight.provenance import atomic_write_json, device_info, package_versions

log = logging.getLogger("vqinsight.bench.smoke")
GIB = 2**30

#: The issue's order of importance: each entry's job runs (with what it needs) before the next entry's.
PRIORITY: list[tuple[str, dict[str, str]]] = [
    ("grpo_stage1", {}),
    ("grpo_stage2", {"task_model": "comp", "variant": "full"}),
    ("judge_predict", {"system": "no_united", "benchmark": "genaibench"}),
    ("t2v_sample", {"gen": "g0", "split": "train"}),
    ("stage3_judge", {"gen": "g0"}),
    ("dpo_train", {}),
    ("stage3_refine_judge", {}),
    ("stage3_winrate_judge", {}),
    ("judge_predict", {"system": "vqinsight", "benchmark": "genaibench"}),
    ("grpo_stage2", {"task_model": "naturalvideo", "variant": "full"}),
    ("grpo_stage2", {"task_model": "aigcvideo", "variant": "full"}),
    ("sft_baseline", {}),
    ("clip_predict", {}),
]
#: log lines that tell which fast paths a job took (StaticDecoder's settings line, the judge's margin line, a failed
#: compile falling back to eager, resuming from a checkpoint)
EVIDENCE = re.compile(
    r"static decoder|margins:|torch\.compile of the decode step failed|resum|out of memory|Traceback", re.IGNORECASE
)


# ------------------------------------------------------------------------------------------------------- plan
def parse_dry_run(text: str) -> list[dict[str, Any]]:
    """Jobs of ``snakemake -n -p`` output: rule, jobid, input, output, log, wildcards, gpu, shell command."""
    jobs: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for line in text.splitlines():
        if m := re.match(r"(?:local)?rule (\w+):$", line):
            cur = {"rule": m.group(1), "input": [], "output": [], "log": [], "wildcards": {}, "gpu": 0, "shell": None}
            jobs.append(cur)
        elif cur is None:
            continue
        elif m := re.match(r"\s+(input|output|log): (.*)$", line):
            cur[m.group(1)] = [p for p in m.group(2).split(", ") if p]
        elif m := re.match(r"\s+jobid: (\d+)$", line):
            cur["jobid"] = int(m.group(1))
        elif m := re.match(r"\s+wildcards: (.*)$", line):
            cur["wildcards"] = dict(kv.split("=", 1) for kv in m.group(1).split(", "))
        elif m := re.match(r"\s+resources: (.*)$", line):
            res = dict(kv.split("=", 1) for kv in m.group(1).split(", ") if "=" in kv)
            cur["gpu"] = int(res.get("gpu", 0))
        elif line.startswith("Shell command: "):
            cur["shell"] = line[len("Shell command: ") :]
            cur = None
    return [j for j in jobs if j.get("shell")]


def _under(path: str, outputs: list[str]) -> bool:
    return any(path == o or path.startswith(o.rstrip("/") + "/") for o in outputs)


def order(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Jobs in dependency order (a job after every job whose output it reads), ties by jobid; each job gets
    ``needs``: the jobids it reads from."""
    for j in jobs:
        j["needs"] = sorted(
            {k["jobid"] for k in jobs if k is not j and any(_under(i, k["output"]) for i in j["input"])}
        )
    done: set[int] = set()
    out: list[dict[str, Any]] = []
    pending = sorted(jobs, key=lambda j: j["jobid"])
    while pending:
        ready = [j for j in pending if set(j["needs"]) <= done]
        if not ready:
            raise ValueError(f"dependency cycle among jobs {[j['jobid'] for j in pending]}")
        for j in ready:
            done.add(j["jobid"])
            out.append(j)
        pending = [j for j in pending if j["jobid"] not in done]
    return out


def schedule(jobs: list[dict[str, Any]], priority: list[tuple[str, dict[str, str]]] = PRIORITY) -> list[int]:
    """Jobids in run order: each priority entry's first matching job with its not yet scheduled ancestors (in
    dependency order), then every other job in dependency order."""
    by_id = {j["jobid"]: j for j in jobs}
    rank = {j["jobid"]: n for n, j in enumerate(order(list(jobs)))}
    seq: list[int] = []

    def add(jid: int) -> None:
        todo, stack = set(), [jid]
        while stack:
            k = stack.pop()
            if k not in todo and k not in seq:
                todo.add(k)
                stack.extend(by_id[k]["needs"])
        seq.extend(sorted(todo, key=rank.__getitem__))

    for rule, wc in priority:
        for j in sorted(jobs, key=lambda j: rank[j["jobid"]]):
            if j["rule"] == rule and all(j["wildcards"].get(k) == v for k, v in wc.items()):
                if j["jobid"] not in seq:
                    add(j["jobid"])
                break
    for jid in sorted(by_id, key=rank.__getitem__):
        if jid not in seq:
            add(jid)
    return seq


# ----------------------------------------------------------------------------------------------------- models
def write_models(root: Path, seed: int = 0) -> dict[str, Any]:
    """The judge, generator base + LoRA and CLIP checkpoints (random weights) under ``root``; existing ones kept."""
    import torch

    from vqinsight.bench.grpo_step import build_model
    from vqinsight.bench.t2v import TEXT_VIT_H, UNET_MS, VAE_SD
    from vqinsight.models import tiny, tiny_clip
    from vqinsight.t2v.convert import make_lora_weights

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    made: dict[str, Any] = {}
    vlm = root / "Qwen2.5-VL-3B-Instruct"
    if not (vlm / "config.json").is_file():
        t = time.perf_counter()
        tok = tiny.build_tokenizer()
        model = build_model("3b", tok, dev, torch.bfloat16, seed)
        proc = tiny.build_processor(  # the paper's pixel budgets (config/config.yaml data.*)
            tok, image_min_pixels=3136, image_max_pixels=250880, video_min_pixels=100352, video_max_pixels=100352
        )
        model.save_pretrained(vlm, safe_serialization=True)
        proc.save_pretrained(vlm)
        tok.save_pretrained(vlm)
        made["vlm"] = {"path": str(vlm), "params": sum(p.numel() for p in model.parameters()),
                       "seconds": time.perf_counter() - t}  # fmt: skip
        del model
        torch.cuda.empty_cache() if dev == "cuda" else None
    base = root / "text-to-video-ms-1.7b"
    lora = root / "T2V-Turbo-MS" / "unet_lora.pt"
    if not (base / "unet" / "config.json").is_file() or not lora.is_file():
        from diffusers import AutoencoderKL, UNet3DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        t = time.perf_counter()
        torch.manual_seed(seed)
        ctok = tiny_clip.build_tokenizer()
        teacher = {k: v for k, v in UNET_MS.items() if k != "time_cond_proj_dim"}
        with torch.device(dev):
            unet = UNet3DConditionModel(**teacher)
            vae = AutoencoderKL(**VAE_SD)
            ids = {"bos_token_id": ctok.bos_token_id, "eos_token_id": ctok.eos_token_id}
            text = CLIPTextModel(CLIPTextConfig(**TEXT_VIT_H, **ids, pad_token_id=ctok.pad_token_id))
        unet.save_pretrained(base / "unet", safe_serialization=True)
        vae.save_pretrained(base / "vae", safe_serialization=True)
        text.save_pretrained(base / "text_encoder", safe_serialization=True)
        ctok.save_pretrained(base / "tokenizer")
        lora.parent.mkdir(parents=True, exist_ok=True)
        with torch.device("meta"):  # the LoRA list is made for the student (+ cond_proj), as T2V-Turbo's is
            student = UNet3DConditionModel(**UNET_MS)
        torch.save(make_lora_weights(student, 32, seed=seed), lora)
        made["t2v"] = {"base": str(base), "lora": str(lora), "unet_params": sum(p.numel() for p in unet.parameters()),
                       "seconds": time.perf_counter() - t}  # fmt: skip
        del unet, vae, text
    clip = root / "clip-vit-base-patch16"
    if not (clip / "config.json").is_file():
        from transformers import CLIPConfig, CLIPModel

        ctok = tiny_clip.build_tokenizer()
        cfg = CLIPConfig(
            text_config={"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                         "num_attention_heads": 8, "max_position_embeddings": 77, "bos_token_id": ctok.bos_token_id,
                         "eos_token_id": ctok.eos_token_id, "pad_token_id": ctok.pad_token_id},
            vision_config={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                           "num_attention_heads": 12, "image_size": 224, "patch_size": 16},
            projection_dim=512,
        )  # fmt: skip
        CLIPModel(cfg).save_pretrained(clip, safe_serialization=True)
        tiny_clip.build_processor(ctok, 224).save_pretrained(clip)
        made["clip"] = {"path": str(clip)}
    return made


# -------------------------------------------------------------------------------------------------------- run
class GpuMemory:
    """Peak of the device's used memory (NVML), sampled in a thread; None without NVML or a GPU."""

    def __init__(self, period: float = 0.1) -> None:
        self.period, self.peak, self._stop = period, 0, threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._h = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._used = lambda: pynvml.nvmlDeviceGetMemoryInfo(self._h).used
        except Exception:  # noqa: BLE001 - no NVML, no driver, no GPU
            self._used = None

    def used(self) -> int | None:
        return self._used() if self._used else None

    def __enter__(self) -> GpuMemory:
        self.peak = self.used() or 0
        self._stop.clear()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.period):
            self.peak = max(self.peak, self.used() or 0)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()


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


def run_job(job: dict[str, Any], mem: GpuMemory, timeout: float, kill_glob: str | None = None) -> dict[str, Any]:
    """Run one job's shell command as Snakemake would (stale outputs removed, log/output dirs made)."""
    for o in job["output"]:
        p = Path(o)
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    for p in job["output"] + job["log"]:
        Path(p).parent.mkdir(parents=True, exist_ok=True)
    rec: dict[str, Any] = {"killed": False}
    t0 = time.perf_counter()
    with mem:
        proc = subprocess.Popen(["bash", "-c", "set -o pipefail; " + job["shell"]], start_new_session=True)
        while proc.poll() is None:
            time.sleep(0.2)
            elapsed = time.perf_counter() - t0
            hit = kill_glob is not None and glob.glob(kill_glob)
            if elapsed > timeout or hit:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rec["killed"] = "checkpoint" if hit else "timeout"
    rec.update(
        rc=proc.returncode,
        wall_s=round(time.perf_counter() - t0, 1),
        peak_gpu_used_gib=round(mem.peak / GIB, 2) if mem.used() is not None else None,
        ok=proc.returncode == 0 and all(Path(o).exists() for o in job["output"]),
        evidence=_evidence(job["log"][0]) if job["log"] else [],
    )
    if not rec["ok"]:
        rec["log_tail"] = _tail(job["log"][0]) if job["log"] else []
    return rec


def run(args: argparse.Namespace) -> int:
    plan = json.loads(args.plan.read_text())
    jobs = {j["jobid"]: j for j in plan["jobs"]}
    seq = plan["schedule"]
    if args.rules:
        keep = set(args.rules)
        seq = [k for k in seq if jobs[k]["rule"] in keep]
    report: dict[str, Any] = {
        "config": plan.get("config"),
        "device": device_info(),
        "packages": package_versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "deadline_s": args.deadline_s,
        "jobs": [],
    }
    mem = GpuMemory()
    t_start, failed, killed_once = time.perf_counter(), set(), False
    for jid in seq:
        job = jobs[jid]
        entry = {k: job[k] for k in ("jobid", "rule", "wildcards", "gpu", "shell")}
        report["jobs"].append(entry)
        left = args.deadline_s - (time.perf_counter() - t_start)
        if all(Path(o).exists() for o in job["output"]):
            entry["status"] = "done before"
        elif set(job["needs"]) & failed:
            entry["status"] = "skipped: an input job failed"
            failed.add(jid)
        elif left <= 0:
            entry["status"] = "not run: deadline"
        elif missing := [i for i in job["input"] if not Path(i).exists()]:
            entry["status"] = f"not run: inputs missing ({', '.join(missing[:3])})"
        else:
            kill = args.kill_glob if (args.kill == job["rule"] and not killed_once) else None
            log.info("job %d %s %s (%.0f s left)", jid, job["rule"], job["wildcards"], left)
            rec = run_job(job, mem, timeout=max(left, 30.0) + args.grace_s, kill_glob=kill)
            if rec["killed"] == "checkpoint":
                killed_once = True
                entry["killed_run"] = rec
                log.info("killed %s after a checkpoint (%.1f s); running it again", job["rule"], rec["wall_s"])
                rec = run_job(job, mem, timeout=max(args.deadline_s - (time.perf_counter() - t_start), 30.0)
                              + args.grace_s)  # fmt: skip
                rec["resumed"] = any("resum" in ln.lower() for ln in rec["evidence"])
            entry.update(rec)
            entry["status"] = "ok" if rec["ok"] else "failed"
            if not rec["ok"]:
                failed.add(jid)
            log.info("  -> %s in %.1f s, peak GPU %s GiB", entry["status"], rec["wall_s"], rec["peak_gpu_used_gib"])
        report["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        atomic_write_json(args.report, report)
    return 0


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from the reports of successive ``run`` calls over the same plan: per job, the last call that
    ran it (or, if none did, the last status); the devices and elapsed times of every call."""
    jobs: dict[int, dict[str, Any]] = {}
    for n, rep in enumerate(reports):
        for j in rep["jobs"]:
            ran = j["status"] in ("ok", "failed")
            if ran or j["jobid"] not in jobs or jobs[j["jobid"]]["status"] not in ("ok", "failed"):
                jobs[j["jobid"]] = {**j, "call": n} if ran else {**jobs.get(j["jobid"], {}), **j}
    calls = [{k: r.get(k) for k in ("device", "started", "elapsed_s", "deadline_s")} for r in reports]
    return {"config": reports[0].get("config"), "packages": reports[-1].get("packages"), "calls": calls,
            "jobs": sorted(jobs.values(), key=lambda j: (j.get("call", 99), j["jobid"]))}  # fmt: skip


def markdown(rep: dict[str, Any]) -> str:
    """The merged report as a Markdown table, one row per job that ran."""
    rows = ["| job | status | wall s | peak GPU GiB | fast paths / notes |", "|---|---|---|---|---|"]
    for j in rep["jobs"]:
        if j["status"] not in ("ok", "failed"):
            continue
        wc = ",".join(f"{v}" for v in j["wildcards"].values())
        ev = "; ".join(
            e.split(": ", 1)[-1][:120] for e in j.get("evidence", []) if "static decoder" in e or "margins" in e
        )
        if j.get("killed_run"):
            k = j["killed_run"]
            ev = f"killed after a checkpoint at {k['wall_s']} s, rerun resumed={j.get('resumed')}; " + ev
        gib = j.get("peak_gpu_used_gib")
        rows.append(f"| {j['rule']} {wc} | {j['status']} | {j['wall_s']} | {gib if j['gpu'] else '–'} | {ev} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vqinsight.bench smoke", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan", help="jobs and run order from `snakemake -n -p` output")
    p.add_argument("--dry-run", required=True, type=Path)
    p.add_argument("--config", default="config/config.yaml config/smoke.yaml")
    p.add_argument("--out", required=True, type=Path)
    m = sub.add_parser("models", help="random-weight checkpoints of the real architectures")
    m.add_argument("--root", required=True, type=Path)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", type=Path, default=None, help="JSON summary")
    r = sub.add_parser("run", help="replay the plan's commands")
    r.add_argument("--plan", required=True, type=Path)
    r.add_argument("--report", required=True, type=Path)
    r.add_argument("--deadline-s", type=float, default=540.0, help="start no job after this many seconds")
    r.add_argument("--grace-s", type=float, default=0.0, help="a job may run this long past the deadline")
    r.add_argument("--rules", nargs="*", default=None, help="run only these rules (the rest of the order is kept)")
    r.add_argument("--kill", default=None, help="rule whose first job is killed once --kill-glob matches")
    r.add_argument("--kill-glob", default=None)
    s = sub.add_parser("summary", help="merge the reports of successive run calls; print a Markdown table")
    s.add_argument("--reports", nargs="+", required=True, type=Path)
    s.add_argument("--out", required=True, type=Path)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if a.cmd == "plan":
        jobs = order(parse_dry_run(a.dry_run.read_text()))
        atomic_write_json(a.out, {"config": a.config, "jobs": jobs, "schedule": schedule(jobs)})
        log.info("%d jobs (%d on a GPU) -> %s", len(jobs), sum(1 for j in jobs if j["gpu"]), a.out)
        return 0
    if a.cmd == "models":
        made = write_models(a.root, a.seed)
        if a.out:
            atomic_write_json(a.out, made)
        log.info("models: %s", made)
        return 0
    if a.cmd == "summary":
        rep = merge([json.loads(p.read_text()) for p in a.reports])
        atomic_write_json(a.out, rep)
        sys.stdout.write(markdown(rep) + "\n")
        return 0
    return run(a)


if __name__ == "__main__":
    sys.exit(main())
