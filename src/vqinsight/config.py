"""Config validation against config/schema.yaml with short errors that name the offending key."""

from __future__ import annotations

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


def recipe_from_mapping(cls, data: dict[str, Any], path: str | Path):
    """A recipe dataclass from a parsed YAML mapping; errors name the recipe file and the unknown or bad keys."""
    from dataclasses import fields

    known = {f.name for f in fields(cls)}
    bad = sorted(set(data) - known)
    if bad:
        raise ValueError(f"{path}: unknown recipe key(s) {bad}; known: {sorted(known)}")
    try:
        return cls(**data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
