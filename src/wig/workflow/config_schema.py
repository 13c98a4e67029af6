"""A config read as people write it, and its schema errors in one line: the key, where it sits,
and the nearest valid key.

Numbers come in the forms people type: PyYAML reads YAML 1.1, where ``lr: 1e-4`` (every DreamBooth
recipe's spelling) is a *string* (1.1 floats need a dot: ``1.0e-4``), and ``steps: 500.0`` is a
float. `coerce_numbers` reads a string that is a number where the schema takes a number, and a
whole float where it takes an integer, as that number; ``2.5`` where an integer belongs stays, and
the schema refuses it naming the key (`read_config`). `number` does the same for the settings the
methods declare (`wig.settings`), which the schema leaves open (`wig.readers.number`).

Snakemake's ``validate`` reports a violation with the whole schema and the whole config (1,287
lines for one misspelt top-level key). `read_config` still validates with it — it fills the
schema's defaults in — after asking `schema_error` for the line to show instead.
"""

from __future__ import annotations

import difflib
import os
from typing import Any, Mapping

from wig.errors import WigError
from wig.readers import number


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


def _types(schema: Mapping[str, Any]) -> set[str]:
    kind = schema.get("type", ())
    return {kind} if isinstance(kind, str) else set(kind)


def _resolve(schema: Any, root: Mapping[str, Any]) -> Any:
    while isinstance(schema, Mapping) and "$ref" in schema and str(schema["$ref"]).startswith("#/"):
        target: Any = root
        for part in schema["$ref"][2:].split("/"):
            target = target[part]
        schema = target
    return schema


def coerce_numbers(config: Any, schema: Mapping[str, Any], root: Mapping[str, Any] | None = None) -> Any:
    """``config`` with every scalar the schema types as a number or integer read by `number` (in
    place for mappings and lists, which are also returned)."""
    root = schema if root is None else root
    schema = _resolve(schema, root)
    if not isinstance(schema, Mapping):
        return config
    for key in ("oneOf", "anyOf"):  # an alternative of the value's own shape
        for option in schema.get(key, ()):
            option = _resolve(option, root)
            kinds = _types(option)
            if (isinstance(config, Mapping) and "object" in kinds) or (isinstance(config, list) and "array" in kinds):
                return coerce_numbers(config, option, root)
        if not isinstance(config, (Mapping, list)) and key in schema:
            kinds = set().union(*(_types(_resolve(o, root)) for o in schema[key]))
            return _scalar(config, kinds)
    if isinstance(config, Mapping):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for k in list(config):
            sub = properties.get(k, extra if isinstance(extra, Mapping) else None)
            if sub is not None:
                config[k] = coerce_numbers(config[k], sub, root)
        return config
    if isinstance(config, list):
        items = schema.get("items")
        if isinstance(items, Mapping):
            for i, item in enumerate(config):
                config[i] = coerce_numbers(item, items, root)
        return config
    return _scalar(config, _types(schema))


def _scalar(value: Any, kinds: set[str]) -> Any:
    """A scalar read by `number` where the schema takes a number; a string stays one where the schema
    takes strings too (its reader decides: a guidance value, a GPU id)."""
    if isinstance(value, bool) or not kinds & {"number", "integer"} or (isinstance(value, str) and "string" in kinds):
        return value
    return number(value, integer="integer" in kinds and "number" not in kinds)


def read_config(config: dict, schema_file: str | os.PathLike, where: str | None = None) -> dict:
    """``config`` as the workflow reads it: numbers as people type them (`coerce_numbers`), checked
    against the schema (the first violation in one line, after ``where:`` if given, as a `WigError`),
    its defaults filled in (Snakemake's ``validate``). In place; also returned."""
    import yaml
    from snakemake.utils import validate

    with open(schema_file, encoding="utf-8") as f:
        schema = yaml.safe_load(f)
    coerce_numbers(config, schema)
    line = schema_error(config, schema_file)
    if line is not None:
        raise WigError(f"{where}: {line}" if where else line)
    validate(config, str(schema_file))  # fills in the schema's defaults
    return config
