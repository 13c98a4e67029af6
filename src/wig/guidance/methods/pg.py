"""Personalization guidance (Park et al. 2025): the weak branch at the interpolated weights
θω = ω·θ' + (1−ω)·θ — for a LoRA, the LoRA at scale ω — so (θω, ∅) (θ', c) → e_u + λ(e_c − e_u).
ω = 1 is CFG, bit for bit; its cost is CFG's."""

from __future__ import annotations

from dataclasses import dataclass

from wig.branches import FULL
from wig.guidance.base import NEGATIVE, PROMPT, Branch, GuidanceMethod, canonical, param, register
from wig.guidance.methods.cfg import CFG, cfg_combine


@register
@dataclass(frozen=True)
class PG(GuidanceMethod):
    name = "pg"
    requires_fine_tune = True
    cfg_scale = True
    reduces_to = (({"omega": 1.0}, CFG),)
    scale: float = param(7.5, "guidance scale λ")
    omega: float = param(1.0, "weight ω of the fine-tuned model in the weak branch (1 = cfg)", low=0.0, high=1.0)

    def branches(self):
        return [Branch(NEGATIVE, {FULL: self.omega}), Branch(PROMPT, {FULL: 1.0})]

    def combine(self, outs, step=0, time=None):
        guided = cfg_combine(outs[0], outs[1], self.scale)
        return guided, guided

    @property
    def point_name(self) -> str:
        return f"w{canonical(self.omega)}_l{canonical(self.scale)}"
