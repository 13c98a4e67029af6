"""A fine-tune given, not trained (``given``): a model someone else fine-tuned from the study's base —
Diffusion-DPO's UNet, a style LoRA — guided like the study's own fine-tunes (the paper's §4.4).

``weights`` names it: for ``kind: denoiser`` a full fine-tune of the base's denoiser (a model
folder such as DPO's published ``unet/``, a pipeline folder, a ``.safetensors`` state dict, or a
hub name the workflow resolves on the submit host); θω = θ + ω(θ' − θ) for every tensor
(`wig.personalization.full_weights`), or with ``low_rank: r`` a rank-r SVD of each layer's
difference, its error printed per layer and refused above ``low_rank_tolerance``
(`wig.personalization.low_rank`). For ``kind: lora`` a diffusers-format LoRA file; θω is the
LoRA at scale ω. For ``kind: base`` the study's model *is* the fine-tune (InstructPix2Pix, tuned
from SD 1.5) and ``weights`` names the pretrained model it was tuned from: its denoiser becomes θ,
``conv_in`` zero-padded to the fine-tune's input channels (`wig.personalization.full_weights.attach_base`).
A given fine-tune has no weak (early) checkpoint, so AG runs only against the pretrained model, and
it learns no token: its prompts name no subject.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from wig.branches import BranchWeights
from wig.errors import WigError
from wig.personalization.base import PersonalizationMethod, register
from wig.settings import param

KINDS = ("denoiser", "lora", "base")


@register
@dataclass(frozen=True)
class Given(PersonalizationMethod):
    name = "given"
    weights: str = param(
        "",
        "the fine-tune: a denoiser (model or pipeline folder, .safetensors, hub name) or a LoRA; for base, θ's model",
    )
    kind: str = param(
        "denoiser",
        "what weights holds: a full fine-tune of the denoiser, a LoRA, or (base) the pretrained model the study's "
        "model — itself the fine-tune, e.g. InstructPix2Pix — was tuned from",
        choices=KINDS,
    )
    low_rank: int = param(
        0, "denoiser: 0 = exact full weights; r > 0 = a rank-r SVD of each layer's θ' − θ (one batched forward)", low=0
    )
    low_rank_tolerance: float = param(
        0.01, "largest relative error ‖Δ − Δ_r‖/‖Δ‖ of any layer low_rank may leave; above it is refused", above=0.0
    )

    def __post_init__(self):
        super().__post_init__()
        if not self.weights:
            raise WigError("given: weights must name the fine-tune (a folder, a file or a hub name)")
        if self.low_rank and self.kind != "denoiser":
            raise WigError("given: low_rank approximates a full fine-tune of the denoiser (kind: denoiser)")

    def identifier(self, identifier: str) -> str:
        return ""  # it learned no subject: prompts name the class alone ("a dog in the jungle")

    def check_files(self, path: str | os.PathLike, base: str | os.PathLike) -> None:
        """The fine-tune at ``path`` (where ``weights`` resolved) checked against the study's model at
        ``base`` (a local pipeline folder) from the files alone, so a broken one stops the workflow
        in its resolve rule, before any generation job: a full denoiser (for ``kind: base``, the
        pretrained model ``base`` was tuned from) must hold the model's tensors, shapes and
        floating dtypes, all finite (`wig.personalization.full_weights.check_finetune_files`); a
        LoRA's tensors must be finite floats (whether each fits its layer is checked when a
        generation job attaches it)."""
        from wig.models.families import FAMILIES
        from wig.readers import read_json

        index = read_json(Path(base) / "model_index.json", "pipeline index")
        components = [f.component for f in FAMILIES.values() if f.component in index]
        if not components:
            raise WigError(f"{base}: a pipeline without a denoiser wig knows ({', '.join(FAMILIES)})")
        if self.kind == "lora":
            from wig.personalization.lora import check_lora_file

            check_lora_file(path)
            return
        from wig.personalization.full_weights import check_finetune_files

        # kind base: the study's model is θ' and `path` θ, whose first convolution has fewer inputs
        check_finetune_files(base, path, components[0], pad=("conv_in.weight",) if self.kind == "base" else ())

    def attach(self, pipe, out: str | os.PathLike | None = None, weak: bool = False) -> BranchWeights:
        """Attach the fine-tune at ``out`` (where the workflow resolved ``weights``; default: ``weights``
        itself). ``weak`` is refused: a given fine-tune has no early checkpoint."""
        if weak:
            raise WigError(f"given fine-tune {self.weights}: there is no weak (early) checkpoint to attach")
        source = self.weights if out is None else out
        if self.kind == "lora":
            from wig.personalization.lora import LoraBranchWeights, attach_loras

            attach_loras(pipe, source)
            return LoraBranchWeights()
        if self.kind == "base":
            from wig.personalization.full_weights import attach_base

            return attach_base(pipe, source)
        if self.low_rank:
            from wig.personalization.low_rank import attach_low_rank

            return attach_low_rank(pipe, source, self.low_rank, self.low_rank_tolerance)
        from wig.personalization.full_weights import attach_full_weights

        return attach_full_weights(pipe, source)
