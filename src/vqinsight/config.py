"""Config validation against config/schema.yaml with short errors that name the offending key."""

from __future__ import annotations

import ast
import difflib
import importlib.util
import re
from collections.abc import Callable, Iterable
from dataclasses import fields
from functools import cache
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """An invalid configuration; the message lists every problem as `key.path: what is wrong`."""


def _key_path(err) -> str:
    path = ".".join(str(p) for p in err.absolute_path)
    if err.validator == "additionalProperties":
        return path  # the message names the unexpected key itself
    return path or "<top level>"


def config_errors(config: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """All schema violations, one line each, sorted by key path."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    out = []
    for err in sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path]):
        where = _key_path(err)
        msg = err.message if len(err.message) < 200 else err.message[:200] + "..."
        out.append(f"{where}: {msg}" if where else msg)
    return out


def validate_config(config: dict[str, Any], schema_path: str | Path, source: str = "config") -> None:
    """Raise ConfigError naming each bad key, e.g. `data.nframe: Additional properties ... ('nframe' ...)`."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    errors = config_errors(config, schema)
    if errors:
        lines = "\n  ".join(errors)
        raise ConfigError(f"invalid {source} (schema {schema_path}):\n  {lines}")


# ----------------------------------------------------------------------------------------------------------------
# Recipes: keys and types checked against the dataclass and the trainer's config class, at DAG start and in the job.
# The trainer configs' fields are read from the installed packages' source (ast), so checking needs no torch/TRL
# import (which takes seconds): GRPOConfig and SFTConfig extend trl's _BaseConfig, which extends TrainingArguments.
TRAINER_CONFIGS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "GRPOConfig": (
        ("trl", "trainer/grpo_config.py", "GRPOConfig"),
        ("trl", "trainer/base_config.py", "_BaseConfig"),
        ("transformers", "training_args.py", "TrainingArguments"),
    ),
    "SFTConfig": (
        ("trl", "trainer/sft_config.py", "SFTConfig"),
        ("trl", "trainer/base_config.py", "_BaseConfig"),
        ("transformers", "training_args.py", "TrainingArguments"),
    ),
}


def _package_file(package: str, rel: str) -> Path:
    spec = importlib.util.find_spec(package)  # a top-level package is located without being imported
    if spec is None or spec.origin is None:
        raise ConfigError(f"package {package} is not installed")
    return Path(spec.origin).parent / rel


def _class_body(path: Path, name: str) -> list[ast.stmt]:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node.body
    raise ConfigError(f"class {name} not found in {path}")


@cache
def trainer_fields(config: str) -> dict[str, str]:
    """Field name -> type annotation (source text) of a trainer config class (e.g. "GRPOConfig")."""
    out: dict[str, str] = {}
    for package, rel, cls in reversed(TRAINER_CONFIGS[config]):  # base class first, subclasses override
        for stmt in _class_body(_package_file(package, rel), cls):
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                out[stmt.target.id] = ast.unparse(stmt.annotation)
    return out


@cache
def scheduler_names() -> tuple[str, ...]:
    """transformers' SchedulerType values: what `lr_scheduler_type` accepts."""
    body = _class_body(_package_file("transformers", "trainer_utils.py"), "SchedulerType")
    return tuple(
        stmt.value.value
        for stmt in body
        if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)
    )


def _allowed(key: str, known: Iterable[str]) -> str:
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=3)
    return f"did you mean {', '.join(close)}?" if close else f"allowed: {', '.join(known)}"


def coerce_value(value: Any, annotation: str, where: str) -> Any:
    """`value` as the annotated number type where YAML left a string (YAML 1.1 reads `1e-3` as a string), else
    unchanged; a string that is not a number where only numbers are accepted is an error naming `where`."""
    kinds = set(re.findall(r"\w+", annotation))
    if not isinstance(value, str) or not kinds & {"int", "float"}:
        return value
    casts = [c for c, name in ((int, "int"), (float, "float")) if name in kinds]
    for cast in casts:
        try:
            return cast(value)
        except ValueError:
            continue
    if kinds & {"str", "Any", "SchedulerType", "Literal"}:
        return value  # the field also takes names
    raise ConfigError(f"{where}: {value!r} is not a number (expected {annotation})")


def check_trainer_args(trainer: dict[str, Any], config: str, where: str) -> dict[str, Any]:
    """`trainer` with its values coerced to the types of `config` (a TRL config class name); unknown keys and
    scheduler names are errors naming `where` (e.g. the recipe file) and the allowed values."""
    known = trainer_fields(config)
    errors, out = [], {}
    for key, value in trainer.items():
        if key not in known:
            errors.append(f"{where}: trainer.{key}: not an argument of TRL's {config}; {_allowed(key, known)}")
            continue
        try:
            out[key] = coerce_value(value, known[key], f"{where}: trainer.{key}")
        except ConfigError as e:
            errors.append(str(e))
    sched = out.get("lr_scheduler_type")
    if sched is not None and sched not in scheduler_names():
        names = ", ".join(scheduler_names())
        errors.append(f"{where}: trainer.lr_scheduler_type: {sched!r} is not a scheduler; allowed: {names}")
    if errors:
        raise ConfigError("\n".join(errors))
    return out


def recipe_from_mapping(cls, data: dict[str, Any], path: str | Path, trainer_config: str | None = None):
    """A recipe dataclass from a parsed YAML mapping: unknown keys are errors, values are coerced to the field types
    (and `trainer` to the arguments of the TRL config class `trainer_config`); errors name the recipe file."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of keys, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    bad = sorted(set(data) - set(known))
    if bad:
        raise ConfigError(f"{path}: unknown recipe key(s) {bad}; " + "; ".join(_allowed(b, known) for b in bad))
    data, not_numbers = dict(data), []
    for k, v in data.items():
        try:
            data[k] = coerce_value(v, str(known[k].type), f"{path}: {k}")
        except ConfigError as e:
            not_numbers.append(str(e))  # the dataclass's own check of this key, if it has one, speaks first
    if trainer_config is not None and isinstance(data.get("trainer"), dict):
        data["trainer"] = check_trainer_args(data["trainer"], trainer_config, str(path))
    try:
        recipe = cls(**data)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None
    except TypeError as e:  # e.g. a comparison with a string that should have been a number
        raise ConfigError("\n".join(not_numbers) or f"{path}: {e}") from None
    if not_numbers:
        raise ConfigError("\n".join(not_numbers))
    return recipe


def recipe_problems(checks: Iterable[tuple[str, Callable[[], Any]]]) -> list[str]:
    """Run each (label, load) check of a recipe; the problems, one per line, prefixed with the label."""
    out = []
    for label, load in checks:
        try:
            load()
        except (ConfigError, ValueError, TypeError, FileNotFoundError) as e:
            out.extend(f"{label}: {line}" for line in str(e).splitlines())
    return out


# ----------------------------------------------------------------------------------------------------------------
# Cross-references and value ranges the schema cannot express. A name that points nowhere would otherwise drop
# table rows silently (a benchmark whose task model is misspelt has no judge) or fail hours later in a GPU job.
def _unknown(where: str, names: Iterable[str], known: Iterable[str], what: str) -> list[str]:
    known = list(known)
    return [f"{where}: {n!r} is not {what}; {_allowed(str(n), known)}" for n in names if n not in known]


def config_problems(config: dict[str, Any], root: str | Path, splits: dict[str, Iterable[str]]) -> list[str]:
    """Every dangling name and out-of-range value of a schema-valid config, one line each (empty: fine).

    `root` is the repository (recipes and accelerate files are named relative to it); `splits` maps each dataset to
    the manifest splits its parser writes."""
    root, out = Path(root), []
    datasets = list(config["datasets"])
    grpo, ev = config["grpo"], config["eval"]
    task_models = grpo["stage2"]["task_models"]
    benchmarks = ev["benchmarks"]

    lo, hi = config["data"]["score_scale"]
    if not lo < hi:
        out.append(f"data.score_scale: [{lo}, {hi}] must be [low, high] with low < high, e.g. [1, 5]")
    out += _unknown("data.frame_cache", config["data"]["frame_cache"], datasets, "a dataset")
    out += _unknown("model.warm_start.datasets", config["model"].get("warm_start", {}).get("datasets", []),
                    datasets, "a dataset")  # fmt: skip
    for key in ("datasets", "eval_datasets"):
        out += _unknown(f"grpo.stage1.{key}", grpo["stage1"].get(key, []), datasets, "a dataset")
    for tm, spec in task_models.items():
        for key in ("datasets", "eval_datasets"):
            out += _unknown(f"grpo.stage2.task_models.{tm}.{key}", spec.get(key, []), datasets, "a dataset")
    for name, b in benchmarks.items():
        where = f"eval.benchmarks.{name}"
        out += _unknown(f"{where}.dataset", [b["dataset"]], datasets, "a dataset")
        out += _unknown(f"{where}.task_model", [b["task_model"]], task_models, "a stage-2 task model")
        if b["dataset"] in splits:
            out += _unknown(f"{where}.split", [b["split"]], splits[b["dataset"]], f"a split of {b['dataset']}")
        tm = task_models.get(b["task_model"])
        if tm is not None and b["task"] not in tm["tasks"]:
            out.append(f"{where}.task: {b['task']!r} is not trained by task model {b['task_model']!r}; "
                       f"allowed: {', '.join(tm['tasks'])}")  # fmt: skip
    for name, spec in ev.get("baselines", {}).items():
        out += _unknown(f"eval.baselines.{name}.benchmarks", spec.get("benchmarks", []), benchmarks, "a benchmark")
        out += _unknown(f"eval.baselines.{name}.models", spec.get("models") or {}, task_models, "a task model")
    for name, spec in ev.get("ablations", {}).items():
        out += _unknown(f"eval.ablations.{name}.task_models", spec["task_models"], task_models, "a task model")

    files = {"grpo.accelerate": grpo["accelerate"], "grpo.stage1.recipe": grpo["stage1"]["recipe"],
             "grpo.stage2.recipe": grpo["stage2"]["recipe"]}  # fmt: skip
    files |= {f"eval.baselines.{n}.recipe": s["recipe"] for n, s in ev.get("baselines", {}).items() if "recipe" in s}
    s3 = config.get("stage3")
    if s3:
        out += _unknown("stage3.judge.task_model", [s3["judge"]["task_model"]], task_models, "a stage-2 task model")
        out += _unknown("stage3.prompts.dataset", [s3["prompts"]["dataset"]], datasets, "a dataset")
        out += _unknown("stage3.refine.datasets", s3.get("refine", {}).get("datasets", []), datasets, "a dataset")
        files["stage3.dpo.recipe"] = s3["dpo"]["recipe"]
        if "accelerate" in s3["dpo"]:
            files["stage3.dpo.accelerate"] = s3["dpo"]["accelerate"]
    for key, path in files.items():
        if not (root / path).is_file():  # an absolute path stays absolute under `/`
            out.append(f"{key}: file {path} not found (relative paths are read from the repository, {root})")
    return out + _model_problems(config)


def _model_problems(config: dict[str, Any]) -> list[str]:
    """Checkpoints the jobs load: each must be a local path, since the jobs run with the hub offline. A hub id
    (`org/name` that is neither an existing path nor inside weights.dir) is an error that says how to fetch it."""
    weights = config.get("weights") or {"dir": "resources/models", "hub": {}}
    refs = {} if "tiny" in config["model"] else {"model.base": config["model"]["base"]}
    for name, spec in config["eval"].get("baselines", {}).items():
        if spec.get("model") not in (None, "tiny"):
            refs[f"eval.baselines.{name}.model"] = spec["model"]
        refs |= {f"eval.baselines.{name}.models.{tm}": m for tm, m in (spec.get("models") or {}).items()}
    gen = (config.get("stage3") or {}).get("generator", {})
    refs |= {f"stage3.generator.{k}": gen[k] for k in ("base", "lora") if k in gen}
    out, wdir = [], Path(weights["dir"])
    for key, ref in refs.items():
        p = Path(ref)
        if p.exists() or p.is_absolute() or wdir in p.parents or re.fullmatch(r"[\w.-]+/[\w.-]+", ref) is None:
            continue
        out.append(
            f"{key}: {ref!r} looks like a hub id, but jobs run with the hub offline; add "
            f"`{p.name}: {{repo: {ref}}}` to weights.hub and set {key} to {wdir / p.name} (`snakemake models` "
            "downloads it)"
        )
    return out
