"""The guidance grid of a study: config entries → points → canonical path names.

A point's name is part of every result path (``{method}/{point}/seed{seed}``), so numbers
are spelled canonically: the shortest decimal that round-trips, after rounding away float
noise, so ``0.1 * 3`` and ``0.3`` name the same folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from wig.errors import WigError
from wig.guidance import Guidance

OMEGA_METHODS = ("pg", "pgpp")


def canonical(x: float) -> str:
    return repr(round(float(x), 9) + 0.0)  # + 0.0 turns -0.0 into 0.0


@dataclass(frozen=True)
class Point:
    method: str
    scale: float = 1.0
    omega: float = 1.0
    ag_scale: float = 2.0
    weak: str = "pretrained"  # ag's weak model: "pretrained" or "lora" (the weak checkpoint)

    @property
    def name(self) -> str:
        name = f"w{canonical(self.omega)}_l{canonical(self.scale)}"
        if self.method == "ag":
            name += f"_a{canonical(self.ag_scale)}" + ("_weak" if self.weak == "lora" else "")
        return name

    @property
    def key(self) -> str:
        """The point's place below a sample set: ``{method}/{name}``."""
        return f"{self.method}/{self.name}"

    def guidance(self) -> Guidance:
        return Guidance(self.method, scale=self.scale, omega=self.omega, ag_scale=self.ag_scale, weak=self.weak)


def _values(entry: Mapping[str, Any], key: str, default: float) -> list[float]:
    value = entry.get(key, default)
    # the value a path spells is the value a job uses
    return [float(canonical(v)) for v in (value if isinstance(value, list) else [value])]


def expand(entries: Iterable[Mapping[str, Any]]) -> list[Point]:
    """Config ``guidance:`` entries → unique points in config order."""
    points: dict[tuple, Point] = {}
    for i, entry in enumerate(entries):
        method = entry["method"]
        if method not in OMEGA_METHODS and "omega" in entry:
            raise WigError(f"guidance[{i}].omega: ω applies to {'/'.join(OMEGA_METHODS)} only, not {method}")
        for key in ("ag_scale", "weak"):
            if method != "ag" and key in entry:
                raise WigError(f"guidance[{i}].{key} applies to ag only, not {method}")
        scales = [1.0] if method == "none" else _values(entry, "scale", 7.5)
        omegas = _values(entry, "omega", 1.0) if method in OMEGA_METHODS else [1.0]
        for scale in scales:
            for omega in omegas:
                point = Point(method, scale, omega, _values(entry, "ag_scale", 2.0)[0], entry.get("weak", "pretrained"))
                point.guidance()  # validates ω and the scales, naming the method
                points.setdefault((method, point.name), point)
    return list(points.values())


def job_chunks(points: Sequence[Point], size: int) -> dict[str, list[Point]]:
    """The points of a model's generation jobs: ``size`` consecutive points of the grid per job
    (one model load, one process start for all of them). A job of one point is named by the point
    (``{method}/{name}``); a job of several by its place, ``points{k:02d}``, so editing the grid
    reruns the chunks whose points changed (their params) and the ones after."""
    if size < 1:
        raise WigError(f"points per job must be at least 1, got {size}")
    if size == 1:
        return {p.key: [p] for p in points}
    return {f"points{k:02d}": list(points[i : i + size]) for k, i in enumerate(range(0, len(points), size))}
