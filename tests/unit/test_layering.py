"""The package's layers: entry modules (the commands the rules, the bench dispatcher and the console script run) import
the library and never each other; no private name crosses a module boundary; the modules the Snakefile imports at DAG
start do not import torch.

Entry modules are derived, not listed: every ``-m vqinsight.X`` of rules/*.smk (a package's ``__main__``), every
benchmark of ``python -m vqinsight.bench``, the console script, every ``__main__.py`` and every module with an
``if __name__ == "__main__":`` block. The one import an entry module may make of another is a package's
``__main__`` delegating to a command of its own package (``python -m vqinsight.grpo`` runs ``grpo.train.main``).

A few modules are a library with a thin command that the rules run (``LIBRARIES_WITH_A_COMMAND``): others may import
them, and the test keeps that list honest (each is still run by a rule and still imported elsewhere).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
PKG = SRC / "vqinsight"
RULE_FILES = [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]
#: library modules whose command (a thin `main`) the rules run, with why the library is not split from it
LIBRARIES_WITH_A_COMMAND = {
    # the manifest schema, reader and validator; the file is a code input of every manifest job (rules/common.smk),
    # so moving the library out would rerun every dataset's manifest and all that follows in existing results
    "vqinsight.data.manifest": "load_manifest, validate_manifest, to_frame, check_media",
    # builders of the tiny offline models: the rules build the demo's models with their commands, the benchmarks
    # and tests build the same models in memory
    "vqinsight.models.tiny": "build_tokenizer, build_processor, build_model",
    "vqinsight.models.tiny_clip": "build_tokenizer",
    "vqinsight.t2v.tiny": "build_tiny_generator",
    # the LoRA conversion of T2V-Turbo's weights: the smoke benchmark writes random LoRA weights with its helper
    "vqinsight.t2v.convert": "make_lora_weights",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


@cache
def tree(name: str) -> ast.Module:
    return ast.parse(modules()[name].read_text(), filename=str(modules()[name]))


def package_of(name: str) -> str:
    return name if modules()[name].name == "__init__.py" else name.rpartition(".")[0]


def command_module(name: str) -> str:
    """The module `python -m name` runs."""
    return f"{name}.__main__" if f"{name}.__main__" in modules() else name


def has_main_block(name: str) -> bool:
    for node in tree(name).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            left, right = node.test.left, node.test.comparators[0]
            if isinstance(left, ast.Name) and left.id == "__name__" and getattr(right, "value", None) == "__main__":
                return True
    return False


def rule_commands() -> set[str]:
    found = set()
    for f in RULE_FILES:
        found |= set(re.findall(r"-m\s+(vqinsight(?:\.\w+)*)", f.read_text()))
    return {command_module(m) for m in found}


def bench_commands() -> set[str]:
    for node in ast.walk(tree("vqinsight.bench.__main__")):
        if isinstance(node, ast.AnnAssign | ast.Assign) and isinstance(node.value, ast.Dict):
            return {v.value for v in node.value.values}
    raise AssertionError("vqinsight/bench/__main__.py has no BENCHES dict")


def console_scripts() -> set[str]:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    return {target.partition(":")[0] for target in scripts.values()}


@cache
def entry_modules() -> frozenset[str]:
    entries = rule_commands() | bench_commands() | console_scripts()
    entries |= {m for m in modules() if m.endswith(".__main__") or has_main_block(m)}
    return frozenset(entries)


def imports(name: str) -> list[tuple[int, str, list[str]]]:
    """(line, imported vqinsight module, names imported from it) of every import in the module, at any depth."""
    out = []
    for node in ast.walk(tree(name)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "vqinsight"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_of(name).split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] == "vqinsight":
                out.append((node.lineno, target, [a.name for a in node.names]))
    return out


def imported_modules(target: str, names: list[str]) -> set[str]:
    """The modules an import statement loads: the target and any submodule imported by name (``from . import x``)."""
    return {target} | {f"{target}.{n}" for n in names if f"{target}.{n}" in modules()}


def test_entry_modules_are_derived():
    """The derivation finds the commands the rules and users run (a regex that matched nothing would pass all)."""
    entries = entry_modules()
    for m in ("vqinsight.judge.__main__", "vqinsight.grpo.__main__", "vqinsight.dpo.train", "vqinsight.evaluate",
              "vqinsight.report.__main__", "vqinsight.bench.grpo_step", "vqinsight.cli"):  # fmt: skip
        assert m in entries, m
    assert len(rule_commands()) >= 15
    assert {"vqinsight.records", "vqinsight.training", "vqinsight.judge.engine"}.isdisjoint(entries)


def test_libraries_with_a_command_are_still_both():
    """Each listed module is still run by a rule and still imported by another module (else drop it from the list)."""
    importers = {m: set() for m in LIBRARIES_WITH_A_COMMAND}
    for name in modules():
        for _, target, names in imports(name):
            for m in imported_modules(target, names) & set(importers):
                if m != name:
                    importers[m].add(name)
    for m, who in importers.items():
        assert m in rule_commands(), f"{m} is no longer run by a rule: remove it from LIBRARIES_WITH_A_COMMAND"
        assert who, f"no module imports {m}: remove it from LIBRARIES_WITH_A_COMMAND"


def test_no_module_imports_an_entry_module():
    entries = entry_modules() - set(LIBRARIES_WITH_A_COMMAND)
    bad = []
    for name in modules():
        for line, target, names in imports(name):
            for m in imported_modules(target, names) & entries:
                delegation = name.endswith(".__main__") and m.startswith(package_of(name) + ".")
                if m != name and not delegation:
                    bad.append(f"{modules()[name].relative_to(ROOT)}:{line} imports the entry module {m}")
    assert not bad, "entry modules are commands, not a library; move what is shared into a library module:\n" + (
        "\n".join(bad)
    )


def test_no_private_name_crosses_a_module_boundary():
    bad = []
    for name in modules():
        for line, target, names in imports(name):
            for n in names:
                if n.startswith("_") and not n.startswith("__") and target != name:
                    bad.append(f"{modules()[name].relative_to(ROOT)}:{line} imports {target}.{n}")
    assert not bad, "a name used by another module is public:\n" + "\n".join(bad)


def test_dag_start_imports_no_torch():
    """The Snakefile imports these modules on every snakemake call (config checks, recipe checks): without torch."""
    found = set()
    for f in RULE_FILES:
        found |= set(re.findall(r"^\s*(?:from|import)\s+(vqinsight(?:\.\w+)*)", f.read_text(), re.MULTILINE))
    assert {"vqinsight.config", "vqinsight.grpo.train", "vqinsight.dpo.train"} <= found, found
    heavy = "print(sorted(k for k in ('torch', 'trl') if k in sys.modules))"
    code = f"import sys\nfor m in {sorted(found)!r}:\n    __import__(m)\n{heavy}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
