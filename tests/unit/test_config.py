"""Both shipped configs validate; the validator names bad keys."""

from pathlib import Path

import pytest
import yaml

from vqinsight.config import ConfigError, config_errors, validate_config

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "config" / "schema.yaml"


@pytest.mark.parametrize("name", ["config.yaml", "demo.yaml"])
def test_shipped_configs_are_valid(name):
    validate_config(yaml.safe_load((ROOT / "config" / name).read_text()), SCHEMA, name)


def test_every_registered_dataset_is_configured_in_both_worlds():
    from vqinsight.data.registry import DATASET_KEYS

    for name in ("config.yaml", "demo.yaml"):
        cfg = yaml.safe_load((ROOT / "config" / name).read_text())
        assert sorted(cfg["datasets"]) == sorted(DATASET_KEYS), name


def test_errors_list_every_problem_with_its_key_path():
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    cfg["seed"] = -1
    cfg["datasets"]["lsvq"]["resources"] = [{"url": "x", "sha256": "not-hex"}]
    errs = config_errors(cfg, yaml.safe_load(SCHEMA.read_text()))
    assert any(e.startswith("seed:") for e in errs)
    assert any(e.startswith("datasets.lsvq.resources.0.sha256:") for e in errs)
    with pytest.raises(ConfigError, match="demo-broken"):
        validate_config(cfg, SCHEMA, "demo-broken")
