"""Guidance methods as data: the branches a step evaluates and how their outputs combine.

A *branch* is one network evaluation: which condition (the prompt or the empty/negative
prompt) and which weights, given as a scale per LoRA adapter. With a LoRA, θ' = θ + ΔW and the
weight interpolation θω = ω·θ' + (1−ω)·θ = θ + ω·ΔW is the LoRA at scale ω, so every branch of
every method is "base + Σ scale·ΔW" and all branches of a step run as one batched forward
(see `wig.lora.LoraScales`).

    none   (θ', c)                                  e_c
    cfg    (θ', ∅) (θ', c)                          e_u + λ(e_c − e_u)
    pg     (θω, ∅) (θ', c)                          e_u + λ(e_c − e_u)     (Park et al. 2025)
    ag     (θ', ∅) (θ', c) (θ_weak, c)              e_u + λ(e_c − e_u) + (λ_ag − 1)(e_c − e_w)
    cfgpp  as cfg; DDIM re-noises with e_u          (CFG++, Chung et al. 2024)
    pgpp   as pg;  DDIM re-noises with e_u

The combinations are linear and their weights sum to one, so they hold for any prediction
type (ε, v or x0) of the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

from wig.adapters import FULL, WEAK
from wig.errors import WigError

if TYPE_CHECKING:
    import torch


METHODS = ("none", "cfg", "pg", "ag", "cfgpp", "pgpp")
# per model family (`wig.families`), the methods its sampler cannot run: CFG++ re-noises a DDIM
# step, and SANA samples with a multistep flow DPM-Solver (no CFG++ form of it here)
UNSUPPORTED = {"sd": (), "sana": ("cfgpp", "pgpp")}


@dataclass(frozen=True)
class Branch:
    """One network evaluation per step."""

    cond: bool  # True: the prompt c; False: the negative/empty prompt ∅
    scales: Mapping[str, float] = field(default_factory=dict)  # LoRA adapter -> scale


@dataclass(frozen=True)
class Guidance:
    """A guidance method with its settings.

    ``weak`` is the weak model of AG: ``"pretrained"`` (LoRA off, the paper's Eq. 6) or
    ``"lora"`` (the weak LoRA checkpoint, adapter ``WEAK``).
    """

    method: str
    scale: float = 7.5  # λ
    omega: float = 1.0  # ω, used by pg/pgpp
    ag_scale: float = 2.0  # λ_ag, used by ag
    weak: str = "pretrained"

    def __post_init__(self):
        if self.method not in METHODS:
            raise WigError(f"unknown guidance method {self.method!r}; choose from {', '.join(METHODS)}")
        if not 0.0 <= self.omega <= 1.0 or math.isnan(self.omega):
            raise WigError(f"omega must lie in [0, 1], got {self.omega}")
        for name in ("scale", "ag_scale"):
            if not math.isfinite(getattr(self, name)):
                raise WigError(f"{name} must be finite, got {getattr(self, name)}")
        if self.weak not in ("pretrained", "lora"):
            raise WigError(f"weak must be 'pretrained' or 'lora', got {self.weak!r}")

    @property
    def renoise_with_uncond(self) -> bool:
        """CFG++-style methods re-noise the DDIM step with the unconditional prediction."""
        return self.method in ("cfgpp", "pgpp")

    @property
    def uses_lora(self) -> bool:
        """Whether the method only makes sense with a fine-tuned LoRA loaded."""
        return self.method in ("pg", "pgpp") or (self.method == "ag" and self.weak == "pretrained")

    def branches(self) -> list[Branch]:
        full = {FULL: 1.0}
        if self.method == "none":
            return [Branch(True, full)]
        if self.method in ("cfg", "cfgpp"):
            return [Branch(False, full), Branch(True, full)]
        if self.method in ("pg", "pgpp"):
            return [Branch(False, {FULL: self.omega}), Branch(True, full)]
        # ag
        weak = {FULL: 0.0, WEAK: 1.0} if self.weak == "lora" else {FULL: 0.0}
        return [Branch(False, full), Branch(True, full), Branch(True, weak)]

    def combine(self, outs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Branch outputs → (guided prediction, prediction the step re-noises with)."""
        if self.method == "none":
            return outs[0], outs[0]
        e_u, e_c = outs[0], outs[1]
        guided = e_u + self.scale * (e_c - e_u)
        if self.method == "ag":
            guided = guided + (self.ag_scale - 1.0) * (e_c - outs[2])
        return guided, (e_u if self.renoise_with_uncond else guided)
