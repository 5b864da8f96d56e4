# Config validation and input functions only (no rules).
import json
import os
import sys
from pathlib import Path

from vqinsight.config import validate_config
from vqinsight.data.registry import REGISTRY

validate_config(
    config,
    f"{workflow.basedir}/config/schema.yaml",
    source=", ".join(map(str, workflow.overwrite_configfiles)) or "config/config.yaml",
)

# Jobs use the Python environment that runs Snakemake, also when it was started as .venv/bin/snakemake without
# activating the environment (a per-rule conda env, when enabled, is activated in front of it).
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

RUN = config["run"]
RAW = config["raw_dir"]
RESULTS = config["results_dir"]
LOGS = f"logs/{RUN}"
DATASETS = [k for k, v in config["datasets"].items() if v.get("enabled", True)]
# Code whose edits must rerun the cheap rules that use it (Snakemake's code trigger only sees rule text).
SRC = Path(workflow.basedir) / "src" / "vqinsight"
DATA_CODE = [str(SRC / "data" / f) for f in ("registry.py", "parsers.py", "manifest.py")]


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


# ----------------------------------------------------------------------------- GRPO
GRPO = config["grpo"]


def repo_file(path):
    """Recipes and accelerate configs named relative to the repository, wherever the working directory is."""
    return path if os.path.isabs(path) else str(Path(workflow.basedir) / path)


STAGE1_RECIPE = repo_file(GRPO["stage1"]["recipe"])
STAGE2_RECIPE = repo_file(GRPO["stage2"]["recipe"])
TASK_MODELS = list(GRPO["stage2"]["task_models"])
BUILD_TINY = "tiny" in config["model"]


def media_args(wildcards):
    """Frame sampling / pixel budget / scale arguments shared by every command that decodes media."""
    d = config["data"]
    lo, hi = d["score_scale"]
    return (
        f"--cache-dir {RESULTS}/frames/cache --nframes {d['nframes']} --max-pixels {d['max_pixels']} "
        f"--min-pixels {d['min_pixels']} --image-max-pixels {d['image_max_pixels']} --reader {d['reader']} "
        f"--scale {lo} {hi}"
    )


def launcher(wildcards, resources):
    """`accelerate launch` with one process per allocated GPU, or plain python on the CPU."""
    if resources.gpu == 0:
        return "python -m vqinsight.grpo"
    return f"accelerate launch --config_file {GRPO['accelerate']} --num_processes {resources.gpu} " "-m vqinsight.grpo"


def manifest_files(datasets):
    return [f"{RESULTS}/manifests/{d}.parquet" for d in datasets]


def cache_files(datasets):
    """Frame-cache indexes of the datasets that have one (data.frame_cache): decode once, before training."""
    cached = set(config["data"]["frame_cache"])
    return [f"{RESULTS}/frames/{d}.json" for d in datasets if d in cached]


def base_model_input(wildcards):
    """The base model as a file dependency when a rule of this workflow builds it (demo), else nothing."""
    return [config["model"]["base"]] if BUILD_TINY else []


def stage2_spec(wildcards):
    return GRPO["stage2"]["task_models"][wildcards.task_model]


def stage2_manifests(wildcards):
    return manifest_files(stage2_spec(wildcards)["datasets"])


def stage2_eval_manifests(wildcards):
    return manifest_files(stage2_spec(wildcards).get("eval_datasets", []))


def stage2_caches(wildcards):
    return cache_files(stage2_spec(wildcards)["datasets"])


def stage2_init(wildcards):
    """Stage 2 starts from stage 1's model, or from its format warm start where one is configured (demo)."""
    if "format_warm_start" in GRPO["stage2"]:
        return f"{RESULTS}/grpo/stage2/{wildcards.task_model}/init"
    return f"{RESULTS}/grpo/stage1/model"


def stage2_tasks(wildcards):
    return " ".join(stage2_spec(wildcards)["tasks"])


def trust_flag(wildcards):
    return "--trust-remote-code" if config["model"].get("trust_remote_code") else ""


def grpo_models(wildcards=None):
    return [f"{RESULTS}/grpo/stage1/model"] + expand(
        f"{RESULTS}/grpo/stage2/{{task_model}}/model", task_model=TASK_MODELS
    )


wildcard_constraints:
    dataset="|".join(DATASETS) or "NONE",
    task_model="|".join(TASK_MODELS),
