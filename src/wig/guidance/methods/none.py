"""No guidance: the fine-tuned model's conditional prediction alone, e_c."""

from __future__ import annotations

from dataclasses import dataclass

from wig.branches import FULL
from wig.guidance.base import PROMPT, Branch, GuidanceMethod, param, register


@register
@dataclass(frozen=True)
class NoGuidance(GuidanceMethod):
    name = "none"
    guided = False
    # e_c is CFG at λ = 1: e_u + 1·(e_c − e_u); fixed, so tables and paths read λ = 1
    scale: float = param(1.0, "fixed at 1: the conditional prediction alone", choices=(1.0,))

    def branches(self):
        return [Branch(PROMPT, {FULL: 1.0})]

    def combine(self, outs, step=0, time=None):
        return outs[0], outs[0]

    @property
    def point_name(self) -> str:
        return "w1.0_l1.0"  # as the grid has always spelled it: ω = 1, λ = 1
