"""CFG++ (Chung et al. 2024, Alg. 1): CFG's branches and guided x̂0, but the DDIM step re-noises
with the unconditional prediction e_u (so it needs DDIM; its λ lives in [0, 1])."""

from __future__ import annotations

from dataclasses import dataclass

from wig.guidance.base import register
from wig.guidance.methods.cfg import CFG


@register
@dataclass(frozen=True)
class CFGpp(CFG):
    reduces_to = ()  # (λ = 1 is no `none`: it still re-noises with e_u)
    name = "cfgpp"
    requires_ddim = True
    cfg_scale = False
    baseline = False
    reference_line = None

    def combine(self, outs, step=0, time=None):
        guided, _ = super().combine(outs, step, time)
        return guided, outs[0]
