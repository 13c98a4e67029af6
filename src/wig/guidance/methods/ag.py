"""Autoguidance (Karras et al. 2024) on top of CFG, as the paper's Eq. 6:
(θ', ∅) (θ', c) (θ_weak, c) → e_u + λ(e_c − e_u) + (λ_ag − 1)(e_c − e_w). The weak model is the
pretrained one (LoRA off) or the weak (early) LoRA checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

from wig.branches import FULL, WEAK
from wig.guidance.base import NEGATIVE, PROMPT, Branch, GuidanceMethod, canonical, param, register
from wig.guidance.methods.cfg import CFG, cfg_combine


@register
@dataclass(frozen=True)
class AG(GuidanceMethod):
    name = "ag"
    cfg_scale = True
    reference_line = ":"
    reduces_to = (({"ag_scale": 1.0}, CFG),)
    scale: float = param(7.5, "guidance scale λ")
    ag_scale: float = param(2.0, "autoguidance scale λ_ag")
    weak: str = param(
        "pretrained",
        "the weak model: pretrained (LoRA off) or lora (the weak checkpoint)",
        choices=("pretrained", "lora"),
    )

    @property
    def requires_fine_tune(self) -> bool:  # against the pretrained model AG needs the LoRA it turns off
        return self.weak == "pretrained"

    def required_adapters(self) -> set[str]:
        return {FULL, WEAK} if self.weak == "lora" else {FULL}

    def branches(self):
        weak = {FULL: 0.0, WEAK: 1.0} if self.weak == "lora" else {FULL: 0.0}
        return [Branch(NEGATIVE, {FULL: 1.0}), Branch(PROMPT, {FULL: 1.0}), Branch(PROMPT, weak)]

    def combine(self, outs, step=0, time=None):
        e_u, e_c, e_w = outs
        guided = cfg_combine(e_u, e_c, self.scale) + (self.ag_scale - 1.0) * (e_c - e_w)
        return guided, guided

    @property
    def point_name(self) -> str:
        weak = "_weak" if self.weak == "lora" else ""
        return f"w1.0_l{canonical(self.scale)}_a{canonical(self.ag_scale)}{weak}"
