"""The workflow through snakemake-executor-plugin-slurm on a real single-node SLURM (scripts/local-slurm.sh).

Both runs use the test profile tests/slurm/profile (the keys of the cluster profile slurm/config.yaml, with the local
cluster's values) in a scratch working directory:
- a slice of the demo DAG (download + manifest of KonIQ, tiny_model made a GPU job by the profile, and a stage-3
  sampling shard, a GPU job by its rule);
- tests/slurm/flaky.smk: a rule that fails once and is retried, the training rules' warning signal, a local rule.

Needs root (apt install, daemons); skipped where that or apt is missing. The cluster is stopped at the end (also
after a failure) unless it was already up. No subprocess can hang the suite: each has a timeout, after which its
process group is killed and its SLURM jobs are cancelled.

Measured on the 2-core dev machine: `local-slurm.sh start` 34.5 s on first use (apt install and database init,
with a demo run competing for the cores), 2 s once installed; demo slice 32 s; flaky.smk 73 s (the warning signal
comes 30-60 s into its job); stop 7 s; the whole file 1 min 53 s with the packages installed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "local-slurm.sh"
PROFILE = ROOT / "tests" / "slurm" / "profile"
FLAKY = ROOT / "tests" / "slurm" / "flaky.smk"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
JOB_PREFIX = "vqinsight-test"  # slurm-jobname-prefix in the test profile
SMK_TIMEOUT = 240

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    """Run in a new session; on timeout kill the whole process group, cancel our SLURM jobs, fail."""
    p = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw
    )
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        _cancel_test_jobs()
        pytest.fail(f"{' '.join(cmd[:4])} ... timed out after {timeout} s; killed. Output tail:\n{out[-6000:]}")
    return subprocess.CompletedProcess(cmd, p.returncode, out, "")


def _cancel_test_jobs() -> None:
    """scancel every job of this test (names start with the profile's job-name prefix)."""
    try:
        q = subprocess.run(["squeue", "-h", "-o", "%A %j"], capture_output=True, text=True, timeout=30, check=False)
        ids = [
            a for a, name in (line.split(maxsplit=1) for line in q.stdout.splitlines()) if name.startswith(JOB_PREFIX)
        ]
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired, ValueError):
        pass


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("needs root: scripts/local-slurm.sh installs SLURM with apt and runs its daemons")
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and apt-get is not available to install it")
    was_up = _run(["bash", str(SCRIPT), "status"], 60).returncode == 0
    try:
        t0 = time.monotonic()
        p = _run(["bash", str(SCRIPT), "start"], 600)
        if p.returncode == 3:  # the script's "this machine cannot host the cluster"
            pytest.skip(p.stdout.strip().splitlines()[-1])
        assert p.returncode == 0 and "slurm up" in p.stdout, p.stdout[-4000:]
        print(f"local SLURM up in {time.monotonic() - t0:.1f} s")
        yield
    finally:
        if not was_up:
            _run(["bash", str(SCRIPT), "stop"], 180)


def _snakemake(wd: Path, *args: str) -> tuple[subprocess.CompletedProcess, str, datetime]:
    """snakemake --profile tests/slurm/profile --verbose in `wd`; returns the run, its SLURM run ID, its start."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "CUDA_VISIBLE_DEVICES"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    since = datetime.now() - timedelta(minutes=1)
    cmd = [SNAKEMAKE, "-d", str(wd), "--profile", str(PROFILE), "--verbose", *args]
    t0 = time.monotonic()
    p = _run(cmd, SMK_TIMEOUT, cwd=wd, env=env)
    print(f"snakemake {' '.join(args)}: {time.monotonic() - t0:.1f} s")
    (wd / "snakemake.out").write_text(p.stdout)
    assert p.returncode == 0, f"snakemake failed ({p.returncode}):\n{p.stdout[-8000:]}"
    run_id = re.search(r"SLURM run ID: (\S+)", p.stdout).group(1)
    return p, run_id, since


def _sacct(run_id: str, since: datetime) -> list[dict[str, str]]:
    """Allocations (not steps) of one snakemake run, oldest first: id, state, rule (from the job comment), TRES."""
    p = _run(
        ["sacct", "-X", "-n", "--parsable2", "--name", run_id, "-S", since.strftime("%Y-%m-%dT%H:%M:%S")]
        + ["--format", "JobIDRaw,State,Comment,AllocTRES"],
        60,
    )
    assert p.returncode == 0, p.stdout
    lines = [line for line in p.stdout.splitlines() if line.count("|") == 3]
    rows = [dict(zip(("id", "state", "comment", "tres"), line.split("|"), strict=True)) for line in lines]
    for r in rows:
        r["rule"] = re.sub(r"^rule_|_wildcards_.*$", "", r["comment"])
    return sorted(rows, key=lambda r: int(r["id"]))


def _sbatch_call(out: str, rule: str) -> str:
    return next(
        line for line in out.splitlines() if line.startswith("sbatch call:") and f"--comment rule_{rule}" in line
    )


def test_demo_slice_runs_as_slurm_jobs_with_a_gpu_job(cluster, tmp_path):
    """A slice of the demo DAG with two GPU jobs: tiny_model (a GPU job only through the test profile's
    set-resources) and a stage-3 sampling shard (gpu from the rule itself, with stage3.gpus: 1). No partition is
    named anywhere: the plugin selects it from the profile's partitions.yaml."""
    import yaml

    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    cfg["stage3"]["gpus"] = 1
    (tmp_path / "demo_gpu.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    sample = "results/demo/stage3/samples/g0/heldout/shard0/index.jsonl"
    targets = ["results/demo/manifests/koniq.parquet", "results/demo/models/tiny", sample]
    # targets before --configfile, which takes every argument after it
    p, run_id, since = _snakemake(
        tmp_path, "-s", str(ROOT / "Snakefile"), *targets, "--configfile", str(tmp_path / "demo_gpu.yaml")
    )
    assert (tmp_path / targets[0]).stat().st_size > 0
    assert (tmp_path / targets[1] / "config.json").is_file()
    assert (tmp_path / sample).stat().st_size > 0
    for log in ("data/download_koniq.log", "data/manifest_koniq.log", "grpo/tiny_model.log"):
        assert (tmp_path / "logs/demo" / log).stat().st_size > 0, log

    jobs = _sacct(run_id, since)
    want = ["download", "download", "manifest", "manifest", "stage3_prompts", "t2v_base", "t2v_sample", "tiny_model"]
    assert sorted(j["rule"] for j in jobs) == want, jobs  # one each: no retries
    assert all(j["state"] == "COMPLETED" for j in jobs), jobs

    for rule in ("tiny_model", "t2v_sample"):
        gpu_job = next(j for j in jobs if j["rule"] == rule)
        sbatch = _sbatch_call(p.stdout, rule)
        print(sbatch[: sbatch.index("--wrap")])
        assert " --gpus=1" in sbatch and "-p debug" in sbatch and "-A root" in sbatch, sbatch
        assert "--signal=URG@600" in sbatch and " --requeue" in sbatch, sbatch
        assert "gres/gpu=1" in gpu_job["tres"], gpu_job
        # ... and the job saw it (the jobstep's environment, logged with --verbose into the SLURM log)
        slurm_log = next((tmp_path / ".snakemake/slurm_logs" / f"rule_{rule}").rglob(f"{gpu_job['id']}.log"))
        assert "'CUDA_VISIBLE_DEVICES': '0'" in slurm_log.read_text()
        assert "'HF_HUB_OFFLINE': '1'" in slurm_log.read_text(), "jobs never wait for the hub (rules/common.smk)"
    cpu_job = next(j for j in jobs if j["rule"] == "download")
    assert " --gpus" not in _sbatch_call(p.stdout, "download") and "gres/gpu" not in cpu_job["tres"]
    cpu_log = next((tmp_path / ".snakemake/slurm_logs/rule_download").rglob(f"{cpu_job['id']}.log"))
    assert "CUDA_VISIBLE_DEVICES" not in cpu_log.read_text()


@pytest.fixture(scope="module")
def flaky_run(cluster, tmp_path_factory):
    wd = tmp_path_factory.mktemp("flaky")
    p, run_id, since = _snakemake(wd, "-s", str(FLAKY))
    return wd, p.stdout, _sacct(run_id, since)


def test_failed_job_is_resubmitted_with_the_next_attempt(flaky_run):
    wd, out, jobs = flaky_run
    flaky = [j for j in jobs if j["rule"] == "flaky"]
    assert [j["state"] for j in flaky] == ["FAILED", "COMPLETED"], jobs
    assert (wd / "results/flaky.txt").read_text() == "attempt=2\n"
    assert (wd / "logs/flaky.log").read_text().startswith("attempt=2 job=")
    first = wd / ".snakemake/slurm_logs/rule_flaky" / f"{flaky[0]['id']}.log"
    assert "test 1 -ge 2" in first.read_text(), "the first attempt's SLURM log keeps its failure"


def test_warning_signal_reaches_the_program_and_spares_snakemake(flaky_run):
    wd, out, jobs = flaky_run
    assert "--signal=URG@60" in _sbatch_call(out, "warned")
    assert [j["state"] for j in jobs if j["rule"] == "warned"] == ["COMPLETED"], jobs
    # the handler of vqinsight.training got SIGURG, and the shell after it (so Snakemake too) was still alive
    assert re.fullmatch(r"received SIGURG after \d+ s\nshell survived\n", (wd / "results/warned.txt").read_text())


def test_local_rules_run_on_the_submit_host(flaky_run):
    wd, out, jobs = flaky_run
    assert (wd / "results/summary.txt").read_text().endswith("summary job=none\n")
    assert {j["rule"] for j in jobs} == {"flaky", "warned"}, "summary and all were never submitted"
