"""InstructPix2Pix's dual classifier-free guidance (Brooks et al. 2023), with personalization
guidance in its null-text branches (the PG paper's Fig. 8):

    (θ', c, I) (θω, ∅, I) (θω, ∅, ∅)  →  e_∅∅ + s_T(e_cI − e_∅I) + s_I(e_∅I − e_∅∅)

θ' is the InstructPix2Pix UNet, θ the pretrained model it was fine-tuned from (SD 1.5, its first
convolution zero-padded to the 8 input channels: `wig.personalization.full_weights.attach_base`),
I the latents of the image to edit. At ω = 1 it is ``StableDiffusionInstructPix2PixPipeline``'s
guidance, operation for operation, and needs no base. Which null-text branches run at θω is a
setting: both (default: PG's rule, every branch without the text condition is the weak one),
only (∅, I), or only (∅, ∅) — the paper does not say (docs/methods.md)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from wig.branches import FULL
from wig.guidance.base import NEGATIVE, PROMPT, Branch, GuidanceMethod, canonical, param, register


@register
@dataclass(frozen=True)
class IP2PCFG(GuidanceMethod):
    name = "ip2p-cfg"
    requires_image = True
    scale: float = param(7.5, "text guidance scale s_T")
    image_scale: float = param(1.5, "image guidance scale s_I")
    omega: float = param(1.0, "weight ω of the fine-tune in the null-text branches (1 = the stock dual CFG)", 0.0, 1.0)
    weak_branches: str = param(
        "both",
        "the null-text branches run at θω: both, image (∅, I) or uncond (∅, ∅)",
        choices=("both", "image", "uncond"),
    )

    @property
    def is_baseline(self) -> bool:  # ω = 1 is the stock dual guidance: what the other ω are compared with
        return self.omega == 1.0

    def reference(self):
        return replace(self, omega=1.0, weak_branches="both")

    @property
    def requires_fine_tune(self) -> bool:  # below ω = 1 the pretrained base must be attached
        return self.omega < 1.0

    def branches(self):
        image = self.omega if self.weak_branches in ("both", "image") else 1.0
        uncond = self.omega if self.weak_branches in ("both", "uncond") else 1.0
        return [
            Branch(PROMPT, {FULL: 1.0}),
            Branch(NEGATIVE, {FULL: image}),
            Branch(NEGATIVE, {FULL: uncond}, image=False),
        ]

    def combine(self, outs, step=0, time=None):
        e_text, e_image, e_uncond = outs
        guided = e_uncond + self.scale * (e_text - e_image) + self.image_scale * (e_image - e_uncond)
        return guided, guided

    @property
    def point_name(self) -> str:
        which = "" if self.weak_branches == "both" else f"_{self.weak_branches}"
        return f"w{canonical(self.omega)}_l{canonical(self.scale)}_i{canonical(self.image_scale)}{which}"
