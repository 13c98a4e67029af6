"""The guidance grid of a study: config entries → grid points (guidance settings) → job chunks.

A point is a `wig.guidance.GuidanceMethod` instance; its ``key`` (``{method}/{point_name}``) is
part of every result path, so numbers are spelled canonically (`wig.guidance.canonical`) and
every value a path spells is the value a job uses.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Mapping, Sequence

from wig.errors import WigError
from wig.guidance import GuidanceMethod, canonical, make, method_class, parameters
from wig.guidance.base import foreign_setting
from wig.readers import number
from wig.settings import type_name

__all__ = ["canonical", "expand", "job_chunks"]


def _values(value: Any, kind: str) -> list:
    values = value if isinstance(value, list) else [value]
    if kind in ("float", "int"):  # numbers as people type them: 1e-3 (a string to YAML 1.1), 2.0 for 2
        values = [number(v, integer=kind == "int") for v in values]
    if kind != "float":  # an int setting (a checkpoint's step) is checked by the method as given
        return values
    # floats canonical: the value a path spells is the value a job uses
    return [float(canonical(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in values]


def expand(entries: Iterable[Mapping[str, Any]]) -> list[GuidanceMethod]:
    """Config ``guidance:`` entries → unique points in config order. Each entry names a method and
    any of its parameters; a list-valued parameter expands into one point per value (several
    lists: their product)."""
    points: dict[str, GuidanceMethod] = {}
    for i, entry in enumerate(entries):
        try:
            cls = method_class(entry["method"])
        except WigError as err:
            raise WigError(f"guidance[{i}].method: {err}") from None
        for key in entry:
            if key != "method" and (why := foreign_setting(cls, key)) is not None:
                raise WigError(f"guidance[{i}].{key} {why}")
        fields = parameters(cls)
        names = [k for k in fields if k in entry]
        for combo in itertools.product(*(_values(entry[k], type_name(fields[k])) for k in names)):
            try:
                point = make(cls.name, **dict(zip(names, combo)))
            except WigError as err:
                raise WigError(f"guidance[{i}]: {err}") from None
            points.setdefault(point.key, point)
    return list(points.values())


def job_chunks(points: Sequence[GuidanceMethod], size: int) -> dict[str, list[GuidanceMethod]]:
    """The points of a model's generation jobs: ``size`` consecutive points of the grid per job
    (one model load, one process start for all of them). A job of one point is named by the point
    (``{method}/{name}``); a job of several by its place, ``points{k:02d}``, so editing the grid
    reruns the chunks whose points changed (their params) and the ones after."""
    if size < 1:
        raise WigError(f"points per job must be at least 1, got {size}")
    if size == 1:
        return {p.key: [p] for p in points}
    return {f"points{k:02d}": list(points[i : i + size]) for k, i in enumerate(range(0, len(points), size))}
