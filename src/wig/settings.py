"""Settings as frozen dataclasses: each field a setting with a default, a one-line doc (CLI help,
docs) and its bounds or choices in the field's metadata, checked when the object is made.

Guidance methods (`wig.guidance.base`) and personalization methods (`wig.personalization.base`)
declare their settings this way; one checker names the field of the first bad value, and one
`Registry` kind holds each family of methods by name.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from wig.errors import WigError, unknown
from wig.readers import number


def param(
    default: Any,
    doc: str,
    low: float | None = None,
    high: float | None = None,
    choices: tuple = (),
    multiple_of: int | None = None,
    above: float | None = None,
):
    """A setting: its default, a one-line doc, its closed bounds ``[low, high]`` (or an open lower
    bound ``above``), its choices, or (integers) the number it must be a multiple of."""
    meta = {"doc": doc, "low": low, "high": high, "choices": choices, "multiple_of": multiple_of, "above": above}
    return dataclasses.field(default=default, metadata=meta)


STEPS = "tuple[int, ...]"  # a list of training steps (or any integers), each within the field's bounds


def type_name(field: dataclasses.Field) -> str:
    """``float``, ``int``, ``bool``, ``str`` or `STEPS`: the field's annotation (a string under
    postponed evaluation of annotations)."""
    return str(getattr(field.type, "__name__", field.type))


def check_settings(obj: Any, owner: str) -> None:
    """Check (and, for float fields, coerce ints to float; for numbers typed as strings or whole
    floats for integers, `wig.readers.number`) every field of the dataclass ``obj`` against its
    metadata; raise `WigError` naming ``owner`` and the field."""
    for f in dataclasses.fields(obj):
        value, meta, kind = getattr(obj, f.name), f.metadata, type_name(f)
        if meta.get("choices"):
            if value not in meta["choices"]:
                options = " or ".join(repr(c) for c in meta["choices"])
                raise WigError(f"{f.name} must be {options}, got {value!r}")
            continue
        if kind == "bool":
            if not isinstance(value, bool):
                raise WigError(f"{owner}: {f.name} must be true or false, got {value!r}")
            continue
        if kind == "str":
            if not isinstance(value, str):
                raise WigError(f"{owner}: {f.name} must be a string, got {value!r}")
            continue
        if kind == STEPS:
            if isinstance(value, (list, tuple)):  # 500.0 or "5e2" for 500: numbers as people type them
                value = [number(v, integer=True) for v in value]
            if not isinstance(value, (list, tuple)) or any(
                isinstance(v, bool) or not isinstance(v, int) for v in value
            ):
                raise WigError(f"{owner}: {f.name} must be a list of integers, got {value!r}")
            low, high = meta.get("low"), meta.get("high")
            for v in value:
                if (low is not None and v < low) or (high is not None and v > high):
                    raise WigError(f"{owner}: {f.name} holds {v}, outside [{low}, {high}]")
            if len(set(value)) != len(value):
                raise WigError(f"{owner}: {f.name} repeats a value: {list(value)}")
            object.__setattr__(obj, f.name, tuple(sorted(value)))
            continue
        # numbers as people type them: lr 1e-4 (a string to YAML 1.1), steps 500.0; 2.5 steps is refused
        value = number(value, integer=kind == "int")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WigError(f"{owner}: {f.name} must be a number, got {value!r}")
        if kind == "int" and not isinstance(value, int):
            raise WigError(f"{owner}: {f.name} must be an integer, got {value!r}")
        object.__setattr__(obj, f.name, value)
        low, high, above = meta.get("low"), meta.get("high"), meta.get("above")
        if not math.isfinite(value):
            if low is not None and high is not None:
                raise WigError(f"{f.name} must lie in [{low:g}, {high:g}], got {value}")
            raise WigError(f"{f.name} must be finite, got {value}")
        if (low is not None and value < low) or (high is not None and value > high):
            if low is not None and high is not None:
                raise WigError(f"{f.name} must lie in [{low:g}, {high:g}], got {value}")
            raise WigError(f"{f.name} must be {f'≥ {low:g}' if low is not None else f'≤ {high:g}'}, got {value}")
        if above is not None and value <= above:
            raise WigError(f"{f.name} must be > {above:g}, got {value}")
        if meta.get("multiple_of") and value % meta["multiple_of"]:
            raise WigError(f"{f.name} must be a multiple of {meta['multiple_of']}, got {value}")
        if kind == "float":
            object.__setattr__(obj, f.name, float(value))


def settings_of(obj: Any) -> dict[str, Any]:
    """The dataclass's settings by field name."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


class Registry(dict):
    """Method classes by their ``name``, sorted by it: `register` is the class decorator a shipped
    module or a plug-in uses, `method_class` the lookup whose error lists the choices."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind  # "guidance method", "personalization method": what the errors call one

    def register(self, cls):
        """Class decorator: make a method known by its ``name``."""
        if cls.name in self and self[cls.name] is not cls:
            raise WigError(f"{self.kind} {cls.name!r} is registered twice")
        self[cls.name] = cls
        ordered = sorted(self.items())  # by name, whatever order packages are discovered in
        self.clear()
        self.update(ordered)
        return cls

    def method_class(self, name: str):
        if name not in self:
            raise WigError(unknown(self.kind, name, self))
        return self[name]

    def foreign_setting(self, cls, key: str) -> str | None:
        """Why ``key`` is no setting of ``cls`` (naming the methods that have it), or None if it is."""
        if key in settings_names(cls):
            return None
        owners = [n for n, c in self.items() if key in settings_names(c)]
        return f"applies to {'/'.join(owners)} only, not {cls.name}" if owners else f"is no setting of {cls.name}"

    def fields(self) -> dict[str, dataclasses.Field]:
        """Every setting of the registered methods by name, sorted (whatever order plug-ins
        register in), each the field of the first method (by name) that declares it."""
        out: dict[str, dataclasses.Field] = {}
        for name in sorted(self):
            for f in dataclasses.fields(self[name]):
                out.setdefault(f.name, f)
        return dict(sorted(out.items()))

    def make(self, method: str, *args, **settings):
        """A method by name with its settings; a setting it does not have is refused, naming the
        methods that have it."""
        cls = self.method_class(method)
        for key in settings:
            if (why := self.foreign_setting(cls, key)) is not None:
                raise WigError(f"{key} {why}")
        return cls(*args, **settings)


def settings_names(cls) -> list[str]:
    """The setting names of a settings dataclass, in declaration order."""
    return [f.name for f in dataclasses.fields(cls)]
