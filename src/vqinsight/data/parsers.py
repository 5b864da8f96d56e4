"""Native-format parsers: one function per dataset, each returning manifest rows and the rows it rejected.

Layouts, and which public release writes which variant, are documented in docs/DATASETS.md. Parsers never crash on a
bad row: a missing, NaN, non-numeric or out-of-range label, a duplicate id or an unknown preference code becomes a
`BadRow` naming the file and row. A missing annotation file or missing columns is a whole-file problem and raises
`ParseError`. Options (config `datasets.<key>.parse`) are keyword arguments of the dataset's parser, whose
signature holds their defaults.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .pair_parsers import (
    parse_genaibench,
    parse_monetbench,
    parse_vidprom,
    parse_visionreward,
    preference_of,
    substitute_prompt,
)
from .registry import REGISTRY
from .rows import BadRow, LabelError, Parsed, ParseError, Scaler, read_csv, to_float
from .score_parsers import DIMENSIONS, parse_koniq, parse_konvid, parse_lgvq, parse_livevqc, parse_lsvq

__all__ = [
    "DIMENSIONS",
    "PARSERS",
    "BadRow",
    "LabelError",
    "ParseError",
    "Parsed",
    "Scaler",
    "options_of",
    "parse",
    "preference_of",
    "read_csv",
    "substitute_prompt",
    "to_float",
]

PARSERS: dict[str, Callable[..., Parsed]] = {
    "koniq": parse_koniq,
    "lsvq": parse_lsvq,
    "konvid": parse_konvid,
    "livevqc": parse_livevqc,
    "lgvq": parse_lgvq,
    "visionreward": parse_visionreward,
    "genaibench": parse_genaibench,
    "monetbench": parse_monetbench,
    "vidprom": parse_vidprom,
}
assert set(PARSERS) == set(REGISTRY), "every registered dataset needs a parser"


def options_of(dataset: str) -> dict[str, Any]:
    """The parse options a dataset accepts, with their defaults (the one home of those defaults)."""
    params = list(inspect.signature(PARSERS[dataset]).parameters.values())[2:]
    return {p.name: p.default for p in params}


def parse(dataset: str, root: Path, scale: tuple[float, float], options: dict[str, Any] | None = None) -> Parsed:
    """Run the dataset's parser with its config options; an unknown option is a ValueError naming the known ones."""
    options = dict(options or {})
    unknown = set(options) - set(options_of(dataset))
    if unknown:
        raise ValueError(
            f"datasets.{dataset}.parse: unknown option(s) {sorted(unknown)}; known: {sorted(options_of(dataset))}"
        )
    return PARSERS[dataset](Path(root), scale, **options)
