"""DreamBlend (Ram et al., "DreamBlend: Advancing Personalized Fine-tuning of Text-to-Image
Diffusion Models", arXiv 2411.19390): an underfit checkpoint's layout, an overfit checkpoint's
subject, joined by cross-attention guidance (CAG).

Two trajectories from the same initial noise, each CFG at λ:

    reference  (θ_u, ∅) (θ_u, c)      θ_u: the underfit checkpoint (the run's weak one, or step ``underfit``)
    result     (θω, ∅) (θ', c)        θ': the overfit checkpoint (the run's full one, or step ``overfit``);
                                      θω = θ + ω(θ' − θ): ω < 1 is PG's weak branch

While the diffusion time t ≥ ``until`` (the early, layout-forming steps) the result's latent x
takes one gradient step towards the reference's cross-attention maps before its forward, as
diffusers' pix2pix-zero does (maps of the reference stored per step, a step on the edit latent,
the prediction recomputed at the moved latent):

    x ← x − η · ∇ₓ Σ_layers Σ_{pixels, tokens ≥ 1} (Â_x − Â_ref)²,    Â = A / Σ_pixels A

A are the head-averaged cross-attention probabilities of the prompt branch (pixels × tokens,
`wig.models.attention`). The *regularisation* — our reading of the paper's "cross-attention
guidance regularisation" against its "catastrophic attention collapse", whose equations the
stored sources do not give (docs/methods.md lists the choices and their sources):

* every token's map is compared as a spatial distribution (Â: normalised over pixels): collapse
  moves where each token attends — onto the subject — and the loss measures that, not how much
  of a pixel's probability a token holds (which the overfit checkpoint legitimately changes);
* the start token is left out: it holds most of every pixel's probability, carries no layout,
  and would dominate the loss (Prompt-to-Prompt's observation);
* the loss is summed over samples, never averaged, so an image's update does not depend on how
  many share its batch.

η = 0 (``strength``) is plain CFG (PG) with the overfit checkpoint, bit for bit, and the reference
is plain CFG with the underfit one: each trajectory's forward is laid out as CFG's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from wig.branches import FULL, WEAK, step_adapter
from wig.guidance.base import NEGATIVE, PROMPT, Branch, GuidanceMethod, canonical, param, register
from wig.guidance.methods.cfg import CFG, cfg_combine

REFERENCE = "reference"  # the underfit checkpoint's trajectory
REFERENCE_PROMPT, RESULT_PROMPT = 1, 3  # the prompt branches' places in `DreamBlend.branches`


def cag_loss(maps: Mapping, reference: Mapping):
    """Σ over layers, samples, pixels and tokens ≥ 1 of the squared difference of the two
    trajectories' spatially normalised cross-attention maps (layer → (batch, pixels, tokens))."""
    total = 0.0
    for layer, a in maps.items():
        b = reference[layer]
        a, b = a[..., 1:], b[..., 1:]
        # a token masked out (a padding token SANA's mask hides) attends nowhere: its map stays 0
        a = a / a.sum(dim=1, keepdim=True).clamp_min(1e-30)
        b = b / b.sum(dim=1, keepdim=True).clamp_min(1e-30)
        total = total + ((a - b.detach()) ** 2).sum()
    return total


@register
@dataclass(frozen=True)
class DreamBlend(GuidanceMethod):
    name = "dreamblend"
    cfg_scale = True
    companions = (REFERENCE,)
    reduces_to = (({"omega": 1.0, "strength": 0.0}, CFG),)  # its result trajectory
    scale: float = param(7.5, "guidance scale λ of both trajectories")
    omega: float = param(1.0, "weight ω of the fine-tuned model in the result's ∅ branch (1 = cfg)", low=0.0, high=1.0)
    strength: float = param(0.0, "DreamBlend's CAG step size η on the result's latent (0 = cfg)", low=0.0)
    until: float = param(
        0.5, "DreamBlend: the diffusion time (1 = noise) down to which CAG steers the result", low=0.0, high=1.0
    )
    underfit: int = param(0, "DreamBlend's underfit checkpoint: a step the run kept (checkpoints), 0 = its weak", low=0)
    overfit: int = param(0, "DreamBlend's overfit checkpoint: a step the run kept (checkpoints), 0 = its full", low=0)

    @property
    def underfit_adapter(self) -> str:
        return step_adapter(self.underfit) if self.underfit else WEAK

    @property
    def overfit_adapter(self) -> str:
        return step_adapter(self.overfit) if self.overfit else FULL

    def required_adapters(self) -> set[str]:
        return {self.underfit_adapter, self.overfit_adapter}

    def branches(self):
        # the adapters a branch does not name are off (scale 0): each trajectory runs at θ + ΔW of its checkpoint
        under, over = self.underfit_adapter, self.overfit_adapter
        return [
            Branch(NEGATIVE, {under: 1.0}, trajectory=REFERENCE),
            Branch(PROMPT, {under: 1.0}, trajectory=REFERENCE),
            Branch(NEGATIVE, {over: self.omega}),
            Branch(PROMPT, {over: 1.0}),
        ]

    def combine(self, outs, step=0, time=None):
        raise NotImplementedError("dreamblend combines two trajectories: combine_trajectories")

    def combine_trajectories(self, outs, step=0, time=None):
        return {name: cfg_combine(e_u, e_c, self.scale) for name, (e_u, e_c) in outs.items()}

    def guides(self, step, time):
        return self.strength > 0 and time >= self.until

    def guide_latent(self, latent, companion_maps, maps_of, step, time):
        import torch

        reference = companion_maps[REFERENCE][REFERENCE_PROMPT]
        with torch.enable_grad():
            x = latent.detach().requires_grad_(True)
            loss = cag_loss(maps_of(x, RESULT_PROMPT), reference)
            (grad,) = torch.autograd.grad(loss, x)
        return (latent - self.strength * grad).detach()

    @property
    def point_name(self) -> str:
        steps = f"_c{self.underfit}-{self.overfit}" if self.underfit or self.overfit else ""
        guidance = f"e{canonical(self.strength)}_u{canonical(self.until)}"
        return f"w{canonical(self.omega)}_l{canonical(self.scale)}_{guidance}{steps}"
