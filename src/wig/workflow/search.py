"""Golden-section search of one guidance parameter (λ in a bracket, or ω in [0, 1]), as a pure
replay: the next probe is a function of the bracket, the settings and the values already known.

The WiG seed's ``--optimize`` searched λ over [−10, 10] maximising DINO, but inverted the bracket
update (it kept the worse side) and so always ran its 50-iteration cap. Here the update keeps the
side of the better inner point, and every probe is rounded to ``resolution`` (and kept inside the
bracket), so probes land on a grid: a rerun with a tighter tolerance replays the same probes —
each one an ordinary, cached grid point in the workflow — before it asks for new ones.

`next_probe` is what the workflow's checkpoint chain calls one probe at a time; `golden_section`
runs the same replay against a function (tests, the benchmark). Ties move the bracket right, so a
plateau ends on its right edge and the trace is deterministic. The search stops when the bracket is
no wider than ``tolerance``, when the two inner points round to the same probe, or at
``max_probes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

from wig.errors import WigError

INVPHI = (math.sqrt(5.0) - 1.0) / 2.0  # 1/φ ≈ 0.618


@dataclass(frozen=True)
class SearchSettings:
    lo: float
    hi: float
    tolerance: float
    resolution: float
    max_probes: int

    def __post_init__(self):
        for name in ("lo", "hi", "tolerance", "resolution"):
            if not math.isfinite(getattr(self, name)):
                what = {"lo": "the bracket's low end", "hi": "the bracket's high end"}.get(name, name)
                raise WigError(f"search: {what} is {getattr(self, name)}, not a finite number")
        if not self.lo < self.hi:
            raise WigError(f"search bracket [{self.lo}, {self.hi}]: the low end must be below the high end")
        if self.tolerance <= 0 or self.resolution <= 0 or self.resolution > self.tolerance:
            raise WigError(
                f"search: tolerance {self.tolerance} and resolution {self.resolution} must be > 0, "
                "the resolution no coarser than the tolerance"
            )
        if self.max_probes < 2:
            raise WigError("search: max_probes must be at least 2 (golden section starts with two inner points)")

    def snap(self, x: float) -> float:
        """``x`` on the resolution grid, inside the bracket (a probe's value, its cache key)."""
        snapped = round(round(x / self.resolution) * self.resolution, 10)
        return min(max(snapped, self.lo), self.hi)


@dataclass(frozen=True)
class Step:
    """One comparison of the replay: the bracket it starts from and its two inner probes."""

    lo: float
    hi: float
    c: float
    d: float


@dataclass(frozen=True)
class Replay:
    steps: tuple[Step, ...]  # the comparisons made with known values
    next: float | None  # the probe to evaluate next; None when the search is done
    lo: float  # the final bracket
    hi: float
    reason: str  # why it stopped ("tolerance", "resolution", "max_probes") or "" while running


def replay(settings: SearchSettings, known: Mapping[float, float]) -> Replay:
    """Replay the search from its bracket with the objective values ``known`` (probe → value)."""
    s = settings
    a, b = s.lo, s.hi
    c, d = s.snap(b - INVPHI * (b - a)), s.snap(a + INVPHI * (b - a))
    used: list[float] = []
    steps: list[Step] = []
    while True:
        if b - a <= s.tolerance:
            return Replay(tuple(steps), None, a, b, "tolerance")
        if c >= d:  # the inner points met on the resolution grid
            return Replay(tuple(steps), None, a, b, "resolution")
        for x in (c, d):
            if x not in used:
                if len(used) >= s.max_probes:
                    return Replay(tuple(steps), None, a, b, "max_probes")
                if x not in known:
                    return Replay(tuple(steps), x, a, b, "")
                used.append(x)
        steps.append(Step(a, b, c, d))
        if known[c] > known[d]:  # the maximum lies in [a, d]: d's old place is taken by c
            b, d = d, c
            c = s.snap(b - INVPHI * (b - a))
        else:  # in [c, b] (ties move right): c's old place is taken by d
            a, c = c, d
            d = s.snap(a + INVPHI * (b - a))


def next_probe(settings: SearchSettings, known: Mapping[float, float]) -> float | None:
    """The next probe value, or None when the search is done."""
    return replay(settings, known).next


def best(settings: SearchSettings, known: Mapping[float, float]) -> float:
    """The chosen value: the best probe the replay used (the last of equals, as ties move right)."""
    done = replay(settings, known)
    used = [x for step in done.steps for x in (step.c, step.d)] or list(known)
    return max(sorted(set(used)), key=lambda x: (known[x], x))


def golden_section(f: Callable[[float], float], settings: SearchSettings) -> tuple[float, list[dict]]:
    """Maximise ``f`` over the bracket; (the chosen value, the trace: one row per probe in the
    order asked, with its value and the bracket when it was asked)."""
    known: dict[float, float] = {}
    trace = []
    while (state := replay(settings, known)).next is not None:
        x = state.next
        known[x] = float(f(x))
        trace.append({"probe": len(trace), "value": x, "objective": known[x], "lo": state.lo, "hi": state.hi})
    return best(settings, known), trace


# --- a search in the study ---------------------------------------------------------------------

PROBE = "probe"  # a probe's generation-job name: probe/<search>/<value>, unless a grid job holds its point


@dataclass(frozen=True)
class SearchSpec:
    """One ``search:`` entry: which parameter of which guidance method, over what bracket, for what."""

    name: str
    method: str
    parameter: str
    settings: Mapping  # the method's other settings
    bounds: SearchSettings
    objective: str  # a registered metric
    higher: bool  # whether the objective metric is higher-is-better
    text_at_least: object | None  # a GuidanceMethod of the grid whose text fidelity probes must reach

    def point(self, value: float):
        """The grid point of a probe."""
        from wig.guidance import make

        return make(self.method, **self.settings, **{self.parameter: value})

    def chunk(self, value: float) -> str:
        from wig.guidance import canonical

        return f"{PROBE}/{self.name}/{canonical(value)}"


def parse_searches(entries, points, metrics) -> dict[str, SearchSpec]:
    """The ``search:`` entries, each checked against the guidance registry, the grid (``points``) and
    the enabled ``metrics``; a `WigError` names the key of the first problem."""
    from wig.evaluation.metrics import REGISTRY as METRICS
    from wig.guidance import make, method_class, parameters

    out: dict[str, SearchSpec] = {}
    for i, entry in enumerate(entries):
        key = f"search[{i}]"
        try:
            cls = method_class(entry["method"])
        except WigError as err:
            raise WigError(f"{key}.method: {err}") from None
        field = parameters(cls).get(entry["parameter"])
        if field is None or not isinstance(field.default, float):
            floats = [n for n, f in parameters(cls).items() if isinstance(f.default, float)]
            raise WigError(
                f"{key}.parameter: {entry['method']} has no float parameter {entry['parameter']!r} ({floats})"
            )
        if entry["parameter"] in entry["settings"]:
            raise WigError(f"{key}.settings: {entry['parameter']} is the searched parameter")
        bracket = entry.get("bracket") or ([0.0, 1.0] if entry["parameter"] == "omega" else None)
        if bracket is None:
            raise WigError(f"{key}.bracket: give [low, high] for {entry['parameter']}")
        try:
            bounds = SearchSettings(
                float(bracket[0]), float(bracket[1]), entry["tolerance"], entry["resolution"], entry["max_probes"]
            )
            for end in bracket:
                make(entry["method"], **entry["settings"], **{entry["parameter"]: float(end)})
        except WigError as err:
            raise WigError(f"{key}: {err}") from None
        if entry["objective"] not in metrics:
            raise WigError(
                f"{key}.objective: {entry['objective']!r} is not among the study's metrics "
                f"(evaluation.metrics: {', '.join(metrics)})"
            )
        reference = None
        if entry.get("text_at_least"):
            try:
                reference = make(**entry["text_at_least"])
            except (WigError, TypeError) as err:
                raise WigError(f"{key}.text_at_least: {err}") from None
            if reference.key not in {p.key for p in points}:
                raise WigError(f"{key}.text_at_least: {reference.key} is not a point of the guidance grid")
            if not any(METRICS[m].fidelity == "text" for m in metrics):
                raise WigError(f"{key}.text_at_least: the study scores no text fidelity metric")
        name = entry.get("name") or f"{entry['method']}-{entry['parameter']}"
        if name in out:
            raise WigError(f"{key}.name: two searches are named {name!r}")
        out[name] = SearchSpec(
            name,
            entry["method"],
            entry["parameter"],
            dict(entry["settings"]),
            bounds,
            entry["objective"],
            METRICS[entry["objective"]].higher,
            reference,
        )
    return out


def selection_split(prompts: Mapping[str, int], fraction: float, seed: int) -> dict[str, list[int]]:
    """Per concept, the prompt indices a search reads (a seeded ``fraction`` of them, at least one,
    and at least one left to evaluate where there are two); the others are the evaluation split."""
    import hashlib

    import numpy as np

    out = {}
    for concept, n in sorted(prompts.items()):  # each concept's draw is its own: adding one moves no other
        rng = np.random.default_rng([seed, int(hashlib.sha256(concept.encode()).hexdigest()[:8], 16)])
        k = min(max(1, round(fraction * n)), max(1, n - 1))
        out[concept] = sorted(int(j) for j in rng.permutation(n)[:k])
    return out


def split_scores(scores, split: Mapping[str, list[int]], selected: bool):
    """The rows of ``scores`` in the selection split (``selected``) or in the evaluation split."""
    import polars as pl

    rows = pl.DataFrame(
        [(c, i) for c, indices in split.items() for i in indices],
        schema={"concept": pl.String, "prompt_index": pl.Int64},
        orient="row",
    )
    return scores.join(rows, on=["concept", "prompt_index"], how="semi" if selected else "anti")


def point_rows(scores, point):
    """The rows of one grid point (a job may hold several)."""
    import polars as pl

    from wig.guidance import point_columns

    values = point_columns(point)
    return scores.filter(pl.all_horizontal([pl.col(k) == v for k, v in values.items()]))


def objective(spec: SearchSpec, probe, reference=None, protocol: str | None = None) -> dict:
    """A probe's objective from its scores on the selection split: the objective metric's table cell
    (negated for a lower-is-better metric); with ``text_at_least``, a probe whose text fidelity falls
    below the reference point's scores −10⁶ − the shortfall (so the search climbs back towards it).
    Returns the objective with the cells it came from."""
    import polars as pl

    from wig.evaluation.metrics import fidelity_metrics, metric_value

    protocol = protocol or sorted(probe["protocol"].unique().to_list())[0]
    probe = probe.filter(pl.col("protocol") == protocol)
    value = metric_value(probe, spec.objective)
    out = {"protocol": protocol, spec.objective: value, "objective": value if spec.higher else -value}
    if reference is not None:
        _, text = fidelity_metrics(probe)
        reached, needed = (
            metric_value(probe, text),
            metric_value(reference.filter(pl.col("protocol") == protocol), text),
        )
        out |= {text: reached, f"{text}_needed": needed}
        if reached < needed:
            out["objective"] = -1e6 - (needed - reached)
    return out


def spec_of(settings: Mapping, name: str = "") -> SearchSpec:
    """The spec a step job's params (`Study.search_settings`) describe."""
    from wig.evaluation.metrics import REGISTRY as METRICS
    from wig.guidance import make

    lo, hi = settings["bracket"]
    bounds = SearchSettings(lo, hi, settings["tolerance"], settings["resolution"], settings["max_probes"])
    reference = make(**settings["text_at_least"]) if settings.get("text_at_least") else None
    objective = settings["objective"]
    return SearchSpec(
        name,
        settings["method"],
        settings["parameter"],
        settings["settings"],
        bounds,
        objective,
        METRICS[objective].higher,
        reference,
    )


def advance(settings: Mapping, split: Mapping, previous: Mapping | None, probe=None, reference=None) -> dict:
    """One step of the workflow's search: the state after the probe ``previous`` asked for has been
    scored (``probe``: its score rows; ``reference``: the text_at_least point's), with the next
    probe to ask for, or the choice once the replay is done. Step 0 has no previous state."""
    spec = spec_of(settings)
    known = list(previous["known"]) if previous else []
    if previous is not None and previous["next"] is not None:
        value = previous["next"]
        rows = split_scores(point_rows(probe, spec.point(value)), split, selected=True)
        ref = (
            split_scores(point_rows(reference, spec.text_at_least), split, selected=True)
            if reference is not None
            else None
        )
        known.append({"value": value, **objective(spec, rows, ref, settings.get("protocol"))})
    values = {k["value"]: k["objective"] for k in known}
    state = replay(spec.bounds, values)
    return {
        "known": known,
        "next": state.next,
        "lo": state.lo,
        "hi": state.hi,
        "reason": state.reason,
        "best": best(spec.bounds, values) if state.next is None and values else None,
        "split": {c: list(v) for c, v in split.items()},
    }


def summary(settings: Mapping, state: Mapping) -> str:
    """One line for ``chosen.md``: what was chosen after how many probes, and why the search
    stopped — saying so when the tolerance was not met (the resolution grid or the probe budget
    stopped it first)."""
    width = state["hi"] - state["lo"]
    head = (
        f"Chosen {settings['parameter']} = {state['best']:g} after {len(state['known'])} probes; "
        f"final bracket [{state['lo']:g}, {state['hi']:g}] (width {width:.4g})"
    )
    if state["reason"] == "tolerance":
        return f"{head}: within the tolerance {settings['tolerance']:g}."
    why = {
        "resolution": f"its inner probes met on the resolution grid ({settings['resolution']:g})",
        "max_probes": f"it reached max_probes ({settings['max_probes']})",
    }.get(state["reason"], f"it stopped ({state['reason']})")
    return (
        f"{head}: **the tolerance {settings['tolerance']:g} was not met** — {why}; a finer resolution "
        "or more probes would narrow it."
    )


def trace_frame(state: Mapping):
    """The search's probes in the order asked: value, objective and the metric cells it came from."""
    import polars as pl

    rows = [{"probe": i, **k} for i, k in enumerate(state["known"])]
    return pl.DataFrame(rows, infer_schema_length=None)


def held_out(settings: Mapping, state: Mapping, chosen, reference=None):
    """The chosen point's metrics on the selection split (what the search saw: optimistic) and on the
    held-out evaluation split, per protocol — and the text_at_least point's, for comparison."""
    import polars as pl

    from wig.evaluation.metrics import metric_value, metrics_of

    spec = spec_of(settings)
    points = [("chosen", spec.point(state["best"]), chosen)]
    if reference is not None:
        points.append(("reference", spec.text_at_least, reference))
    rows = []
    for role, point, scores in points:
        own = point_rows(scores, point)
        for protocol in sorted(own["protocol"].unique().to_list()):
            at = own.filter(pl.col("protocol") == protocol)
            for split, selected in (("selection", True), ("evaluation", False)):
                part = split_scores(at, state["split"], selected)
                values = {m: metric_value(part, m) for m in metrics_of(part)}
                rows.append({"role": role, "point": point.key, "protocol": protocol, "split": split} | values)
                rows[-1]["n_images"] = len(part)
    return pl.DataFrame(rows)
