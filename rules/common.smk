# Config validation and input functions only (no rules).
import json
from pathlib import Path

from vqinsight.config import validate_config
from vqinsight.data.registry import REGISTRY

validate_config(
    config,
    f"{workflow.basedir}/config/schema.yaml",
    source=", ".join(map(str, workflow.overwrite_configfiles)) or "config/config.yaml",
)

RUN = config["run"]
RAW = config["raw_dir"]
RESULTS = config["results_dir"]
LOGS = f"logs/{RUN}"
DATASETS = [k for k, v in config["datasets"].items() if v.get("enabled", True)]
# Code whose edits must rerun the cheap rules that use it (Snakemake's code trigger only sees rule text).
SRC = Path(workflow.basedir) / "src" / "vqinsight"
DATA_CODE = [str(SRC / "data" / f) for f in ("registry.py", "parsers.py", "manifest.py")]


wildcard_constraints:
    dataset="|".join(DATASETS) or "NONE",


def dataset_spec(wildcards):
    """The dataset's config entry as JSON, handed to the fetch command (changing it reruns the fetch)."""
    return json.dumps(config["datasets"][wildcards.dataset], sort_keys=True)


def score_scale(wildcards):
    lo, hi = config["data"]["score_scale"]
    return f"{lo} {hi}"


NO_VIDEO = ("image_score", "prompt")


def frame_caches(wildcards=None):
    """Frame-cache indexes of the enabled video datasets listed in data.frame_cache."""
    videos = [d for d in config["data"]["frame_cache"] if d in DATASETS and REGISTRY[d].tasks[0] not in NO_VIDEO]
    return expand(f"{RESULTS}/frames/{{dataset}}.json", dataset=videos)


def manifests(wildcards=None):
    return expand(f"{RESULTS}/manifests/{{dataset}}.parquet", dataset=DATASETS)


def raw_dir_of_output(wildcards, output):
    return str(Path(output.stamp).parent)


def raw_dir_of_input(wildcards, input):
    return str(Path(input.stamp).parent)
