"""The guidance grid of a study: config entries → points → canonical path names.

A point's name is part of every result path (``{method}/{point}/seed{seed}``), so numbers
are spelled canonically: the shortest decimal that round-trips, after rounding away float
noise, so ``0.1 * 3`` and ``0.3`` name the same folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from wig.errors import WigError
from wig.guidance import Guidance

OMEGA_METHODS = ("pg", "pgpp")
_POINT = re.compile(r"^w(?P<omega>[0-9.]+)_l(?P<scale>-?[0-9.]+)(?:_a(?P<ag>-?[0-9.]+)(?P<weak>_weak)?)?$")


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

    @classmethod
    def parse(cls, method: str, name: str) -> "Point":
        m = _POINT.match(name)
        if m is None or (m["ag"] is not None) != (method == "ag"):
            raise WigError(f"not a grid point name for {method}: {name!r}")
        ag = float(m["ag"]) if m["ag"] is not None else cls.ag_scale
        weak = "lora" if m["weak"] else "pretrained"
        return cls(method, scale=float(m["scale"]), omega=float(m["omega"]), ag_scale=ag, weak=weak)

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
