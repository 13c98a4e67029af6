"""DreamBooth-LoRA (``db-lora``): a LoRA on the denoiser's attention projections, trained with the
DreamBooth loss and prior preservation — the paper's personalization method and the recipe of
diffusers' ``train_dreambooth_lora.py`` / ``train_dreambooth_lora_sana.py`` (training loop:
`wig.personalization.training.train_lora`). θω is the LoRA at scale ω."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from wig.branches import FULL, LORA_WEIGHT_NAME, WEAK, BranchWeights, step_adapter
from wig.errors import WigError
from wig.personalization.base import Subject, TrainedMethod, register
from wig.settings import param


@register
@dataclass(frozen=True)
class DreamBoothLoRA(TrainedMethod):
    name = "db-lora"
    default = True  # the paper's method: a config's fine-tune unless it names another
    batches_subjects = True
    rank: int = param(4, "LoRA rank (alpha = rank: scaling 1)", low=1)
    lr: float = param(1e-4, "AdamW learning rate (constant schedule)", above=0.0)
    max_grad_norm: float = param(1.0, "gradient clipping norm", above=0.0)

    def train(self, pipe, subject: Subject, out, seed=0, progress=True, overwrite=False):
        from wig.personalization.training import train_lora

        return train_lora(pipe, subject, out, self, seed=seed, progress=progress, overwrite=overwrite)

    def train_many(self, pipe, subjects, outs, seeds, progress=True, overwrite=False):
        if not self.batches_subjects:  # a subclass with a training extension (textual inversion)
            return super().train_many(pipe, subjects, outs, seeds, progress=progress, overwrite=overwrite)
        from wig.personalization.training import train_loras

        return train_loras(pipe, subjects, outs, self, seeds, progress=progress, overwrite=overwrite)

    def checkpoint_files(self, out: str | os.PathLike) -> dict[str, Path]:
        """``out/full/`` and ``out/weak/``, each a diffusers LoRA folder (``pytorch_lora_weights.safetensors``)."""
        return {name: Path(out) / name / LORA_WEIGHT_NAME for name in (FULL, WEAK)}

    def attach(self, pipe, out, weak: bool = True) -> BranchWeights:
        from wig.personalization.lora import LoraBranchWeights, attach_loras

        files = self.checkpoint_files(out)
        attach_loras(pipe, files[FULL], files[WEAK] if weak else None)
        return LoraBranchWeights()

    def attach_many(self, pipe, outs, weak: bool = True) -> BranchWeights:
        from wig.personalization.lora import attach_routed

        if not self.batches_subjects:  # a subclass whose fine-tune is more than the LoRA (textual inversion)
            return super().attach_many(pipe, outs, weak)
        files = [self.checkpoint_files(out) for out in outs]
        return attach_routed(pipe, [(f[FULL], f[WEAK] if weak else None) for f in files])

    def attach_steps(self, pipe, out, steps) -> None:
        from wig.personalization.lora import load_lora

        folders = self.checkpoint_steps(out)
        for k in steps:
            if k not in folders:
                raise WigError(f"{out}: the run kept no checkpoint at step {k} (checkpoints: {list(self.checkpoints)})")
            load_lora(pipe, folders[k] / LORA_WEIGHT_NAME, step_adapter(k))
