"""Projected CI half-widths (wig.evaluation.sample_size): the tables' nested bootstrap with the
resample counts scaled behaves as a mean over that many independent draws."""

import numpy as np
import polars as pl
import pytest

from wig.errors import WigError
from wig.evaluation.metrics import _bootstrap, paired_vs_cfg
from wig.evaluation.sample_size import components, paired_cube, plan, projected_half_width

pytestmark = pytest.mark.check


def _own_half_width(cube, n_boot=2000):
    lo, hi = _bootstrap(cube, n_boot, np.random.default_rng(9))
    return (hi - lo) / 2


def _draw(rng, counts, sd):
    """A cube from known components: subject, LoRA-seed, prompt, seed effects and cell noise."""
    c, f, p, s = counts
    return (
        rng.normal(0, sd["subjects"], (c, 1, 1, 1))
        + rng.normal(0, sd["finetune_seeds"], (c, f, 1, 1))
        + rng.normal(0, sd["prompts"], (c, 1, p, 1))
        + rng.normal(0, sd["seeds"], (c, 1, 1, s))
        + rng.normal(0, sd["noise"], (c, f, p, s))
    )


def test_the_components_of_a_known_design_are_recovered():
    sd = {"subjects": 0.05, "finetune_seeds": 0.03, "prompts": 0.08, "seeds": 0.04, "noise": 0.1}
    rng = np.random.default_rng(0)
    got = {k: [] for k in sd}
    for _ in range(20):
        comp = components(_draw(rng, (6, 3, 6, 8), sd))
        for k in sd:
            got[k].append(comp[k])
    for k, v in sd.items():
        assert np.mean(got[k]) == pytest.approx(v**2, rel=0.3), k


def test_a_projection_is_the_ci_a_run_of_that_size_shows():
    sd = {"subjects": 0.01, "finetune_seeds": 0.01, "prompts": 0.02, "seeds": 0.01, "noise": 0.1}
    rng = np.random.default_rng(1)
    pilot = _draw(rng, (5, 2, 6, 4), sd)
    for counts in ((5, 2, 6, 16), (5, 4, 6, 8)):
        actual = np.mean([_own_half_width(_draw(rng, counts, sd)) for _ in range(10)])
        assert projected_half_width(pilot, counts, runs=10) == pytest.approx(actual, rel=0.2), counts
    # the pilot's own counts: about the width its table CI has
    assert projected_half_width(pilot, pilot.shape, runs=10) == pytest.approx(_own_half_width(pilot), rel=0.3)


def test_seeds_cannot_shrink_the_spread_between_subjects():
    rng = np.random.default_rng(2)
    subject = np.array([-0.1, 0.0, 0.05, 0.1, 0.2])[:, None, None, None]
    cube = subject + rng.normal(0.0, 0.05, size=(5, 2, 6, 4))
    by_seeds = plan(cube, target=0.01, grow="seeds", limit=64, n_boot=300, runs=5)
    assert not by_seeds["enough"].any() and by_seeds["seeds"].to_list() == [4, 8, 16, 32, 64]
    widths = by_seeds["half_width"].to_numpy()
    # a floor, the subjects' spread: 16× the seeds leave most of the width (cell noise alone: ¼)
    assert widths[-1] > 0.5 * widths[0] and widths[-1] > 3 * 0.01
    by_subjects = plan(cube, target=0.03, grow="subjects", limit=1000, n_boot=300, runs=5)
    assert by_subjects["enough"][-1] and by_subjects["subjects"][-1] > 5
    with pytest.raises(WigError, match="grow: one of"):
        plan(cube, grow="images")
    with pytest.raises(WigError, match="full LoRA seed"):
        components(np.where(np.arange(4) < 3, cube, np.nan))


def test_the_paired_cube_is_the_paired_tables_difference():
    from conftest import point_row

    rows = []
    rng = np.random.default_rng(2)
    for concept in ("a", "b"):
        for fseed in (0, 1):
            for prompt in range(3):
                for seed in (0, 1):
                    base = rng.random()
                    for method, omega, shift in (("cfg", 1.0, 0.0), ("pg", 0.0, 0.1)):
                        rows.append(
                            {
                                "concept": concept,
                                "finetune_seed": fseed,
                                "prompt_index": prompt,
                                "seed": seed,
                                **point_row(method, omega=omega, scale=4.5),
                                "protocol": "oracle",
                                "oracle_subject": base + shift + (0.01 * seed if method == "pg" else 0.0),
                            }
                        )
    scores = pl.DataFrame(rows)
    cube = paired_cube(scores, "oracle_subject", {"method": "pg", "omega": 0.0, "scale": 4.5})
    assert cube.shape == (2, 2, 3, 2)
    assert np.allclose(cube[..., 0], 0.1) and np.allclose(cube[..., 1], 0.11)
    paired = paired_vs_cfg(scores, n_boot=200).row(0, named=True)
    assert paired["d_oracle_subject"] == pytest.approx(cube.mean())
    with pytest.raises(WigError, match="0 grid points match"):
        paired_cube(scores, "oracle_subject", {"method": "pg", "omega": 0.5})
    with pytest.raises(WigError, match="no grid point columns"):
        paired_cube(scores, "oracle_subject", {"method": "pg", "omeg": 0.0})


def test_stated_components_project_as_the_cube_they_came_from():
    """A run is sized from the components an earlier report kept (its scores long gone): the same
    numbers give the same projection as the cube they were fitted from, and bad ones are refused."""
    sd = {"subjects": 0.05, "finetune_seeds": 0.02, "prompts": 0.04, "seeds": 0.01, "noise": 0.1}
    cube = _draw(np.random.default_rng(4), (5, 2, 6, 4), sd)
    counts = (20, 1, 6, 4)
    assert projected_half_width(components(cube), counts, runs=5) == projected_half_width(cube, counts, runs=5)
    with pytest.raises(WigError, match=r"missing \['noise'\]"):
        projected_half_width({k: v for k, v in components(cube).items() if k != "noise"}, counts)
    with pytest.raises(WigError, match="negative"):
        projected_half_width(components(cube) | {"prompts": -1.0}, counts)
