"""Classifier-free guidance (Ho & Salimans 2022) with the fine-tuned model in both branches:
(θ', ∅) (θ', c) → e_u + λ(e_c − e_u). The baseline every other method is compared with."""

from __future__ import annotations

from dataclasses import dataclass

from wig.branches import FULL
from wig.guidance.base import NEGATIVE, PROMPT, Branch, GuidanceMethod, canonical, param, register
from wig.guidance.methods.none import NoGuidance


def cfg_combine(e_u, e_c, scale: float):
    """e_u + λ(e_c − e_u); the weights sum to one, so it holds for ε, v and x0 predictions."""
    return e_u + scale * (e_c - e_u)


@register
@dataclass(frozen=True)
class CFG(GuidanceMethod):
    name = "cfg"
    cfg_scale = True
    baseline = True
    reference_line = "--"
    reduces_to = (({"scale": 1.0}, NoGuidance),)  # λ = 1: the conditional prediction
    scale: float = param(7.5, "guidance scale λ")

    def branches(self):
        return [Branch(NEGATIVE, {FULL: 1.0}), Branch(PROMPT, {FULL: 1.0})]

    def combine(self, outs, step=0, time=None):
        guided = cfg_combine(outs[0], outs[1], self.scale)
        return guided, guided

    @property
    def point_name(self) -> str:
        return f"w1.0_l{canonical(self.scale)}"  # ω = 1: what PG at ω = 1 is, bit for bit
