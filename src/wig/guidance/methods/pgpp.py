"""PG++: personalization guidance with CFG++'s re-noising — PG's branches, and the DDIM step
re-noises with the weak branch's unconditional prediction."""

from __future__ import annotations

from dataclasses import dataclass

from wig.guidance.base import register
from wig.guidance.methods.cfgpp import CFGpp
from wig.guidance.methods.pg import PG


@register
@dataclass(frozen=True)
class PGpp(PG):
    name = "pgpp"
    requires_ddim = True
    cfg_scale = False
    reduces_to = (({"omega": 1.0}, CFGpp),)

    def combine(self, outs, step=0, time=None):
        guided, _ = super().combine(outs, step, time)
        return guided, outs[0]
