"""The cluster profile on the paper DAG: what sbatch would receive for every job of `snakemake --profile slurm all`.

The dry run gives each job's rule, resources and shell command; the sbatch options are then built with the executor
plugin's own functions (partition selection from slurm/partitions.yaml, the submit string, the GPU request), so a
new rule is checked as soon as it is in the DAG: no list of rules here or in the profile.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
PROFILE = ROOT / "slurm"
TRAINING_RULES = {"grpo_stage1", "grpo_stage2", "sft_baseline", "dpo_train", "stage3_refine_judge"}
GPU_RULES = TRAINING_RULES | {
    "judge_predict", "clip_predict", "t2v_sample", "stage3_judge", "stage3_winrate_judge", "stage3_vbench",
}  # fmt: skip


class _Resources(dict):
    """job.resources as the plugin reads it: .get() and attribute access."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def local_rules() -> set[str]:
    """Rules declared `localrules:` (they run on the login node; no sbatch)."""
    names = set()
    for smk in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        text = smk.read_text()
        for block in re.findall(r"^localrules:\n((?:[ \t]+\w+,?\n)+)", text, flags=re.M):
            names |= set(re.findall(r"\w+", block))
        rule = None
        for line in text.splitlines():  # `localrule: True` inside a rule
            if m := re.match(r"\s*rule (\w+):$", line):
                rule = m[1]
            elif rule and line.strip() == "localrule: True":
                names.add(rule)
    return names


def _value(text: str):
    text = text.strip()
    return int(text) if re.fullmatch(r"-?\d+", text) else text


def dry_run_jobs(*args: str) -> list[SimpleNamespace]:
    """Every submitted (non-local) job of a dry run in the repository root: rule, resources, threads, command."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    p = subprocess.run(
        [SNAKEMAKE, "-n", "-p", *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600, check=False
    )
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    jobs, local = [], local_rules()
    for block in re.split(r"^\[.*\]\n(?=(?:local)?rule \w+:$)", out, flags=re.M)[1:]:
        head = block.split("\n", 1)[0]
        cmd = re.search(r"^Shell command: (.*)$", block, flags=re.M)
        if head.startswith("localrule") or head.split()[1].rstrip(":") in local or not cmd or cmd[1] == "None":
            continue  # local rules and target rules without a command are never submitted
        res = re.search(r"^\s+resources: (.*)$", block, flags=re.M)
        resources = _Resources()
        for item in re.finditer(r"(\w+)=([^,]*)(?:, |$)", res.group(1) if res else ""):
            resources[item[1]] = _value(item[2])
        threads = re.search(r"^\s+threads: (\d+)$", block, flags=re.M)
        jobs.append(
            SimpleNamespace(
                name=head.split()[1].rstrip(":"),
                resources=resources,
                threads=int(threads[1]) if threads else 1,
                command=cmd[1],
            )
        )
    assert jobs, out[-3000:]
    return jobs


def sbatch_options(job, profile: dict, partitions) -> tuple[str, str]:
    """(partition, sbatch options) as snakemake-executor-plugin-slurm builds them for this job."""
    from snakemake_executor_plugin_slurm.partitions import get_best_partition
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    log = logging.getLogger("test")
    partition = job.resources.get("slurm_partition") or get_best_partition(partitions, job, log)
    settings = SimpleNamespace(
        requeue=profile.get("slurm-requeue", False),
        no_requeue=profile.get("slurm-no-requeue", False),
        qos=profile.get("slurm-qos"),
        reservation=profile.get("slurm-reservation"),
    )
    params = {
        "run_uuid": "run", "slurm_logfile": "log", "comment_str": f"rule_{job.name}", "account": "-A acct",
        "partition": f"-p {partition}" if partition else "", "workdir": str(ROOT),
    }  # fmt: skip
    return partition, get_submit_command(job, params, settings=settings) + set_gres_string(job)


@pytest.fixture(scope="module")
def paper_jobs():
    return dry_run_jobs("--profile", "slurm", "all")


@pytest.fixture(scope="module")
def profile():
    from snakemake_executor_plugin_slurm.partitions import read_partition_file

    prof = yaml.safe_load((PROFILE / "config.yaml").read_text())
    parts = read_partition_file(PROFILE / prof["slurm-partition-config"])
    return prof, parts


def test_every_gpu_job_reaches_a_gpu_partition_and_requests_its_gpus(paper_jobs, profile):
    prof, parts = profile
    gpu_partitions = {p.name for p in parts if p.limits.max_gpu > 0}
    cpu_partitions = {p.name for p in parts if p.limits.max_gpu == 0}
    assert gpu_partitions and cpu_partitions
    seen = set()
    for job in paper_jobs:
        partition, sbatch = sbatch_options(job, prof, parts)
        gpus = int(job.resources.get("gpu", 0))
        if gpus > 0:
            seen.add(job.name)
            assert partition in gpu_partitions, (job.name, partition, sbatch)
            assert f" --gpus={gpus}" in sbatch or f":{gpus}" in sbatch, (job.name, sbatch)
        else:
            assert partition in cpu_partitions, (job.name, partition, sbatch)
            assert "--gpus" not in sbatch, (job.name, sbatch)
    # the check is not vacuous: the paper DAG's GPU rules are all there (a new one is checked like these)
    assert GPU_RULES <= seen, GPU_RULES - seen


def test_every_training_job_gets_the_warning_signal_and_requeue(paper_jobs, profile):
    """A training job is any job that writes resumable checkpoints (--checkpoint-dir in its command)."""
    prof, parts = profile
    training = set()
    for job in paper_jobs:
        if "--checkpoint-dir" not in job.command:
            continue
        training.add(job.name)
        _, sbatch = sbatch_options(job, prof, parts)
        assert "--signal=URG@600" in sbatch and " --requeue" in sbatch, (job.name, sbatch)
        assert int(job.resources["gpu"]) > 0, job.name
    assert training == TRAINING_RULES, training


def test_every_submitted_rule_sizes_its_own_memory_and_runtime():
    """No job of the paper DAG falls back to the profile's default memory or time (sentinels 1 MB / 1 min)."""
    jobs = dry_run_jobs("--profile", "slurm", "--default-resources", "mem_mb=1", "runtime=1", "--", "all")
    unsized = {j.name for j in jobs if j.resources.get("mem_mb") == 1 or j.resources.get("runtime") == 1}
    assert not unsized, unsized
    t2v_base = next(j for j in jobs if j.name == "t2v_base")
    assert t2v_base.resources["mem_mb"] >= 24000, "a 1.4 B-parameter UNet merged in float32, teacher and student"
