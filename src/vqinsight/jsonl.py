"""Reading JSON-lines files written by this pipeline, with errors that name the file and the line."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any


def iter_objects(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(``"<file>:<line>"``, object) per non-blank line; ValueError naming the line if it is not a JSON object."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{ln}"
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{where}: not valid JSON ({e})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            yield where, obj


def dumps(rows: Iterable[Mapping[str, Any]]) -> str:
    """JSON-lines text of rows (UTF-8 kept, NaN refused), one object per line."""
    return "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows)
