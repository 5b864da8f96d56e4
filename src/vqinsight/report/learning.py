"""What each GRPO-trained model learned: its held-out metrics before and after training, from its ``eval.json``.

One row per (model, held-out task), written as ``learning.md`` / ``learning.csv`` / ``learning.json``. The demo's
README quotes these numbers with the range measured over seeds and CPU float orders (docs/DEMO_LEARNING.md); on the
paper run the same table shows what each stage's training moved.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vqinsight.provenance import atomic_write_text

# task -> (column label, key path in the task's metrics dict); the first entry is the headline metric
METRICS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "image_score": [("SRCC", ("srcc",)), ("PLCC", ("plcc",))],
    "video_score": [("SRCC", ("srcc",)), ("PLCC", ("plcc",))],
    "multidim_score": [
        ("spatial SRCC", ("spatial", "srcc")),
        ("temporal SRCC", ("temporal", "srcc")),
        ("alignment SRCC", ("alignment", "srcc")),
        ("mean SRCC", ("srcc",)),
    ],
    "comparison": [("accuracy (ties excluded)", ("accuracy",)), ("rate of 'A'", ("rate_A",))],
    "vqa": [("accuracy", ("accuracy",))],
}
FIELDS = ["model", "task", "n", "metric", "before", "after", "format_rate_after"]


def _get(m: Mapping[str, Any], path: tuple[str, ...]) -> float | None:
    for k in path:
        if not isinstance(m, Mapping) or k not in m:
            return None
        m = m[k]
    return float(m) if isinstance(m, int | float) else None


def learning_rows(evals: Mapping[str, Path]) -> list[dict[str, Any]]:
    """Rows of (model label, task, metric, before, after) from each model's ``eval.json``."""
    rows = []
    for label, path in evals.items():
        try:
            ev = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: unreadable held-out evaluation ({e})") from e
        before, after = ev.get("before") or {}, ev.get("after") or {}
        for task in sorted(set(before) | set(after)):
            if task not in METRICS:
                continue  # "examples" and anything that is not a task
            b, a = before.get(task) or {}, after.get(task) or {}
            for name, key in METRICS[task]:
                rows.append(
                    {
                        "model": label,
                        "task": task,
                        "n": a.get("n", b.get("n")),
                        "metric": name,
                        "before": _get(b, key),
                        "after": _get(a, key),
                        "format_rate_after": a.get("format_rate"),
                    }
                )
    return rows


def _fmt(x: Any) -> str:
    return "–" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def write_learning(evals: Mapping[str, Path], out_dir: Path) -> list[Path]:
    """Write ``learning.{md,csv,json}`` into ``out_dir``; returns the paths."""
    rows = learning_rows(evals)
    out_dir = Path(out_dir)
    lines = [
        "# What each trained model learned (held-out, greedy decoding, before -> after training)",
        "",
        "| model | task | n | metric | before | after | format rate after |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['task']} | {_fmt(r['n'])} | {r['metric']} | {_fmt(r['before'])} | {_fmt(r['after'])} "
        f"| {_fmt(r['format_rate_after'])} |"
        for r in rows
    ]
    buf = io.StringIO()
    w = csv.DictWriter(buf, FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    paths = [out_dir / "learning.md", out_dir / "learning.csv", out_dir / "learning.json"]
    atomic_write_text(paths[0], "\n".join(lines) + "\n")
    atomic_write_text(paths[1], buf.getvalue())
    atomic_write_text(paths[2], json.dumps(rows, indent=1) + "\n")
    return paths
