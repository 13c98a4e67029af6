"""A config's schema errors in one line: the key, where it sits, and the nearest valid key.

Snakemake's ``validate`` reports a violation with the whole schema and the whole config (1,287
lines for one misspelt top-level key). The workflow still validates with it — it fills the
schema's defaults in — and, when it refuses, asks `schema_error` for the line to show instead.
"""

from __future__ import annotations

import difflib
import os
from typing import Any, Mapping

from wig.errors import WigError


def _where(path) -> str:
    """A JSON path as the config's dotted key (``evaluation.metrics``, ``guidance[2].omega``)."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def schema_error(config: Mapping[str, Any], schema_file: str | os.PathLike) -> str | None:
    """The first violation of ``schema_file`` by ``config`` as one line, or None if it is valid.
    An unknown key names the nearest key the schema allows there; any other violation names its
    key and what the schema expected (values shortened, never the schema)."""
    import jsonschema
    import yaml

    with open(schema_file, encoding="utf-8") as f:
        schema = yaml.safe_load(f)
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is None:
        return None
    where = _where(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        allowed = list(error.schema.get("properties", {}))
        unknown = [k for k in error.instance if k not in allowed]
        if unknown and allowed:
            key = str(unknown[0])
            near = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f"did you mean {near[0]!r}?" if near else f"keys here: {', '.join(allowed)}"
            place = f"in {where}" if where else "at the top level"
            return f"unknown key {key!r} {place} ({hint})"
    if error.validator == "enum":
        near = difflib.get_close_matches(str(error.instance), [str(v) for v in error.validator_value], n=1)
        choices = ", ".join(str(v) for v in error.validator_value)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        return f"{where or 'config'}: {_short(error.instance)} is not one of {choices}{hint}"
    message = error.message
    if len(message) > 200:  # a oneOf/anyOf message repeats the whole instance
        message = f"{_short(error.instance)} does not match the schema ({error.validator})"
    return f"{where or 'config'}: {message}"


def check_schema(config: Mapping[str, Any], schema_file: str | os.PathLike) -> None:
    """Raise a `WigError` with `schema_error`'s line if ``config`` violates the schema."""
    line = schema_error(config, schema_file)
    if line is not None:
        raise WigError(line)
