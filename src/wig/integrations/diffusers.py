"""Personalization guidance as a stock diffusers guider, for diffusers' modular pipelines.

diffusers' guiders (``diffusers.guiders``) split a denoising step into one batch per condition and
the modular pipelines call ``prepare_models(denoiser)`` → denoiser → ``cleanup_models(denoiser)``
around each batch in turn. PG needs exactly that: the conditional batch runs the fine-tuned
weights θ', the unconditional batch runs θω = θ + ω(θ' − θ), which for a LoRA is the LoRA at ω
times its scale — so `PersonalizationGuidance.prepare_models` multiplies the adapters' scalings
by ω before the unconditional batch and `cleanup_models` puts back the very values it found
(nothing is recomputed, so the next call is bit for bit what it was). ω = 1 is CFG; ω = 0 runs
the unconditional batch on the pretrained weights.

    from diffusers import ModularPipeline
    from wig.integrations.diffusers import PersonalizationGuidance

    pipe = ModularPipeline.from_pretrained("stabilityai/stable-diffusion-xl-base-1.0")
    pipe.load_components(torch_dtype=torch.float16)
    pipe.load_lora_weights("my-dreambooth-lora")
    pipe.update_components(guider=PersonalizationGuidance(guidance_scale=5.0, omega=0.0))
    image = pipe(prompt="a photo of sks dog in the snow", output="images")[0]

What the unconditional branch sees besides the weights: the pipeline's negative condition,
encoded before the loop by the text encoders as they are (a text-encoder LoRA is not scaled
here: the guider sees only the denoiser). SDXL's checkpoints say ``force_zeros_for_empty_prompt``,
so without a negative prompt that condition is zeros and ω reaches the branch through the UNet
alone — as in wig's own sampler.

Modular pipelines only: the classic pipelines (``StableDiffusionXLPipeline`` …) take no guider;
wig's sampler (`wig.sampling`) runs PG on those, all branches in one batched forward.
"""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.guiders.guider_utils import BaseGuidance, GuiderOutput, rescale_noise_cfg

from wig.personalization.lora import lora_layers

COND, UNCOND = "pred_cond", "pred_uncond"


class PersonalizationGuidance(BaseGuidance):
    """Personalization guidance (Park et al. 2025): ``pred = pred_uncond + λ (pred_cond − pred_uncond)``
    where the conditional prediction comes from the fine-tuned denoiser θ' and the unconditional one
    from θω = θ + ω(θ' − θ), the LoRA adapters at ω times their scale.

    Args:
        guidance_scale: λ.
        omega: ω; 1 is classifier-free guidance, 0 the pretrained weights in the unconditional branch.
        adapter_names: the LoRA adapters that make θ' (None: every adapter active in the denoiser).
        guidance_rescale: as `ClassifierFreeGuidance` (0: off).
        start, stop, enabled: as the stock guiders (outside [start, stop) only the conditional batch runs).
    """

    _input_predictions = [COND, UNCOND]

    @register_to_config
    def __init__(
        self,
        guidance_scale: float = 7.5,
        omega: float = 0.0,
        adapter_names: list[str] | None = None,
        guidance_rescale: float = 0.0,
        start: float = 0.0,
        stop: float = 1.0,
        enabled: bool = True,
    ):
        super().__init__(start, stop, enabled)
        if not math.isfinite(omega):
            raise ValueError(f"omega must be a finite number, got {omega}")
        self.guidance_scale = guidance_scale
        self.omega = omega
        self.adapter_names = None if adapter_names is None else list(adapter_names)
        self.guidance_rescale = guidance_rescale
        self._order: list[str] = []
        self._saved: list[tuple[object, str, float]] = []  # (layer, adapter, scaling) to put back

    # --- conditions ---------------------------------------------------------------------------

    def prepare_inputs(self, data) -> list:
        self._order = [COND, UNCOND][: self.num_conditions]
        return [self._prepare_batch(data, i, name) for i, name in enumerate(self._order)]

    def prepare_inputs_from_block_state(self, data, input_fields) -> list:
        self._order = [COND, UNCOND][: self.num_conditions]
        return [self._prepare_batch_from_block_state(input_fields, data, i, name) for i, name in enumerate(self._order)]

    # --- weights per condition ------------------------------------------------------------------

    def set_state(self, step: int, num_inference_steps: int, timestep: torch.LongTensor) -> None:
        self._restore()  # a step that raised between prepare and cleanup leaves nothing behind
        super().set_state(step, num_inference_steps, timestep)

    def prepare_models(self, denoiser: torch.nn.Module) -> None:
        super().prepare_models(denoiser)
        self._restore()
        batch = self._order[self._count_prepared - 1] if self._count_prepared <= len(self._order) else None
        if batch != UNCOND or self.omega == 1.0:
            return
        layers = list(lora_layers([denoiser]))
        active = {a for layer in layers for a in layer.active_adapters}
        names = active if self.adapter_names is None else set(self.adapter_names)
        if self.adapter_names is not None and not names <= active:
            missing = ", ".join(sorted(names - active))
            raise ValueError(f"PersonalizationGuidance: adapter(s) {missing} not active in the denoiser")
        if not names:
            raise ValueError("PersonalizationGuidance needs a LoRA in the denoiser (load_lora_weights): none is active")
        for layer in layers:
            for adapter in names & set(layer.active_adapters):
                if layer.use_dora.get(adapter, False):
                    raise ValueError(
                        f"PersonalizationGuidance: adapter {adapter} is DoRA, whose output is not linear in its scale"
                    )
                self._saved.append((layer, adapter, layer.scaling[adapter]))
                layer.scaling[adapter] = layer.scaling[adapter] * self.omega

    def cleanup_models(self, denoiser: torch.nn.Module) -> None:
        self._restore()

    def _restore(self) -> None:
        for layer, adapter, value in reversed(self._saved):
            layer.scaling[adapter] = value
        self._saved = []

    # --- combination ----------------------------------------------------------------------------

    def forward(self, pred_cond: torch.Tensor, pred_uncond: torch.Tensor | None = None) -> GuiderOutput:
        if not self._is_guided():
            pred = pred_cond
        else:
            pred = pred_uncond + self.guidance_scale * (pred_cond - pred_uncond)
        if self.guidance_rescale > 0.0:
            pred = rescale_noise_cfg(pred, pred_cond, self.guidance_rescale)
        return GuiderOutput(pred=pred, pred_cond=pred_cond, pred_uncond=pred_uncond)

    @property
    def is_conditional(self) -> bool:
        return self._count_prepared == 1

    @property
    def num_conditions(self) -> int:
        return 2 if self._is_guided() else 1

    def _is_guided(self) -> bool:
        """As `ClassifierFreeGuidance`: enabled, inside [start, stop) and λ ≠ 1."""
        if not self._enabled:
            return False
        if self._num_inference_steps is not None:
            first, last = int(self._start * self._num_inference_steps), int(self._stop * self._num_inference_steps)
            if not first <= self._step < last:
                return False
        return not math.isclose(self.guidance_scale, 1.0)
