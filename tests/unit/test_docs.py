"""The docs are manuals a clone can follow: no links outside the repository, no commit hashes, no work-log headings,
and every file they name exists."""

import itertools
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# what a checkout holds besides the project's own files (environments, outputs, caches)
SKIP_DIRS = {".git", ".venv", "results", "logs", "resources", ".snakemake", "__pycache__", ".pytest_cache",
             ".ruff_cache", "node_modules", "tests"}  # fmt: skip
TEXT_SUFFIXES = {".md", ".py", ".smk", ".yaml", ".yml", ".toml", ".txt", ".sh", ".cfg", ".rst", ".json", ".ini"}
# the manuals; docs/DEMO_LEARNING.md is the demo's research record and keeps its own references
MANUALS = ["README.md", "docs/PERFORMANCE.md", "docs/DATASETS.md", "docs/EVALUATION.md", "docs/ARCHITECTURE.md",
           "docs/LOG.md"]  # fmt: skip
# a git commit as docs would quote it: 7-40 hex digits with at least one letter and one digit, as a word
COMMIT = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b")


def _project_files():
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in files:
            path = Path(folder) / name
            if path.suffix in TEXT_SUFFIXES or name in {"Snakefile", "Makefile"}:
                yield path.relative_to(ROOT), path


def _manuals():
    return [(name, (ROOT / name).read_text(encoding="utf-8")) for name in MANUALS if (ROOT / name).is_file()]


def test_no_file_outside_tests_points_at_the_shared_folder():
    """A clone has no ../shared: only tests (which skip without it) may read from there."""
    needle = "../" + "shared"
    hits = [str(rel) for rel, path in _project_files() if needle in path.read_text(encoding="utf-8", errors="ignore")]
    assert hits == []


def test_commit_hash_pattern_finds_hashes_and_spares_numbers():
    assert COMMIT.search("Until 2f1d11b the demo") and COMMIT.search("at a78bf98,")
    assert not COMMIT.search("2026-12-06 1024 100352 ffmpeg deadbeef 0.9991")


@pytest.mark.parametrize("name", MANUALS)
def test_manual_names_no_commit(name):
    path = ROOT / name
    if not path.is_file():
        pytest.skip(f"{name} does not exist")
    text = path.read_text(encoding="utf-8")
    assert COMMIT.findall(text) == []


def test_performance_headings_are_topics_not_work_sessions():
    text = (ROOT / "docs/PERFORMANCE.md").read_text(encoding="utf-8")
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert len(headings) >= 5
    bad = [h for h in headings if re.search(r"session|issue \d|\bround\b|\btarget \d", h, re.IGNORECASE)]
    assert bad == []


def test_readme_states_what_has_not_run_on_its_first_screen():
    first_screen = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()[:40]
    text = re.sub(r"\s+", " ", " ".join(first_screen).replace("*", "")).lower()
    assert "never run" in text or "not been run" in text
    assert "zero-3" in text and "real weights" in text


def _expand(pattern: str) -> list[str]:
    """`a-{x,y}-*.json` -> the glob patterns `a-x-*.json`, `a-y-*.json`."""
    parts = re.split(r"\{([^}]*)\}", pattern)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def test_files_the_manuals_name_exist():
    """Every docs/*.md and docs/bench/*.json a manual names (braces and globs expanded) is in the repository."""
    missing = []
    for name, text in _manuals():
        for ref in set(re.findall(r"docs/[A-Za-z0-9_./{},*-]+\.(?:md|json)", text)):
            for pattern in _expand(ref):
                if not list(ROOT.glob(pattern)):
                    missing.append(f"{name}: {pattern}")
        for target in re.findall(r"\]\(([^)#\s]+)\)", text):  # Markdown links, relative to the file
            if not re.match(r"[a-z]+://", target) and not (ROOT / name).parent.joinpath(target).exists():
                missing.append(f"{name}: link {target}")
    assert missing == []
