"""A config read as people write it, and its schema errors in one line: the key, where it sits,
and the nearest valid key.

Numbers come in the forms people type: PyYAML reads YAML 1.1, where ``lr: 1e-4`` (every DreamBooth
recipe's spelling) is a *string* (1.1 floats need a dot: ``1.0e-4``), and ``steps: 500.0`` is a
float. `coerce_numbers` reads a string that is a number where the schema takes a number, and a
whole float where it takes an integer, as that number; ``2.5`` where an integer belongs stays, and
the schema refuses it naming the key (`read_config`). `number` does the same for the settings the
methods declare (`wig.settings`), which the schema leaves open (`wig.readers.number`).

Snakemake's ``validate`` reports a violation with the whole schema and the whole config (1,287
lines for one misspelt top-level key); `read_config` reports `schema_error`'s line and fills the
schema's defaults in itself, as ``validate`` would (`fill_defaults`), so the library reads a config
without Snakemake.

The schema ships in the package (``wig/workflow/schema.yaml``): the workflow, ``wig plan`` and the
library read the same file wherever they run. Its registry-backed keys (``x-registry:``) get
their ``enum`` from the registries when it is read (`schema`): the model families and their tiny
twins, shipped or plugged in; its ``x-default:`` keys their default (the default fine-tune and
encoders), so no plug-in is named in the schema.
"""

from __future__ import annotations

import copy
import difflib
import os
from importlib import resources
from pathlib import Path
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


SCHEMA = "schema.yaml"  # in this package (`wig.workflow`)


def schema_text() -> str:
    """The shipped schema's text."""
    return resources.files("wig.workflow").joinpath(SCHEMA).read_text(encoding="utf-8")


def _registries() -> dict[str, list[str]]:
    from wig.models.families import FAMILIES, tiny_kinds

    return {"model families": sorted(FAMILIES), "tiny twins": sorted(tiny_kinds())}


def _defaults() -> dict[str, object]:
    """The defaults the registries declare (a plug-in class's own ``default = True``): the
    fine-tune of a config that names none, and the encoders of one that configures none."""
    from wig.evaluation.encoders import ENCODERS
    from wig.personalization import REGISTRY as PERSONALIZATION

    (method,) = [name for name, cls in PERSONALIZATION.items() if vars(cls).get("default")]
    kinds = [kind for kind, cls in ENCODERS.items() if vars(cls).get("default")]
    return {"personalization": {"method": method}, "encoders": {kind: {"tiny": True} for kind in kinds}}


def schema(schema_file: str | os.PathLike | None = None) -> dict:
    """The config schema (default: the shipped one) with every ``x-registry: <what>`` key given
    the registry's names as its ``enum``."""
    import yaml

    loaded = yaml.safe_load(schema_text() if schema_file is None else open(schema_file, encoding="utf-8").read())
    names, defaults = _registries(), _defaults()

    def fill(node):
        if isinstance(node, dict):
            if "x-registry" in node:
                node["enum"] = names[node["x-registry"]]
            if "x-default" in node:
                node["default"] = copy.deepcopy(defaults[node["x-default"]])
            for value in node.values():
                fill(value)
        elif isinstance(node, list):
            for value in node:
                fill(value)

    fill(loaded)
    return loaded


def _schema(schema_or_file) -> dict:
    return schema_or_file if isinstance(schema_or_file, Mapping) else schema(schema_or_file)


def schema_error(config: Mapping[str, Any], schema_file: str | os.PathLike | Mapping | None = None) -> str | None:
    """The first violation of the schema (a file, a loaded schema, default the shipped one) by
    ``config`` as one line, or None if it is valid.
    An unknown key names the nearest key the schema allows there; any other violation names its
    key and what the schema expected (values shortened, never the schema)."""
    import jsonschema

    schema = _schema(schema_file)
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


def check_schema(config: Mapping[str, Any], schema_file: str | os.PathLike | Mapping | None = None) -> None:
    """Raise a `WigError` with `schema_error`'s line if ``config`` violates the schema."""
    line = schema_error(config, schema_file)
    if line is not None:
        raise WigError(line)


def fill_defaults(config: dict, schema: Mapping[str, Any]) -> dict:
    """``config`` with the schema's ``default:`` values set where a key is missing, at every level
    the validator walks (what Snakemake's ``validate`` does, with the jsonschema recipe it uses);
    in place, also returned. ``config`` must be valid (`schema_error` first)."""
    import jsonschema

    base = jsonschema.validators.validator_for(schema)
    properties = base.VALIDATORS["properties"]

    def set_defaults(validator, props, instance, subschema):
        if isinstance(instance, dict):
            for key, sub in props.items():
                if isinstance(sub, Mapping) and "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from properties(validator, props, instance, subschema)

    jsonschema.validators.extend(base, {"properties": set_defaults})(schema).validate(config)
    return config


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


def read_config(config: dict, schema_file: str | os.PathLike | Mapping | None = None, where: str | None = None) -> dict:
    """``config`` as the workflow reads it: numbers as people type them (`coerce_numbers`), checked
    against the schema (default: the shipped one; the first violation in one line, after
    ``where:`` if given, as a `WigError`), its defaults filled in (`fill_defaults`). In place; also
    returned."""
    loaded = _schema(schema_file)
    coerce_numbers(config, loaded)
    line = schema_error(config, loaded)
    if line is not None:
        raise WigError(f"{where}: {line}" if where else line)
    return fill_defaults(config, loaded)


SHIPPED = "resources/"  # a config path starting here may name the workflow's own resources


def resolve_shipped(config: Any, workflow_root: str | os.PathLike, project: str | os.PathLike = ".") -> Any:
    """``config`` with every relative path under ``resources/`` that the project (the working
    directory) lacks but the workflow's checkout has made absolute, in place; also returned.

    Why: the shipped configs name the workflow's own files (the synthetic base model, the concept
    sheets, the demo photos) as ``resources/…``. Run from a checkout, that is the working directory;
    used as a Snakemake module from another project (docs/workflow.md "Deploy"), the same config must
    still find them — in the workflow, never in whatever folder Snakemake was started from. A file
    the project has itself wins, so a user can replace a shipped resource by adding their own."""
    root, here = Path(workflow_root), Path(project)

    def visit(value: Any) -> Any:
        if isinstance(value, dict):
            for key, item in value.items():
                value[key] = visit(item)
        elif isinstance(value, list):
            value[:] = [visit(item) for item in value]
        elif isinstance(value, str) and value.startswith(SHIPPED) and not (here / value).exists():
            shipped = root / value
            if shipped.exists():
                return str(shipped.resolve())
        return value

    return visit(config)
