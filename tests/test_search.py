"""Golden-section search of a guidance parameter (wig.workflow.search): it finds the maximiser of
known functions to the tolerance in the number of probes golden section needs, never probes outside
its bracket, replays deterministically, and a tighter tolerance reuses every earlier probe."""

import math

import pytest

from wig.errors import WigError
from wig.workflow.search import SearchSettings, best, golden_section, next_probe, replay

pytestmark = pytest.mark.check

PHI = (1 + math.sqrt(5)) / 2
BRACKET = SearchSettings(lo=-10.0, hi=10.0, tolerance=0.1, resolution=0.05, max_probes=50)


def _budget(s: SearchSettings) -> int:
    """Golden section's probe count: two inner points, then one per shrink by 1/φ (+1 for rounding)."""
    return math.ceil(math.log((s.hi - s.lo) / s.tolerance) / math.log(PHI)) + 2


@pytest.mark.parametrize(
    "f, maximiser",
    [
        (lambda x: -((x - 3.3) ** 2), 3.3),  # a parabola with its peak inside
        (lambda x: -((x + 7.77) ** 2), -7.77),
        (lambda x: x, 10.0),  # at the high edge
        (lambda x: -x, -10.0),  # at the low edge
    ],
)
def test_it_finds_the_maximiser_to_the_tolerance_in_golden_section_probes(f, maximiser):
    x, trace = golden_section(f, BRACKET)
    assert abs(x - maximiser) <= BRACKET.tolerance
    assert len(trace) <= _budget(BRACKET) and len(trace) <= 13  # ≈ log(200)/log φ = 11.0
    assert all(BRACKET.lo <= t["value"] <= BRACKET.hi for t in trace)
    assert all(abs(t["value"] / BRACKET.resolution - round(t["value"] / BRACKET.resolution)) < 1e-6 for t in trace)
    assert len({t["value"] for t in trace}) == len(trace)  # never a probe twice


def test_a_plateau_ends_on_a_maximiser_and_the_trace_is_deterministic():
    plateau = lambda x: min(x, 2.0)  # noqa: E731  every x ≥ 2 is a maximiser
    x, trace = golden_section(plateau, BRACKET)
    assert plateau(x) == 2.0 and len(trace) <= _budget(BRACKET)
    again = golden_section(plateau, BRACKET)
    assert again == (x, trace)
    left = lambda x: min(-x, 2.0)  # noqa: E731
    x, _ = golden_section(left, BRACKET)
    assert left(x) == 2.0


def test_the_bracket_shrinks_towards_the_better_inner_point():
    """The seed's bug: it kept the worse side. Each comparison here keeps the better one."""
    f = lambda x: -((x - 3.3) ** 2)  # noqa: E731
    _, trace = golden_section(f, BRACKET)
    known = {t["value"]: t["objective"] for t in trace}
    for step in replay(BRACKET, known).steps:
        assert step.lo <= 3.3 + BRACKET.tolerance and 3.3 - BRACKET.tolerance <= step.hi
        assert step.lo < step.c < step.d < step.hi


def test_a_tighter_tolerance_replays_every_earlier_probe_first():
    f = lambda x: -((x - 1.234) ** 2)  # noqa: E731
    coarse = SearchSettings(-10.0, 10.0, 1.0, 0.05, 50)
    _, first = golden_section(f, coarse)
    fine = SearchSettings(-10.0, 10.0, 0.1, 0.05, 50)
    _, second = golden_section(f, fine)
    assert [t["value"] for t in second[: len(first)]] == [t["value"] for t in first]
    assert len(second) > len(first)
    known = {t["value"]: t["objective"] for t in first}
    assert next_probe(fine, known) == second[len(first)]["value"]  # the first new probe, nothing redone
    assert next_probe(coarse, known) is None and best(coarse, known) == max(known, key=known.get)


def test_max_probes_caps_the_search_and_bad_settings_are_refused():
    capped = SearchSettings(-10.0, 10.0, 0.001, 0.001, 5)
    _, trace = golden_section(lambda x: -abs(x), capped)
    assert len(trace) == 5 and replay(capped, {t["value"]: t["objective"] for t in trace}).reason == "max_probes"
    with pytest.raises(WigError, match="the low end must be below the high end"):
        SearchSettings(1.0, 1.0, 0.1, 0.05, 10)
    with pytest.raises(WigError, match="the resolution no coarser than the tolerance"):
        SearchSettings(0.0, 1.0, 0.01, 0.05, 10)


def test_the_workflow_step_scores_a_probe_on_the_selection_split_only():
    """`advance` from score rows: the objective is the table cell of the selection prompts; a probe
    short of the text_at_least point's text fidelity scores below every probe that reaches it."""
    import polars as pl

    from wig.guidance import Guidance, point_columns
    from wig.workflow.search import advance

    def rows(point, dino, clip_t):
        return pl.DataFrame(
            [
                {"concept": "a", "prompt_index": i, "seed": 0, "finetune_seed": 0, "protocol": "standard"}
                | point_columns(point)
                | {"dino": dino[i], "clip_t": clip_t[i]}
                for i in range(4)
            ]
        )

    settings = {
        "method": "pg",
        "parameter": "scale",
        "settings": {"omega": 0.0},
        "bracket": [1.0, 9.0],
        "tolerance": 3.0,
        "resolution": 0.5,
        "max_probes": 20,
        "objective": "dino",
        "text_at_least": {"method": "cfg", "scale": 7.5},
        "protocol": None,
    }
    split = {"a": [0, 2]}
    reference = rows(Guidance("cfg", 7.5), [0.0] * 4, [0.3, 0.0, 0.3, 0.0])
    start = advance(settings, split, None)
    assert start["next"] == 4.0 and start["known"] == [] and start["split"] == split
    probe = rows(Guidance("pg", 4.0, omega=0.0), [0.5, 9.0, 0.7, 9.0], [0.4, 0.0, 0.2, 0.0])
    step = advance(settings, split, start, probe, reference)
    (known,) = step["known"]
    assert known["dino"] == pytest.approx(0.6) and known["clip_t"] == pytest.approx(0.3)  # prompts 0 and 2 only
    assert known["objective"] == pytest.approx(0.6) and step["next"] == 6.0
    short = rows(Guidance("pg", 6.0, omega=0.0), [0.9, 0.0, 0.9, 0.0], [0.2, 1.0, 0.2, 1.0])
    after = advance(settings, split, step, short, reference)
    assert after["known"][1]["objective"] == pytest.approx(-1e6 - 0.1)  # 0.1 short of CFG's 0.3


def test_the_trace_figure_draws_probes_short_of_text_fidelity_on_the_floor(tmp_path):
    import polars as pl

    from wig.evaluation.plots import search_trace

    trace = pl.DataFrame({"probe": [0, 1, 2], "value": [4.0, 6.0, 7.0], "objective": [0.5, -1e6 - 0.1, 0.6]})
    state = {"lo": 4.0, "hi": 7.0, "best": 7.0}
    search_trace(trace, state, {"parameter": "scale", "method": "pg", "objective": "dino"}, tmp_path / "trace.png")
    assert (tmp_path / "trace.png").stat().st_size > 1000 and (tmp_path / "trace.svg").is_file()
