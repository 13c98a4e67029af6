"""Guidance as data: branches and combinations, checked against the formulas."""

import pytest
import torch

from wig.branches import FULL, WEAK
from wig.errors import WigError
from wig.guidance import NEGATIVE, PROMPT, REGISTRY, RESULT, Branch, Guidance, parameters

pytestmark = pytest.mark.check


def _outs(k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 4, 3, 3, generator=g) for _ in range(k)]


def test_branches_follow_the_table():
    assert Guidance("none").branches() == [Branch(PROMPT, {FULL: 1.0})]
    assert Guidance("cfg").branches() == [Branch(NEGATIVE, {FULL: 1.0}), Branch(PROMPT, {FULL: 1.0})]
    assert Guidance("pg", omega=0.3).branches() == [Branch(NEGATIVE, {FULL: 0.3}), Branch(PROMPT, {FULL: 1.0})]
    assert Guidance("pgpp", omega=0.0).branches() == [Branch(NEGATIVE, {FULL: 0.0}), Branch(PROMPT, {FULL: 1.0})]
    assert Guidance("ag").branches()[2] == Branch(PROMPT, {FULL: 0.0})
    assert Guidance("ag", weak="lora").branches()[2] == Branch(PROMPT, {FULL: 0.0, WEAK: 1.0})


def test_pg_at_omega_one_is_cfg():
    assert Guidance("pg", omega=1.0).branches() == Guidance("cfg").branches()
    assert Guidance("pgpp", omega=1.0).branches() == Guidance("cfgpp").branches()


@pytest.mark.parametrize("method", ["cfg", "pg", "cfgpp", "pgpp"])
def test_two_branch_combination(method):
    e_u, e_c = _outs(2)
    omega = {"omega": 0.5} if "omega" in parameters(REGISTRY[method]) else {}
    guided, renoise = Guidance(method, scale=5.0, **omega).combine([e_u, e_c])
    torch.testing.assert_close(guided, e_u + 5.0 * (e_c - e_u), rtol=0, atol=0)
    assert renoise is (e_u if method.endswith("pp") else guided)


def test_ag_combination():
    e_u, e_c, e_w = _outs(3)
    guided, renoise = Guidance("ag", scale=7.5, ag_scale=2.0).combine([e_u, e_c, e_w])
    expected = e_u + 7.5 * (e_c - e_u) + 1.0 * (e_c - e_w)
    torch.testing.assert_close(guided, expected, rtol=1e-6, atol=1e-6)
    assert renoise is guided


@pytest.mark.parametrize("time, w_t", [(0.95, -1.0), (0.9, 0.5), (0.3, 0.5)])
def test_sag_combination(time, w_t):
    # Chan et al. 2024's dual CFG: ē = (1 + w_t)e_c − w_t e_c₀ (w_t = −1 above T, r below), then
    # e_u + λ(ē − e_u); at t = T the subject is already back
    e_u, e_c, e_0 = _outs(3)
    g = Guidance("sag", scale=7.5, omega=0.3, subject_weight=0.5, subject_from=0.9)
    assert g.branches() == [
        Branch(NEGATIVE, {FULL: 0.3}),
        Branch(PROMPT, {FULL: 1.0}),
        Branch("class_prompt", {FULL: 1.0}),
    ]
    guided, renoise = g.combine([e_u, e_c, e_0], time=time)
    weak = (1 + w_t) * e_c - w_t * e_0
    torch.testing.assert_close(guided, e_u + 7.5 * (weak - e_u), rtol=1e-6, atol=1e-6)
    assert renoise is guided
    if w_t == -1.0:  # early: guided towards the subject-agnostic prompt alone
        torch.testing.assert_close(guided, e_u + 7.5 * (e_0 - e_u), rtol=0, atol=0)


def test_sag_at_r_zero_after_T_is_cfg():
    e_u, e_c, e_0 = _outs(3)
    sag, _ = Guidance("sag", scale=7.5).combine([e_u, e_c, e_0], time=0.5)
    cfg, _ = Guidance("cfg", scale=7.5).combine([e_u, e_c])
    torch.testing.assert_close(sag, cfg, rtol=0, atol=0)


def test_none_is_the_conditional_prediction():
    (e_c,) = _outs(1)
    guided, renoise = Guidance("none").combine([e_c])
    assert guided is e_c and renoise is e_c


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_combination_weights_sum_to_one(method):
    # a prediction shared by every branch passes through unchanged: the weights sum to 1,
    # which is why the same combination is valid for ε, v and x0 predictions
    settings = {"scale": 6.0, "ag_scale": 3.0, "omega": 0.2}
    g = Guidance(
        method, **{k: v for k, v in settings.items() if k in parameters(REGISTRY[method]) and method != "none"}
    )
    x = _outs(1, seed=3)[0]
    for time in (0.2, 0.95):  # both phases of a time-dependent method (sag)
        if g.companions:  # each trajectory's own branches (dreamblend)
            outs = {b.trajectory: [x] * sum(c.trajectory == b.trajectory for c in g.branches()) for b in g.branches()}
            guided_by_trajectory = g.combine_trajectories(outs, time=time)
            assert set(guided_by_trajectory) == {*g.companions, RESULT}
            for guided in guided_by_trajectory.values():
                torch.testing.assert_close(guided, x, rtol=1e-5, atol=1e-5)
            continue
        guided, _ = g.combine([x] * len(g.branches()), time=time)
        torch.testing.assert_close(guided, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"method": "foo"}, "unknown guidance method 'foo'"),
        ({"method": "pg", "omega": 1.5}, "omega must lie in [0, 1]"),
        ({"method": "pg", "omega": -0.1}, "omega must lie in [0, 1]"),
        ({"method": "pg", "omega": float("nan")}, "omega"),
        ({"method": "cfg", "scale": float("inf")}, "scale must be finite"),
        ({"method": "ag", "weak": "early"}, "weak must be"),
        ({"method": "cfg", "omega": 0.5}, "omega applies to dreamblend/ip2p-cfg/pg/pgpp/sag only, not cfg"),
        ({"method": "none", "scale": 9.0}, "scale must be 1.0"),
    ],
)
def test_bad_settings_are_refused(kwargs, key):
    with pytest.raises(WigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        Guidance(**kwargs)
