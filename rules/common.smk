# Config validation and input functions only (no rules).
import json
import os
import re
import shlex
import sys
from pathlib import Path

from vqinsight.config import ConfigError, config_problems, recipe_problems, validate_config
from vqinsight.cpu_kernels import float_order_env
from vqinsight.data.registry import REGISTRY


def config_source():
    """What the config was read from, for error messages: the config files and any --config entries."""
    src = ", ".join(map(str, workflow.overwrite_configfiles)) or "config/config.yaml"
    keys = sorted(workflow.config_settings.config)
    if keys:
        src += (
            f" with --config {', '.join(keys)} (--config replaces each of these top-level entries whole; to change "
            "one nested value, overlay a second config file: --configfile config/config.yaml my-changes.yaml)"
        )
    return src


validate_config(config, f"{workflow.basedir}/config/schema.yaml", source=config_source())
_problems = config_problems(config, workflow.basedir, {d: r.splits for d, r in REGISTRY.items()})
if _problems:
    raise ConfigError(f"invalid {config_source()}:\n  " + "\n  ".join(_problems))

# Jobs use the Python environment that runs Snakemake, also when it was started as .venv/bin/snakemake without
# activating the environment (a per-rule conda env, when enabled, is activated in front of it).
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
# Jobs load checkpoints from local directories only (`snakemake models` downloads them on the login node), so a job
# on a compute node without internet access never waits for the hub. Export HF_HUB_OFFLINE=0 to allow it anyway.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The CPU kernels of every job (vqinsight.cpu_kernels): "portable" (the demo's) gives a job the same float32 sums on
# any x86-64 CPU with AVX2, whatever the environment asked for; "native" (the default) leaves the environment alone.
os.environ.update(float_order_env(config.get("cpu_float_order")))

RUN = config["run"]
RAW = config["raw_dir"]
RESULTS = config["results_dir"]
LOGS = f"logs/{RUN}"
DATASETS = [k for k, v in config["datasets"].items() if v.get("enabled", True)]


def repo_file(path):
    """A file of the repository (code, recipe, accelerate config) as jobs and Snakemake's records name it: relative
    to the working directory, so a project moved or cloned elsewhere with its results (the same relative layout)
    plans nothing to do. A path the user gives as absolute stays absolute."""
    return path if os.path.isabs(path) else os.path.relpath(Path(workflow.basedir) / path)


def report_caption(name):
    """A caption of the HTML report (docs/report/<name>), absolute: Snakemake reads captions relative to the rule file
    that names them, not the working directory, and they are not job inputs (moving the project reruns nothing)."""
    return str(Path(workflow.basedir) / "docs" / "report" / name)


# Code whose edits must rerun the cheap rules that use it (Snakemake's code trigger only sees rule text).
SRC = Path(repo_file("src/vqinsight"))
DATA_CODE = [
    str(SRC / "data" / f)
    for f in ("registry.py", "parsers.py", "rows.py", "score_parsers.py", "pair_parsers.py", "manifest.py")
]


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


def parse_options(wildcards):
    """--options of the manifest command: the dataset's parse options; nothing when it sets none (the parser's
    defaults), so configs without them keep their commands."""
    opts = config["datasets"][wildcards.dataset].get("parse")
    return f"--options {shlex.quote(json.dumps(opts, sort_keys=True))}" if opts else ""


def preflight_datasets(wildcards=None):
    """The preflight's --datasets: every enabled dataset's config entry and raw directory."""
    return json.dumps({d: {"raw": f"{RAW}/{d}", **config["datasets"][d]} for d in DATASETS}, sort_keys=True)


def preflight_models(wildcards=None):
    """The preflight's --models: checkpoints the jobs load that no rule of this workflow builds."""
    models = {} if "tiny" in config["model"] else {"model.base": config["model"]["base"]}
    for name, spec in config["eval"].get("baselines", {}).items():
        if spec.get("model") not in (None, "tiny"):
            models[f"eval.baselines.{name}"] = spec["model"]
        for tm, path in (spec.get("models") or {}).items():
            models[f"eval.baselines.{name}.{tm}"] = path
    gen = (config.get("stage3") or {}).get("generator", {})
    models |= {f"stage3.generator.{k}": gen[k] for k in ("base", "lora") if k in gen}
    return json.dumps({k: v for k, v in models.items() if not v.startswith(f"{RESULTS}/")}, sort_keys=True)


# ----------------------------------------------------------------------------- GRPO
GRPO = config["grpo"]


STAGE1_RECIPE = repo_file(GRPO["stage1"]["recipe"])
STAGE2_RECIPE = repo_file(GRPO["stage2"]["recipe"])
TASK_MODELS = list(GRPO["stage2"]["task_models"])
BUILD_TINY = "tiny" in config["model"]


def warm_start_answers(cfg):
    """`--answers` of a format warm start, where the config sets it (the command's default otherwise)."""
    return f"--answers {cfg['answers']}" if "answers" in cfg else ""


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
    return (
        f"accelerate launch --config_file {shlex.quote(repo_file(GRPO['accelerate']))} "
        f"--num_processes {resources.gpu} -m vqinsight.grpo"
    )


def manifest_files(datasets):
    return [f"{RESULTS}/manifests/{d}.parquet" for d in datasets]


def cache_files(datasets):
    """Frame-cache indexes of the datasets that have one (data.frame_cache): decode once, before training."""
    cached = set(config["data"]["frame_cache"])
    return [f"{RESULTS}/frames/{d}.json" for d in datasets if d in cached]


def base_model_input(wildcards):
    """The base model as a file dependency when a rule of this workflow builds it (demo) or downloads it."""
    return [config["model"]["base"]] if BUILD_TINY else weights_input(config["model"]["base"])


def stage2_spec(wildcards):
    return GRPO["stage2"]["task_models"][wildcards.task_model]


def stage2_manifests(wildcards):
    return manifest_files(stage2_spec(wildcards)["datasets"])


def stage2_eval_manifests(wildcards):
    return manifest_files(stage2_spec(wildcards).get("eval_datasets", []))


def stage2_caches(wildcards):
    return cache_files(stage2_spec(wildcards)["datasets"])


ABLATIONS = config["eval"].get("ablations", {})
VARIANTS = ["full", *ABLATIONS]


def variant_spec(wildcards):
    """The ablation's config entry ({} for the full model)."""
    return {} if wildcards.variant == "full" else ABLATIONS[wildcards.variant]


STAGE2_STARTS = ("stage1", "base")

# Scheduling. Priorities only order the jobs that are ready at the same time (they change no output). The longest
# chain runs base model -> stage 1 -> the stage-3 judge's stage-2 model -> the stage-3 rounds, and that stage-2
# model is the longest job of the demo, so its chain goes first; on a 2-core machine this keeps the second slot busy
# with everything else instead of starting the chain late (docs/PERFORMANCE.md, demo wall time).
PRIORITY_CHAIN = 20  # the chain itself
PRIORITY_STAGE3 = 15  # stage-3 rounds (each waits for the previous one)
PRIORITY_LONG = 10  # the judge task model's ablations: as long as the chain's stage-2 job
PRIORITY_TRAIN = 5  # every other training job (stage 2, SFT baselines): before the many short evaluation jobs, which
# then fill the second slot to the end instead of leaving a training chain (format -> GRPO -> judge) for the tail
STAGE3_JUDGE_TM = (config.get("stage3") or {}).get("judge", {}).get("task_model")


def _chain_datasets():
    """Datasets the chain reads: the warm start's, stage 1's and the stage-3 judge's stage-2 model's (training and
    held-out). Their download, manifest and frame cache share the chain's priority: priorities are not inherited by
    a job's inputs, and a late held-out manifest once held the chain's stage-2 job back by three minutes."""
    names = set(config["model"].get("warm_start", {}).get("datasets", []))
    names |= set(GRPO["stage1"]["datasets"]) | set(GRPO["stage1"].get("eval_datasets", []))
    spec = GRPO["stage2"]["task_models"].get(STAGE3_JUDGE_TM, {})
    return names | set(spec.get("datasets", [])) | set(spec.get("eval_datasets", []))


CHAIN_DATASETS = _chain_datasets()


def data_priority(wildcards):
    """The chain's datasets first; every other dataset before the stage-2 jobs that read it (at priority 0 a frame
    cache waits behind the evaluation jobs and holds back the stage-2 models that read it)."""
    return PRIORITY_CHAIN if wildcards.dataset in CHAIN_DATASETS else PRIORITY_STAGE3


def stage2_priority(wildcards):
    """The stage-3 judge's task model first: its full model (and its format warm start) is on the chain."""
    if wildcards.task_model != STAGE3_JUDGE_TM:
        return PRIORITY_TRAIN
    if "start" in wildcards.keys():
        return PRIORITY_CHAIN if wildcards.start == "stage1" else PRIORITY_LONG
    return PRIORITY_CHAIN if wildcards.variant == "full" else PRIORITY_LONG


def stage2_start_name(wildcards):
    """Which model stage 2 grows from: "stage1", or "base" for the no-warm-up ablation (Table 4a)."""
    if "start" in wildcards.keys():  # the format warm start, shared by every variant with the same start
        return wildcards.start
    return "base" if variant_spec(wildcards).get("init", "stage1") == "base" else "stage1"


def stage2_start(wildcards):
    """The model stage 2 grows from: stage 1's, or the base model for the no-warm-up ablation (Table 4a)."""
    if stage2_start_name(wildcards) == "base":
        return config["model"]["base"]
    return f"{RESULTS}/grpo/stage1/model"


def stage2_start_input(wildcards):
    start = stage2_start(wildcards)
    return base_model_input(wildcards) if start == config["model"]["base"] else [start]


def stage2_init(wildcards):
    """Stage 2's init: its start model, or that model's format warm start where one is configured (demo). The warm
    start depends on the task model and the start model only, so the variants that share them share it."""
    if "format_warm_start" in GRPO["stage2"] and stage2_spec(wildcards).get("format_warm_start", True):
        return f"{RESULTS}/grpo/stage2/{wildcards.task_model}/format_from_{stage2_start_name(wildcards)}/init"
    return stage2_start(wildcards)


def stage2_init_input(wildcards):
    init = stage2_init(wildcards)
    return base_model_input(wildcards) if init == config["model"]["base"] else [init]


def _merged(base, over):
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def recipe_override(wildcards):
    """The task model's and the ablation's recipe changes as one JSON argument ('' for none); a changed value
    reruns the job."""
    over = _merged(stage2_spec(wildcards).get("recipe", {}), variant_spec(wildcards).get("recipe", {}))
    return f"--recipe-override {shlex.quote(json.dumps(over, sort_keys=True))}" if over else ""


def stage2_tasks(wildcards):
    return " ".join(stage2_spec(wildcards)["tasks"])


def trust_flag(wildcards):
    return "--trust-remote-code" if config["model"].get("trust_remote_code") else ""


def grpo_models(wildcards=None):
    return [f"{RESULTS}/grpo/stage1/model"] + expand(
        f"{RESULTS}/grpo/stage2/{{task_model}}/full/model", task_model=TASK_MODELS
    )


# ----------------------------------------------------------------------------- evaluation
EVAL = config["eval"]
BENCHMARKS = {b: s for b, s in EVAL["benchmarks"].items() if s["dataset"] in DATASETS}
BASELINES = EVAL.get("baselines", {})
CLIP_TYPES = ("clipscore", "clip_iqa")
EVAL_CODE = [str(SRC / f) for f in ("evaluate.py", "metrics.py", "records.py", "parsing.py")]


def _judged(task_models):
    return [b for b, s in BENCHMARKS.items() if s["task_model"] in task_models]


def _systems():
    """Every row of the tables: name -> {kind, type, label, variant, benchmarks, format}."""
    out = {
        "vqinsight": {
            "kind": "ours",
            "type": "judge",
            "label": EVAL["label"],
            "variant": None,
            "benchmarks": _judged(TASK_MODELS),
            "format": "vqinsight",
        }
    }
    for name, spec in BASELINES.items():
        bench = spec.get("benchmarks", list(BENCHMARKS))
        if spec["type"] == "sft":
            bench = [b for b in bench if b in _judged(TASK_MODELS)]
        elif spec["type"] == "vlm" and "models" in spec:
            bench = [b for b in bench if b in _judged(spec["models"])]
        out[name] = {
            "kind": "baseline",
            "type": spec["type"],
            "label": spec["label"],
            "variant": None,
            "benchmarks": [b for b in bench if b in BENCHMARKS],
            "format": spec.get("format", "vqinsight"),
        }
    for name, spec in ABLATIONS.items():
        out[name] = {
            "kind": "ablation",
            "type": "judge",
            "label": spec["label"],
            "variant": name,
            "benchmarks": _judged(spec["task_models"]),
            "format": "vqinsight",
        }
    return out


SYSTEMS = _systems()
JUDGE_SYSTEMS = [s for s, v in SYSTEMS.items() if v["type"] not in CLIP_TYPES]
CLIP_SYSTEMS = [s for s, v in SYSTEMS.items() if v["type"] in CLIP_TYPES]


def united_judge():
    """(task model, path) of stage 3's final refined comparison judge, or None without stage 3. The paper's Table 1
    headline numbers are after united finetuning (Table 5 (g) = Table 1), so "ours" uses it where it applies;
    an ablation with `united: false` (Table 5 (f), w/o UF) uses the stage-2 model."""
    s3 = config.get("stage3")
    if not s3:
        return None
    return s3["judge"]["task_model"], f"{RESULTS}/stage3/judges/united_r{s3['rounds']}/model"


def trained_ablations():
    """Ablations that train their own stage-2 model (w/o UF reuses the full stage-2 model)."""
    return {v: spec for v, spec in ABLATIONS.items() if spec.get("united", True)}


def judge_model(wildcards):
    """The model that produces a system's predictions on a benchmark (path or hub id)."""
    sys_, bench = SYSTEMS[wildcards.system], BENCHMARKS[wildcards.benchmark]
    tm = bench["task_model"]
    kind = sys_["type"]
    if kind == "judge":
        variant = sys_["variant"]
        united = united_judge()
        if united and tm == united[0] and variant is None:
            return united[1]
        if variant and not ABLATIONS[variant].get("united", True):
            return f"{RESULTS}/grpo/stage2/{tm}/full/model"
        return f"{RESULTS}/grpo/stage2/{tm}/{variant or 'full'}/model"
    if kind == "zero_shot":
        return config["model"]["base"]
    if kind == "sft":
        return f"{RESULTS}/baselines/sft/{tm}/model"
    spec = BASELINES[wildcards.system]
    if kind in CLIP_TYPES:
        return f"{RESULTS}/models/tiny_clip" if spec["model"] == "tiny" else spec["model"]
    return spec["models"][tm] if "models" in spec else spec["model"]


def judge_model_input(wildcards):
    """The judge model as a file dependency when this workflow builds it."""
    m = judge_model(wildcards)
    built = m.startswith(f"{RESULTS}/") or (BUILD_TINY and m == config["model"]["base"])
    return [m] if built else weights_input(m)


def bench_manifest(wildcards):
    return f"{RESULTS}/manifests/{BENCHMARKS[wildcards.benchmark]['dataset']}.parquet"


def bench_caches(wildcards):
    return cache_files([BENCHMARKS[wildcards.benchmark]["dataset"]])


def judge_engine_args(j):
    """--engine / --max-batch / --[no-]compile / --[no-]margin-from-cache / --vllm-args of the judge jobs; empty for
    the defaults (batch engine over 128 slots; the static engine compiled, and its margins from the generation's
    cache, on CUDA only), so the shell command, and with it Snakemake's params check, is unchanged for configs that
    do not set them."""
    args = []
    if j.get("engine", "batch") != "batch":
        args.append(f"--engine {j['engine']}")
    if j.get("max_batch") is not None:
        args.append(f"--max-batch {j['max_batch']}")
    if j.get("compile") is not None:
        args.append("--compile" if j["compile"] else "--no-compile")
    if j.get("margin_from_cache") is not None:
        args.append("--margin-from-cache" if j["margin_from_cache"] else "--no-margin-from-cache")
    if j.get("vllm_args"):
        args.append(f"--vllm-args {shlex.quote(json.dumps(j['vllm_args'], sort_keys=True))}")
    return "".join(f" {a}" for a in args)


JUDGE_SETTINGS = (
    ("style", "--style"),
    ("batch_size", "--batch-size"),
    ("max_new_tokens", "--max-new-tokens"),
    ("margin", "--margin"),
    ("votes", "--votes"),
    ("temperature", "--temperature"),
)


def judge_setting_args(j):
    """The judge settings the config sets, as `python -m vqinsight.judge` arguments; an absent one keeps the
    command's own default (its one home)."""
    return "".join(f"{flag} {j[key]} " for key, flag in JUDGE_SETTINGS if key in j)


def judge_args(wildcards, resources):
    """Judge settings shared by every judge job (prompt format, batch, margin, engine)."""
    j, sys_, b = EVAL["judge"], SYSTEMS[wildcards.system], BENCHMARKS[wildcards.benchmark]
    return (
        f"--task {b['task']} --split {b['split']} --format {sys_['format']} {judge_setting_args(j)}"
        f"--seed {config['seed']}{judge_engine_args(j)}"
    )


def metrics_args(wildcards):
    sys_, b = SYSTEMS[wildcards.system], BENCHMARKS[wildcards.benchmark]
    lo, hi = config["data"]["score_scale"]
    args = [
        f"--benchmark {wildcards.benchmark} --task {b['task']} --system {wildcards.system}",
        f"--label {shlex.quote(sys_['label'])} --kind {sys_['kind']} --scale {lo} {hi}",
        f"--margin {EVAL['judge'].get('margin', 'prob')}",
    ]
    if sys_["variant"]:
        args.append(f"--variant {sys_['variant']}")
    if BUILD_TINY:
        args.append("--demo")
    if sys_["type"] in CLIP_TYPES:
        args.append("--pred-scale raw")
    return " ".join(args)


def eval_metrics_files(wildcards=None):
    return [f"{RESULTS}/eval/metrics/{s}/{b}.json" for s, v in SYSTEMS.items() for b in v["benchmarks"]]


def sft_spec(wildcards=None):
    return next(v for v in BASELINES.values() if v["type"] == "sft")


def curves_files(wildcards=None):
    """Training curves for the figures: label=path pairs of the stage-1 and stage-2 (full) models."""
    return {"stage1": f"{RESULTS}/grpo/stage1/model"} | {
        f"stage2_{tm}": f"{RESULTS}/grpo/stage2/{tm}/full/model" for tm in TASK_MODELS
    }


def learning_models(wildcards=None):
    """Every GRPO-trained model of stage 1 and 2 (full and ablation variants): label -> model directory."""
    out = {"stage1": f"{RESULTS}/grpo/stage1/model"}
    for v in ["full", *trained_ablations()]:
        for tm in TASK_MODELS if v == "full" else ABLATIONS[v]["task_models"]:
            out[f"stage2 {tm}" + ("" if v == "full" else f" ({v})")] = f"{RESULTS}/grpo/stage2/{tm}/{v}/model"
    return out


wildcard_constraints:
    dataset="|".join(DATASETS) or "NONE",
    task_model="|".join(TASK_MODELS),
    variant="|".join(VARIANTS),
    start="|".join(STAGE2_STARTS),
    benchmark="|".join(BENCHMARKS) or "NONE",


def provenance_files(wildcards=None):
    """Results whose meta.json goes into the provenance table: manifests, models, predictions, metrics."""
    models = grpo_models() + [
        f"{RESULTS}/grpo/stage2/{tm}/{v}/model"
        for v, spec in trained_ablations().items()
        for tm in spec["task_models"]
    ]
    if any(v["type"] == "sft" for v in BASELINES.values()):
        models += [f"{RESULTS}/baselines/sft/{tm}/model" for tm in TASK_MODELS]
    preds = [f"{RESULTS}/eval/predictions/{s}/{b}.jsonl" for s, v in SYSTEMS.items() for b in v["benchmarks"]]
    return manifests() + models + preds + eval_metrics_files()


def provenance_meta(paths):
    """The meta.json of each result: inside a model directory, else beside the file."""
    out = []
    for p in map(str, paths):
        path = Path(p)
        if path.suffix in (".parquet", ".json"):
            out.append(str(path.with_suffix(".meta.json")))
        elif path.suffix == ".jsonl":
            out.append(f"{p}.meta.json")
        else:
            out.append(str(path / "meta.json"))
    return out
