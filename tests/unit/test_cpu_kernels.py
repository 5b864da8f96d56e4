"""The config's CPU float order (vqinsight.cpu_kernels): what each order sets, where the configs use which, and that
the portable order computes the same floats in every process and on every CPU it has been recorded on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vqinsight.config import ConfigError, validate_config
from vqinsight.cpu_kernels import DEFAULT, ORDER_VARIABLES, PORTABLE_ENV, active_float_order, float_order_env

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "config" / "schema.yaml"

# The portable order's fingerprint() per torch version (the torch wheel bundles MKL and oneDNN), and the CPUs it was
# recorded on. A CPU that gives another value computes other floats in the portable order: the demo's numbers
# (docs/DEMO_LEARNING.md) would not be reproduced there.
PORTABLE_FINGERPRINTS = {
    "2.14.1": ("5d4c7aa9f2384cdd", "AMD EPYC (AVX-512, no AMX)"),
}


def test_the_orders_set_nothing_or_the_portable_kernels():
    assert DEFAULT == "native"
    assert float_order_env(None) == float_order_env("native") == {}
    assert float_order_env("portable") == {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_CBWR": "COMPATIBLE",
    }
    float_order_env("portable")["MKL_CBWR"] = "AUTO"  # a copy: the caller cannot change the order itself
    assert PORTABLE_ENV["MKL_CBWR"] == "COMPATIBLE"
    with pytest.raises(ValueError, match=r"cpu_float_order must be one of \['native', 'portable'\], got 'fast'"):
        float_order_env("fast")


def test_a_job_reports_the_float_order_variables_it_runs_under():
    assert active_float_order({"PATH": "/bin"}) == {}
    env = {"PATH": "/bin", **PORTABLE_ENV, "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    assert active_float_order(env) == {**PORTABLE_ENV, "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def test_the_demo_runs_portable_and_the_paper_config_native():
    cfg = {n: yaml.safe_load((ROOT / "config" / n).read_text()) for n in ("config.yaml", "demo.yaml")}
    assert cfg["demo.yaml"]["cpu_float_order"] == "portable"
    assert cfg["config.yaml"]["cpu_float_order"] == "native"
    # the smoke overlays leave the paper's choice alone
    for overlay in ("smoke.yaml", "smoke_cpu.yaml"):
        assert "cpu_float_order" not in yaml.safe_load((ROOT / "config" / overlay).read_text())


def test_an_unknown_float_order_is_a_config_error_naming_the_key():
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    cfg["cpu_float_order"] = "avx512"
    with pytest.raises(ConfigError, match="cpu_float_order"):
        validate_config(cfg, SCHEMA, "demo-broken")
    del cfg["cpu_float_order"]  # optional: the default (native) applies
    validate_config(cfg, SCHEMA, "demo-without-order")


@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "expected"), [([], PORTABLE_ENV), (["cpu_float_order=native"], {})])
def test_snakemake_gives_its_jobs_the_configs_float_order(tmp_path, overrides, expected):
    """A real job of the demo DAG (building the tiny judge, seconds) records the variables it ran under: the
    portable order's, set by the Snakefile over whatever the caller's environment says; none under native."""
    env = {k: v for k, v in os.environ.items() if k not in ORDER_VARIABLES} | {"ATEN_CPU_CAPABILITY": "default"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if not expected:
        expected = {"ATEN_CPU_CAPABILITY": "default"}  # native leaves the caller's environment alone
    cmd = [str(Path(sys.executable).with_name("snakemake")), "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path)]
    cmd += ["--cores", "1", "results/demo/models/tiny", "--configfile", str(ROOT / "config" / "demo.yaml")]
    if overrides:  # --configfile and --config take several values: the target comes first
        cmd += ["--config", *overrides]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    meta = json.loads((tmp_path / "results/demo/models/tiny/meta.json").read_text())
    assert meta["device"]["cpu_kernels"] == expected


def _fingerprint(env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ORDER_VARIABLES}
    code = "from vqinsight.cpu_kernels import fingerprint; print(fingerprint())"
    out = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, check=True, timeout=300
    )
    return out.stdout.strip()


@pytest.mark.slow
def test_the_portable_order_repeats_its_floats_and_other_kernels_change_them():
    """Two processes in the portable order compute the same floats; PyTorch's scalar kernels (available on every
    CPU) compute others: the fingerprint sees a change of float order."""
    portable = _fingerprint(PORTABLE_ENV)
    assert _fingerprint(PORTABLE_ENV) == portable
    assert _fingerprint({**PORTABLE_ENV, "ATEN_CPU_CAPABILITY": "default"}) != portable


@pytest.mark.slow
def test_the_portable_order_gives_the_recorded_floats_on_this_cpu():
    import torch

    version = torch.__version__.split("+")[0]
    if version not in PORTABLE_FINGERPRINTS:
        pytest.skip(f"no portable fingerprint for torch {version} (recorded: {sorted(PORTABLE_FINGERPRINTS)})")
    expected, where = PORTABLE_FINGERPRINTS[version]
    got = _fingerprint(PORTABLE_ENV)
    flags = _cpu_flags()
    assert got == expected, (
        f"the portable CPU float order computed other floats on this CPU ({flags}) than on the {where} where "
        f"torch {version}'s value was recorded ({got} != {expected}): the demo's learned numbers will differ here"
    )


def _cpu_flags() -> str:
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        return "unknown CPU"
    isa = sorted(f for f in info.get("flags", "").split() if f.startswith(("avx2", "avx512f", "amx")))
    return json.dumps({"model": info.get("model name"), "isa": isa})
