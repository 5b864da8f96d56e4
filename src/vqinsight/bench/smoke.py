"""The paper config's DAG on one GPU (config/smoke.yaml): random-weight checkpoints, the jobs' rendered commands, a
replay that times every job and records its peak GPU memory.

    # 1. on the GPU machine: the real architectures with random weights, as local checkpoint directories
    python -m vqinsight.bench smoke models --root results/smoke/models
    # 2. render every job's exact command (where Snakemake runs; elsewhere, empty model directories suffice)
    snakemake -n -p --cores 16 --configfile config/config.yaml config/smoke.yaml > dry.txt
    python -m vqinsight.bench smoke plan --dry-run dry.txt --out smoke-plan.json [--models-root results/smoke/models]
    # 3. replay the jobs (most important first), time each, sample the GPU's memory, write the report as it goes
    python -m vqinsight.bench smoke run --plan smoke-plan.json --report smoke.json --deadline-s 3600 --max-jobs 4 \\
        [--kill dpo_train --kill-glob 'results/smoke/stage3/checkpoints/united_r1/step-*/COMPLETE']
    python -m vqinsight.bench smoke summary --reports smoke.json [more.json] --out merged.json   # + Markdown table

``models`` writes the Qwen2.5-VL-3B-Instruct architecture (bf16, the project's byte-level tokenizer, the paper's
pixel budgets in its processor), the ModelScope text-to-video-ms-1.7b layout (UNet3D without the w-embedding, SD
VAE, OpenCLIP ViT-H text tower, byte-level CLIP tokenizer) with a random rank-32 LoRA list in T2V-Turbo's
``unet_lora.pt`` order, and CLIP ViT-B/16 for the CLIP baselines; ``plan --models-root DIR`` adds these writes to
the plan as jobs, so the jobs that load a checkpoint wait for it. ``run`` (vqinsight.bench.replay) skips a job whose
outputs exist (as Snakemake would), removes a job's stale outputs before it starts, skips the jobs downstream of a
failure, runs several jobs at once where the GPU's memory allows (``--max-jobs``), kills a job after
``--job-timeout-s`` and stops starting jobs after ``--deadline-s``. Peak GPU memory is sampled by NVML every 0.1 s:
the memory of the job's own processes (CUDA context, allocator cache and all: what a SLURM job must leave room for)
and the device's used memory while it ran. With ``--kill`` the first job of that rule is SIGKILLed once
``--kill-glob`` matches a file (a complete checkpoint), then run again: the report records whether the rerun resumed
(its log says so) and both wall times.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

from vqinsight.bench import replay
from vqinsight.provenance import atomic_write_json

log = logging.getLogger("vqinsight.bench.smoke")
GIB = 2**30

#: The issue's order of importance: each entry's job runs (with what it needs) before the next entry's. The stage-3
#: chain comes first (it is the longest), the held-out samples right after DPO (they free the generators' turn).
PRIORITY: list[tuple[str, dict[str, str]]] = [
    ("grpo_stage1", {}),
    ("grpo_stage2", {"task_model": "comp", "variant": "full"}),
    ("t2v_sample", {"gen": "g0", "split": "train"}),
    ("stage3_judge", {"gen": "g0"}),
    ("dpo_train", {}),
    ("t2v_sample", {"gen": "g0", "split": "heldout"}),
    ("t2v_sample", {"gen": "united_r1", "split": "heldout"}),
    ("stage3_refine_judge", {}),
    ("stage3_winrate_judge", {}),
    ("judge_predict", {"system": "no_united", "benchmark": "genaibench"}),
    ("judge_predict", {"system": "vqinsight", "benchmark": "genaibench"}),
    ("sft_baseline", {}),
    ("clip_predict", {}),
]  # the other stage-2 jobs follow in dependency order, after the judges that need only the base model


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
MODELS = {"vlm": ["Qwen2.5-VL-3B-Instruct"], "t2v": ["text-to-video-ms-1.7b", "T2V-Turbo-MS/unet_lora.pt"],
          "clip": ["clip-vit-base-patch16"]}  # fmt: skip


def model_jobs(root: str, scale: str = "paper") -> list[dict[str, Any]]:
    """``models --only NAME`` as plan jobs (jobids -1, -2, -3), so the jobs that load a checkpoint wait for it."""
    opt = "" if scale == "paper" else f" --scale {scale}"
    jobs = []
    for n, (name, outs) in enumerate(MODELS.items(), 1):
        lg = f"logs/smoke/models_{name}.log"
        jobs.append(
            {
                "rule": "smoke_models",
                "jobid": -n,
                "input": [],
                "output": [f"{root}/{o}" for o in outs],
                "log": [lg],
                "wildcards": {"model": name},
                "gpu": 1,
                "shell": f"python -m vqinsight.bench smoke models --root {root} --only {name}{opt} > {lg} 2>&1",
            }
        )
    return jobs  # fmt: skip


def with_models(jobs: list[dict[str, Any]], root: str, scale: str = "paper") -> list[dict[str, Any]]:
    """``jobs`` plus the model jobs; a job whose command names a model path gets it as an input (the smoke config's
    local model directories are not rule inputs, so Snakemake's dry run does not list them)."""
    models = model_jobs(root, scale)
    for j in jobs:
        for o in (o for m in models for o in m["output"]):
            if o not in j["input"] and re.search(rf"(?<![\w/.-]){re.escape(o)}(?![\w.-])", j["shell"]):
                j["input"].append(o)
    return jobs + models


#: ``models --scale tiny``: the same classes, file layouts, tokenizers and processors (the paper's pixel budgets) at
#: widths that run on a CPU, so the smoke DAG's commands can be replayed on a laptop before a GPU is spent on them.
TINY = {
    "unet": dict(sample_size=32, block_out_channels=(32, 32, 64, 64), cross_attention_dim=32, attention_head_dim=8,
                 layers_per_block=1, norm_num_groups=8, time_cond_proj_dim=256),
    "vae": dict(block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                sample_size=256),
    "text": dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 max_position_embeddings=77, hidden_act="gelu"),
}  # fmt: skip
SCALES = ("paper", "tiny")


def write_models(
    root: Path, seed: int = 0, only: tuple[str, ...] = tuple(MODELS), scale: str = "paper"
) -> dict[str, Any]:
    """The judge, generator base + LoRA and CLIP checkpoints (random weights) under ``root``; existing ones kept.

    ``scale="paper"``: the real sizes (Qwen2.5-VL-3B, text-to-video-ms-1.7b, CLIP ViT-B/16). ``scale="tiny"``: the
    same architectures and files at CPU sizes (``TINY``); the directory names stay, so the plan's commands do not
    change."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    marker = root / "smoke_models.json"  # which scale the checkpoints here have: never mix the two
    if marker.is_file() and (had := json.loads(marker.read_text()).get("scale")) != scale:
        raise ValueError(
            f"{root} holds {had}-scale checkpoints ({marker}); write the {scale} ones to another --root "
            f"(config/smoke_cpu.yaml points the CPU run at results/smoke_cpu/models) or delete {root}"
        )
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, {"scale": scale})
    import torch

    from vqinsight.bench.archs import TEXT_VIT_H, UNET_MS, VAE_SD, build_model
    from vqinsight.models import tiny, tiny_clip
    from vqinsight.t2v.convert import make_lora_weights

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    made: dict[str, Any] = {}
    vlm = root / "Qwen2.5-VL-3B-Instruct"
    if "vlm" in only and not (vlm / "config.json").is_file():
        t = time.perf_counter()
        tok = tiny.build_tokenizer()
        if scale == "tiny":
            model = tiny.build_model(tok, hidden=64, layers=2, heads=4, vis_hidden=32, vis_depth=2, seed=seed)
            model = model.to(torch.bfloat16)
        else:
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
    if "t2v" in only and (not (base / "unet" / "config.json").is_file() or not lora.is_file()):
        from diffusers import AutoencoderKL, UNet3DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        t = time.perf_counter()
        torch.manual_seed(seed)
        ctok = tiny_clip.build_tokenizer()
        sizes = TINY if scale == "tiny" else {"unet": UNET_MS, "vae": VAE_SD, "text": TEXT_VIT_H}
        unet_cfg, vae_cfg, text_cfg = sizes["unet"], sizes["vae"], sizes["text"]
        teacher = {k: v for k, v in unet_cfg.items() if k != "time_cond_proj_dim"}
        with torch.device(dev):
            unet = UNet3DConditionModel(**teacher)
            vae = AutoencoderKL(**vae_cfg)
            ids = {"bos_token_id": ctok.bos_token_id, "eos_token_id": ctok.eos_token_id}
            text = CLIPTextModel(CLIPTextConfig(**text_cfg, **ids, pad_token_id=ctok.pad_token_id))
        unet.save_pretrained(base / "unet", safe_serialization=True)
        vae.save_pretrained(base / "vae", safe_serialization=True)
        text.save_pretrained(base / "text_encoder", safe_serialization=True)
        ctok.save_pretrained(base / "tokenizer")
        lora.parent.mkdir(parents=True, exist_ok=True)
        with torch.device("meta"):  # the LoRA list is made for the student (+ cond_proj), as T2V-Turbo's is
            student = UNet3DConditionModel(**unet_cfg)
        torch.save(make_lora_weights(student, 32, seed=seed), lora)
        made["t2v"] = {"base": str(base), "lora": str(lora), "unet_params": sum(p.numel() for p in unet.parameters()),
                       "seconds": time.perf_counter() - t}  # fmt: skip
        del unet, vae, text
    clip = root / "clip-vit-base-patch16"
    if "clip" in only and not (clip / "config.json").is_file():
        from transformers import CLIPConfig, CLIPModel

        ctok = tiny_clip.build_tokenizer()
        if scale == "tiny":
            model = tiny_clip.build_model(ctok, image_size=224, patch_size=32, seed=seed)
        else:
            cfg = CLIPConfig(
                text_config={"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048,
                             "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 77,
                             "bos_token_id": ctok.bos_token_id, "eos_token_id": ctok.eos_token_id,
                             "pad_token_id": ctok.pad_token_id},
                vision_config={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                               "num_attention_heads": 12, "image_size": 224, "patch_size": 16},
                projection_dim=512,
            )  # fmt: skip
            model = CLIPModel(cfg)
        model.save_pretrained(clip, safe_serialization=True)
        tiny_clip.build_processor(ctok, 224).save_pretrained(clip)
        made["clip"] = {"path": str(clip)}
    return made


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from the reports of successive ``run`` calls over the same plan: per job, the last call that
    ran it (or, if none did, the last status); the devices and elapsed times of every call."""
    jobs: dict[int, dict[str, Any]] = {}
    for n, rep in enumerate(reports):
        for j in rep["jobs"]:
            ran = j["status"] in ("ok", "failed")
            if ran or j["jobid"] not in jobs or jobs[j["jobid"]]["status"] not in ("ok", "failed"):
                jobs[j["jobid"]] = {**j, "call": n} if ran else {**jobs.get(j["jobid"], {}), **j}
    calls = [{k: r.get(k) for k in ("device", "label", "started", "elapsed_s", "deadline_s")} for r in reports]
    return {"config": reports[0].get("config"), "packages": reports[-1].get("packages"), "calls": calls,
            "jobs": sorted(jobs.values(), key=lambda j: (j.get("call", 99), j["jobid"]))}  # fmt: skip


def markdown(rep: dict[str, Any]) -> str:
    """The merged report as a Markdown table, one row per job that ran: wall time, the peak GPU memory of the job's
    processes (and of the whole device while it ran, other jobs included), the jobs beside it, fast paths."""
    rows = ["| job | status | wall s | peak GPU GiB (job / device) | jobs beside | fast paths / notes |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for j in rep["jobs"]:
        if j["status"] not in ("ok", "failed"):
            continue
        wc = ",".join(f"{v}" for v in j["wildcards"].values())
        ev = "; ".join(
            e.split(": ", 1)[-1][:120]
            for e in j.get("evidence", [])
            if re.search("static decoder|batch decoder|margins", e)
        )
        if j.get("killed_run"):
            k = j["killed_run"]
            ev = f"killed after a checkpoint at {k['wall_s']} s, rerun resumed={j.get('resumed')}; " + ev
        gib = f"{j.get('peak_gpu_proc_gib')} / {j.get('peak_gpu_device_gib')}" if j["gpu"] else "–"
        rows.append(f"| {j['rule']} {wc} | {j['status']} | {j['wall_s']} | {gib} | {j.get('concurrent', 0)} | {ev} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vqinsight.bench smoke", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan", help="jobs and run order from `snakemake -n -p` output")
    p.add_argument("--dry-run", required=True, type=Path)
    p.add_argument("--config", default="config/config.yaml config/smoke.yaml")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--models-root", default=None, help="add the `models` jobs writing this folder's checkpoints")
    p.add_argument("--models-scale", choices=SCALES, default="paper", help="the `models` jobs' --scale")
    m = sub.add_parser("models", help="random-weight checkpoints of the real architectures")
    m.add_argument("--root", required=True, type=Path)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", type=Path, default=None, help="JSON summary")
    m.add_argument("--only", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    m.add_argument("--scale", choices=SCALES, default="paper", help="tiny: the same architectures at CPU sizes")
    r = sub.add_parser("run", help="replay the plan's commands")
    r.add_argument("--plan", required=True, type=Path)
    r.add_argument("--report", required=True, type=Path)
    r.add_argument("--deadline-s", type=float, default=540.0, help="start no job after this many seconds")
    r.add_argument("--stop-s", type=float, default=None, help="kill running jobs then (default: deadline + limit)")
    r.add_argument("--job-timeout-s", type=float, default=1800.0, help="kill a job after this many seconds")
    r.add_argument("--max-jobs", type=int, default=1, help="jobs at once (GPU jobs also by --gpu-budget-gib)")
    r.add_argument("--gpu-budget-gib", type=float, default=None, help="default: the GPU's memory less 4 GiB")
    r.add_argument("--rules", nargs="*", default=None, help="run only these rules (the rest of the order is kept)")
    r.add_argument("--kill", default=None, help="rule whose first job is killed once --kill-glob matches")
    r.add_argument("--kill-glob", default=None)
    r.add_argument("--prune-checkpoints", action="store_true", help="delete a finished job's --checkpoint-dir")
    r.add_argument("--ckpt-root", type=Path, default=None, help="jobs' --checkpoint-dir as links into this folder")
    r.add_argument("--label", default=None, help="recorded in the report (e.g. the commit)")
    s = sub.add_parser("summary", help="merge the reports of successive run calls; print a Markdown table")
    s.add_argument("--reports", nargs="+", required=True, type=Path)
    s.add_argument("--out", required=True, type=Path)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if a.cmd == "plan":
        jobs = parse_dry_run(a.dry_run.read_text())
        jobs = order(with_models(jobs, a.models_root, a.models_scale) if a.models_root else jobs)
        atomic_write_json(a.out, {"config": a.config, "jobs": jobs, "schedule": schedule(jobs)})
        log.info("%d jobs (%d on a GPU) -> %s", len(jobs), sum(1 for j in jobs if j["gpu"]), a.out)
        return 0
    if a.cmd == "models":
        made = write_models(a.root, a.seed, tuple(a.only), a.scale)
        if a.out:
            atomic_write_json(a.out, made)
        log.info("models: %s", made)
        return 0
    if a.cmd == "summary":
        rep = merge([json.loads(p.read_text()) for p in a.reports])
        atomic_write_json(a.out, rep)
        sys.stdout.write(markdown(rep) + "\n")
        return 0
    return replay.run(a)


if __name__ == "__main__":
    sys.exit(main())
