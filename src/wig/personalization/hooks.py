"""What the per-sample weight contexts share (`wig.personalization.lora.LoraScales`,
`custom_diffusion.DeltaScales` (classdiffusion), `wig.personalization.full_weights.WeightSets`):
forward hooks that scale a module's output
per sample, registered while the context is open and removed when it closes."""

from __future__ import annotations

from typing import Callable, Iterable

import torch


def per_sample(vec: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``vec`` (one coefficient per sample) shaped to broadcast over ``out``'s batch dimension."""
    if out.shape[0] != vec.shape[0]:
        raise RuntimeError(f"scale vector has {vec.shape[0]} entries, batch has {out.shape[0]}")
    return vec.to(out.dtype).view(-1, *([1] * (out.dim() - 1)))


class SampleScales:
    """A context manager holding forward hooks (`_hooks`: (module, hook) pairs) while open; ``set``
    (in subclasses) fixes the per-sample coefficients the hooks read, and `predict` runs the
    denoiser on a batch whose samples carry those coefficients (here: one batched forward of the
    pipeline's own denoiser, the hooks doing the rest)."""

    def __init__(self):
        self._scales: dict = {}
        self._handles: list = []

    def _hooks(self) -> Iterable[tuple[torch.nn.Module, Callable]]:
        raise NotImplementedError

    def __enter__(self):
        for module, hook in self._hooks():
            self._handles.append(module.register_forward_hook(hook))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._scales = {}
        return False

    def predict(self, family, pipe, x: torch.Tensor, t, text) -> torch.Tensor:
        """The denoiser's prediction for the batch ``x`` (`wig.models.families.Family.predict`)."""
        return family.predict(pipe, x, t, text)


class NoScales(SampleScales):
    """A module the checkpoints do not change (``has_effect`` False): `set` is a no-op."""

    has_effect = False

    def set(self, scales) -> None:
        pass

    def _hooks(self):
        return []
