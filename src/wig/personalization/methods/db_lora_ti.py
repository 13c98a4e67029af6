"""DreamBooth-LoRA + textual inversion (``db-lora-ti``, pivotal tuning): the PG paper's second
personalization method, the recipe of diffusers'
``examples/advanced_diffusion_training/train_dreambooth_lora_sd15_advanced.py`` with
``--train_text_encoder_ti``. New tokens (``<s0><s1>``: the paper's two learnable embeddings)
replace the identifier in every prompt; their input embeddings train beside the denoiser's LoRA
for the first ``ti_fraction`` of the steps, then freeze (the script's pivot).

Each checkpoint folder (full, weak) holds the LoRA (``pytorch_lora_weights.safetensors``) and the
embeddings (``learned_embeds.safetensors``, `wig.personalization.tokens`); both load in stock
diffusers. θω is the LoRA at scale ω; the ∅ branch never contains the new tokens, so PG with TI
costs what PG costs. Choices and defaults: docs/methods.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from wig.branches import FULL, WEAK, BranchWeights
from wig.personalization.base import Subject, TrainingExtension, register
from wig.personalization.methods.db_lora import DreamBoothLoRA
from wig.settings import param


class Pivot(TrainingExtension):
    """Textual inversion beside the LoRA (pivotal tuning), as an extension of the shared loop:
    ``tokens`` are added and their input embeddings trained at ``lr`` (AdamW, ``weight_decay``)
    for the first ``steps`` steps, renormalised after each, then frozen
    (`wig.personalization.tokens.LearnedTokens`); each checkpoint's folder gets them as
    ``learned_embeds.safetensors``."""

    def __init__(self, tokens: Sequence[str], lr: float, steps: int, weight_decay: float = 1e-4):
        # weight_decay: the advanced DreamBooth script's adam_weight_decay
        self.tokens, self.lr, self.steps, self.weight_decay = list(tokens), lr, steps, weight_decay
        self.learned = None

    def enter(self, pipe, gen, stack):
        from wig.personalization.tokens import LearnedTokens

        self.learned = stack.enter_context(LearnedTokens(pipe, self.tokens, gen))

    def param_groups(self):
        return [{"params": [self.learned.rows], "lr": self.lr, "weight_decay": self.weight_decay}]

    def text_trains(self, step):
        return step <= self.steps

    def after_step(self, step):
        if step <= self.steps:
            self.learned.after_step()

    def save(self, folder):
        from wig.personalization.tokens import EMBEDDINGS_NAME

        self.learned.save(folder / EMBEDDINGS_NAME)


@register
@dataclass(frozen=True)
class DreamBoothLoRATI(DreamBoothLoRA):
    name = "db-lora-ti"
    batches_subjects = False  # its pivot (a training extension) trains one subject's tokens
    needs = "a text-to-image family with one CLIP text encoder (SD 1.5, 2.1; SANA's Gemma is untested)"

    @classmethod
    def supports(cls, family) -> bool:
        return family.clip_tokens and not family.image_input

    tokens: int = param(2, "new tokens per concept (<s0><s1>…), in place of the identifier", low=1)
    embedding_lr: float = param(3e-4, "AdamW learning rate of the new token embeddings", above=0.0)
    ti_fraction: float = param(0.5, "share of the steps the embeddings train before they freeze", low=0.0, high=1.0)

    def identifier(self, identifier: str) -> str:
        from wig.personalization.tokens import new_tokens

        return "".join(new_tokens(self.tokens))

    def train(self, pipe, subject: Subject, out, seed=0, progress=True, overwrite=False):
        from wig.personalization.tokens import new_tokens
        from wig.personalization.training import train_lora

        self.check_family(pipe)
        pivot = Pivot(new_tokens(self.tokens), self.embedding_lr, int(self.ti_fraction * self.steps))
        return train_lora(
            pipe, subject, out, self, seed=seed, progress=progress, overwrite=overwrite, extensions=[pivot]
        )

    def embeddings(self, out: str | os.PathLike) -> dict[str, Path]:
        """The token-embedding files of a run's full and weak checkpoint."""
        from wig.personalization.tokens import EMBEDDINGS_NAME

        return {name: Path(out) / name / EMBEDDINGS_NAME for name in (FULL, WEAK)}

    def attach(self, pipe, out, weak: bool = True) -> BranchWeights:
        """Both checkpoints' LoRAs as adapters, the new tokens in the tokenizer (the full
        checkpoint's rows in the table; a branch at the weak checkpoint encodes with its own)."""
        from wig.personalization.lora import attach_loras
        from wig.personalization.tokens import TokenBranchWeights, TokenError, add_tokens, read_embeddings

        self.check_family(pipe)
        files, embeddings = self.checkpoint_files(out), self.embeddings(out)
        # every file is checked before the pipeline changes
        tokens, full = read_embeddings(embeddings[FULL], pipe)
        rows = {FULL: full}
        if weak:
            weak_tokens, rows[WEAK] = read_embeddings(embeddings[WEAK], pipe)
            if weak_tokens != tokens:
                raise TokenError(f"{embeddings[WEAK]}: tokens {weak_tokens} differ from the full checkpoint's {tokens}")
        attach_loras(pipe, files[FULL], files[WEAK] if weak else None)
        ids = add_tokens(pipe, tokens, full)
        return TokenBranchWeights(ids, rows)
