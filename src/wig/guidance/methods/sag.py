"""Subject-agnostic guidance (SAG; Chan et al., "Improving Subject-Driven Image Synthesis with
Subject-Agnostic Guidance", CVPR 2024, §3 "dual classifier-free guidance"), used with CFG as the
PG paper does, and with PG's weak branch when ω < 1.

Branches (θω, ∅) (θ', c) (θ', c₀), where c₀ is the prompt with the subject's token(s) replaced by
its class noun ("a pencil sketch of a dog" for "a pencil sketch of a sks dog"; the concept text
``class_prompt``, `wig.concepts.TEXTS`). With the paper's w = λ − 1 and diffusion time t ∈ [0, 1]
(1 = pure noise):

    ē_t = (1 + w_t)·e_c − w_t·e_c₀,     w_t = r for t ≤ T,  −1 for t > T     (weak CFG)
    e   = e_u + λ·(ē_t − e_u)                                                (null CFG, = (1+w)ē_t − w·e_u)

Early steps (t > T) guide towards the subject-agnostic prompt alone (ē = e_c₀), which lays out
the image as the text asks; from T on the subject comes back (r = 0: ē = e_c, i.e. CFG; r > 0
extrapolates away from c₀; −1 ≤ r < 0 keeps part of c₀). The paper's defaults are T = 0.9,
r = 0. At ω = 1 the ∅ branch is CFG's; ω < 1 is PG's weak branch (PG + SAG). All three branches
share one batched forward. See docs/methods.md for the sources and how the PG paper's "SAG 1.0"
is read.
"""

from __future__ import annotations

from dataclasses import dataclass

from wig.branches import FULL
from wig.guidance.base import NEGATIVE, PROMPT, Branch, GuidanceMethod, canonical, param, register
from wig.guidance.methods.cfg import CFG, cfg_combine

CLASS_PROMPT = "class_prompt"  # the concept text c₀ (`wig.concepts.class_prompts`)


def sag_weight(time: float, subject_weight: float, subject_from: float) -> float:
    """w_t: −1 (the subject-agnostic prompt alone) while t > T, r from T on."""
    return -1.0 if time > subject_from else subject_weight


@register
@dataclass(frozen=True)
class SAG(GuidanceMethod):
    name = "sag"
    cfg_scale = True
    extra_texts = (CLASS_PROMPT,)
    reference_line = "-."
    # r = 0 from T = 1 on (every step): w_t = 0, the prompt's CFG
    reduces_to = (({"omega": 1.0, "subject_weight": 0.0, "subject_from": 1.0}, CFG),)
    scale: float = param(7.5, "guidance scale λ (the null CFG's 1 + w)")
    omega: float = param(1.0, "weight ω of the fine-tuned model in the weak branch (1 = cfg)", low=0.0, high=1.0)
    subject_weight: float = param(0.0, "SAG's r: the subject weight of the weak CFG from T on", low=-1.0)
    subject_from: float = param(
        0.9, "SAG's T: the diffusion time (1 = noise) below which the subject is guided towards", low=0.0, high=1.0
    )

    @property
    def requires_fine_tune(self) -> bool:  # PG + SAG moves the weak branch off the fine-tune
        return self.omega < 1.0

    def branches(self):
        return [Branch(NEGATIVE, {FULL: self.omega}), Branch(PROMPT, {FULL: 1.0}), Branch(CLASS_PROMPT, {FULL: 1.0})]

    def combine(self, outs, step=0, time=None):
        if time is None:
            raise ValueError("sag needs the step's diffusion time")
        e_u, e_c, e_0 = outs
        w_t = sag_weight(time, self.subject_weight, self.subject_from)
        weak = (1.0 + w_t) * e_c - w_t * e_0
        guided = cfg_combine(e_u, weak, self.scale)
        return guided, guided

    @property
    def point_name(self) -> str:
        return (
            f"w{canonical(self.omega)}_l{canonical(self.scale)}"
            f"_r{canonical(self.subject_weight)}_T{canonical(self.subject_from)}"
        )
