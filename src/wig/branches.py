"""The branch-weights protocol: how guidance names each branch's weights, and what the sampler asks
of whatever attached a fine-tune to a pipeline.

A guidance branch names its weights as coefficients of attached checkpoints by the names below
(``{FULL: ω}`` runs at θ + ω(θ' − θ), ``{}`` at the pretrained θ); a personalization method's
``attach`` returns a `BranchWeights` that realises them; the sampler only talks to that. This
module imports nothing (torch only inside `scales_of`), so guidance, personalization and sampling
all stand on it without importing each other: a change to how guidance combines branches must
not look like a change to training (the rules' code hashes follow imports, ``wig.provenance``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import torch


FULL = "full"  # the fine-tuned checkpoint θ' (for a LoRA: its adapter name, θ' = θ + ΔW)
WEAK = "weak"  # the weak (early) checkpoint, AG's weak model
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # a diffusers LoRA folder's file
STEP_PREFIX = "step"  # the checkpoint a run kept at step k (its `checkpoints` setting): adapter and folder step<k>


def step_adapter(step: int) -> str:
    """The name of the checkpoint a run kept at ``step``: its folder in the run and its adapter."""
    return f"{STEP_PREFIX}{step}"


def adapter_step(name: str) -> int | None:
    """The step of a `step_adapter` name; None for FULL, WEAK or any other adapter."""
    digits = name.removeprefix(STEP_PREFIX)
    return int(digits) if name.startswith(STEP_PREFIX) and digits.isdigit() else None


class BranchWeights:
    """How a pipeline's attached checkpoints become each branch's weights in the sampler.

    ``scales`` maps a checkpoint name (FULL, WEAK) to a per-sample vector of coefficients s: sample
    i runs at θ + Σ_k s_ik (θ_k − θ). `text_encoder` and `denoiser` return context managers whose
    ``set(scales)`` fixes the coefficients of the next forwards (``has_effect``: whether the
    checkpoints change that module at all).
    """

    def attached(self, pipe) -> set[str]:
        """The checkpoint names attached to ``pipe``."""
        raise NotImplementedError

    def prepare(self, pipe) -> None:
        """Called once before sampling (e.g. activate every adapter at weight 1)."""

    def text_encoder(self, pipe):
        raise NotImplementedError

    def denoiser(self, pipe):
        raise NotImplementedError


def scales_of(branches: Sequence[Any], n: int, device) -> dict[str, torch.Tensor]:
    """Per-sample coefficient vectors, branch-major (the sampler's batch layout), for every
    checkpoint a branch names; a checkpoint a branch does not name is at 0 there."""
    import torch

    names = {name for b in branches for name in b.scales}
    return {
        name: torch.tensor([b.scales.get(name, 0.0) for b in branches for _ in range(n)], device=device)
        for name in names
    }
