"""ClassDiffusion (``classdiffusion``; Huang et al. 2024, official code Rbrq03/ClassDiffusion): Custom
Diffusion — the UNet's cross-attention key and value projections trained in full, plus one new
token ``<new1>`` — with the semantic preservation loss (SPL), 1 − cos between the pooled text
features of "a photo of a <new1> {class}" and "a photo of a {class}", which keeps the new concept
near its class in the text encoder's output space. The PG paper's third personalization method.

θω = θ + ω(θ' − θ) for the trained tensors is realised exactly, per sample: each trained layer
adds Σ_k s_k·ΔW_k x to its output (ΔW_k = W'_k − W, the full difference — no factorisation, so no
approximation), so all branches of a step still run in one batched forward
(`wig.personalization.methods.classdiffusion.custom_diffusion.DeltaBranchWeights`). Training and files:
`wig.personalization.methods.classdiffusion.custom_diffusion`; every choice: docs/methods.md. SD family only (the
paper's SD 1.5 and 2.1: `supports_custom_diffusion`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from wig.branches import FULL, WEAK, BranchWeights
from wig.errors import WigError
from wig.personalization.base import Subject, TrainedMethod, register
from wig.settings import param

NEEDS = "a UNet text-to-image family with one CLIP text encoder (Custom Diffusion's k/v and modifier token)"


def supports_custom_diffusion(family) -> bool:
    """Custom Diffusion's attention processors replace a UNet's cross-attention, and its modifier
    token is a row of one CLIP text encoder; an image-edit UNet is untested."""
    return family.component == "unet" and family.clip_tokens and not family.image_input


CUSTOM_DIFFUSION_WEIGHT_NAME = "pytorch_custom_diffusion_weights.safetensors"  # diffusers' Custom Diffusion file


@register
@dataclass(frozen=True)
class ClassDiffusion(TrainedMethod):
    name = "classdiffusion"
    needs = NEEDS

    @classmethod
    def supports(cls, family) -> bool:
        return supports_custom_diffusion(family)

    prior_weight: float = param(
        0.0, "fixed at 0: ClassDiffusion regularises with SPL, not class images", choices=(0.0,)
    )
    mixed_precision: str = param(
        "no", "fixed: trained tensors stay fp32 (a half-precision model's forward runs under autocast)", choices=("no",)
    )
    lr: float = param(1e-5, "AdamW learning rate per image; scaled by batch_size as their --scale_lr", above=0.0)
    batch_size: int = param(2, "instance images per step", low=1)
    spl_weight: float = param(1.0, "weight of the semantic preservation loss", low=0.0)
    modifier_token: str = param("<new1>", "the new token naming the subject")
    initializer_token: str = param("ktn", "the existing token whose embedding the new one starts from")
    hflip: bool = param(True, "random horizontal flips")
    rescale: bool = param(True, "Custom Diffusion's random rescale, the loss masked to the image")
    max_grad_norm: float = param(1.0, "gradient clipping norm", above=0.0)

    def identifier(self, identifier: str) -> str:
        return self.modifier_token

    def train(self, pipe, subject: Subject, out, seed=0, progress=True, overwrite=False):
        from wig.personalization.methods.classdiffusion.custom_diffusion import train_classdiffusion

        self.check_family(pipe)
        return train_classdiffusion(pipe, subject, out, self, seed=seed, progress=progress, overwrite=overwrite)

    def checkpoint_files(self, out: str | os.PathLike) -> dict[str, Path]:
        """``out/{full,weak}/pytorch_custom_diffusion_weights.safetensors`` (diffusers' Custom
        Diffusion names: the trained key/value projections)."""
        return {name: Path(out) / name / CUSTOM_DIFFUSION_WEIGHT_NAME for name in (FULL, WEAK)}

    def embeddings(self, out: str | os.PathLike) -> dict[str, Path]:
        """The new token's embedding per checkpoint (``learned_embeds.safetensors``)."""
        from wig.personalization.tokens import EMBEDDINGS_NAME

        return {name: Path(out) / name / EMBEDDINGS_NAME for name in (FULL, WEAK)}

    def attach(self, pipe, out, weak: bool = True) -> BranchWeights:
        from wig.personalization.methods.classdiffusion.custom_diffusion import attach_custom_diffusion

        self.check_family(pipe)
        names = (FULL, WEAK) if weak else (FULL,)
        files, embeddings = self.checkpoint_files(out), self.embeddings(out)
        return attach_custom_diffusion(pipe, {n: files[n] for n in names}, {n: embeddings[n] for n in names})

    def __post_init__(self):
        super().__post_init__()
        if not (self.modifier_token.startswith("<") and self.modifier_token.endswith(">")):
            raise WigError(
                f"modifier_token must look like <name> (a token no word splits into), got {self.modifier_token!r}"
            )
