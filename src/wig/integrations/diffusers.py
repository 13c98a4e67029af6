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

Real adapter setups: ω multiplies whatever scaling each layer of the named adapters has (default:
every active adapter), so a subject LoRA beside a style LoRA on other layers (``adapter_names`` the
subject's: the style runs at full strength in both branches), weights from ``set_adapters``, a
``cross_attention_kwargs`` scale, alpha ≠ rank and convolution LoRAs all compose. A disabled LoRA
(``disable_lora``) makes PG CFG on the pretrained model, said once in a warning; a fused one
(``fuse_lora``) is refused: merged weights ignore any scale, and unfusing for the user would change
their pipeline (and, in half precision, its weights). The scalings change only inside the
denoiser's forward for the unconditional batch (a forward pre-hook, and a hook torch calls even
when the forward raises), so an exception anywhere leaves the pipeline as it was for the next guider.

Text-encoder LoRAs: θω = θ + ω(θ' − θ) covers every weight, and wig's sampler encodes the null branch's
text with the text encoders' adapters at ω too. The guider sees the denoiser alone: the pipeline's
negative condition is encoded before the loop by the text encoders as they are (θ'). Where the
null condition is zeros — SDXL's checkpoints say ``force_zeros_for_empty_prompt``, so without a
negative prompt ω reaches the branch through the UNet alone — the two agree (tested within one
uint8 level); with a negative prompt or another family's encoded null prompt (SD 3), a
text-encoder LoRA's null branch is θ' here, θω in wig's sampler.

Modular pipelines only: the classic pipelines (``StableDiffusionXLPipeline`` …) take no guider;
wig's sampler (`wig.sampling`) runs PG on those, all branches in one batched forward.
"""

from __future__ import annotations

import math
import sys
import warnings
import weakref

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.guiders.guider_utils import BaseGuidance, GuiderOutput, rescale_noise_cfg

from wig.personalization.lora import lora_layers

COND, UNCOND = "pred_cond", "pred_uncond"


def _running(frame) -> bool:
    """Whether ``frame`` is on the current call stack (still running)."""
    current = sys._getframe(1)
    while current is not None:
        if current is frame:
            return True
        current = current.f_back
    return False


def _placement(config) -> tuple:
    """What decides the layers a peft adapter config occupies."""
    return tuple(getattr(config, k, None) for k in ("target_modules", "exclude_modules", "layers_to_transform", "r"))


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
        self._handles: list = []  # the armed denoiser's hooks (`prepare_models`)
        self._layer_cache = None  # (key, denoiser ref, its LoRA layers): `_layers`
        self._warned_disabled = False

    # --- conditions ---------------------------------------------------------------------------

    def prepare_inputs(self, data) -> list:
        self._order = [COND, UNCOND][: self.num_conditions]
        return [self._prepare_batch(data, i, name) for i, name in enumerate(self._order)]

    def prepare_inputs_from_block_state(self, data, input_fields) -> list:
        self._order = [COND, UNCOND][: self.num_conditions]
        return [self._prepare_batch_from_block_state(input_fields, data, i, name) for i, name in enumerate(self._order)]

    # --- weights per condition ------------------------------------------------------------------

    def set_state(self, step: int, num_inference_steps: int, timestep: torch.LongTensor) -> None:
        self._disarm()  # a batch prepared but never run leaves nothing behind
        super().set_state(step, num_inference_steps, timestep)

    def prepare_models(self, denoiser: torch.nn.Module) -> None:
        """Before the unconditional batch: arm the denoiser so that its next forward, and only that
        forward, runs the adapters at ω times their scaling. The scalings are written by a forward
        pre-hook and put back by a forward hook torch calls even when the forward raises (its
        ``finally``), so an exception anywhere leaves the pipeline as it was for whatever guider runs
        next; a batch prepared and never run is disarmed by `cleanup_models` or the next step."""
        super().prepare_models(denoiser)
        self._disarm()
        batch = self._order[self._count_prepared - 1] if self._count_prepared <= len(self._order) else None
        if batch != UNCOND or self.omega == 1.0:
            return
        targets = self._targets(denoiser)
        if not targets:
            return  # LoRA disabled: θ' is θ, PG is CFG on the base model (warned once)
        saved: list[tuple[object, str, float]] = []
        caller = sys._getframe(1)  # the pipeline step that prepared this batch (its frame, held until disarmed)

        def scale(module, args):
            if not _running(caller):  # prepared, then an exception before the forward: a later call's
                self._disarm()  # forward (another guider's, say) runs on the weights as they are
                return
            saved[:] = [(layer, adapter, layer.scaling[adapter]) for layer, adapter in targets]
            for layer, adapter, value in saved:
                layer.scaling[adapter] = value * self.omega

        def restore(module, args, out):
            for layer, adapter, value in reversed(saved):
                layer.scaling[adapter] = value
            saved.clear()
            self._disarm()

        self._handles = [
            denoiser.register_forward_pre_hook(scale),
            denoiser.register_forward_hook(restore, always_call=True),
        ]

    def cleanup_models(self, denoiser: torch.nn.Module) -> None:
        self._disarm()

    def _disarm(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _targets(self, denoiser: torch.nn.Module) -> list[tuple[object, str]]:
        """The (layer, adapter) pairs whose scaling ω multiplies: the named adapters (default: every
        active one) in every layer that holds them — adapters on different layers, a subset, weights
        from ``set_adapters`` all compose, since ω multiplies whatever scaling a layer has. Refused in
        one line: a named adapter not active, no LoRA, a DoRA adapter, a fused one."""
        layers = self._layers(denoiser)
        live = [layer for layer in layers if not layer.disable_adapters]
        active = {a for layer in live for a in layer.active_adapters if a in layer.scaling}
        names = active if self.adapter_names is None else set(self.adapter_names)
        if self.adapter_names is not None and not names <= active:
            missing = ", ".join(sorted(names - active))
            if layers and not live:
                missing += " (the LoRA is disabled: pipe.enable_lora())"
            raise ValueError(f"PersonalizationGuidance: adapter(s) {missing} not active in the denoiser")
        fused = sorted({a for layer in layers for a in layer.merged_adapters})
        if fused:
            raise ValueError(
                f"PersonalizationGuidance: adapter(s) {', '.join(fused)} are fused into the denoiser's weights "
                "(fuse_lora), where no scale reaches them: call pipe.unfuse_lora() before guiding with PG"
            )
        if layers and not live:
            if not self._warned_disabled:
                warnings.warn(
                    "PersonalizationGuidance: the LoRA is disabled (disable_lora), so both branches run the "
                    "pretrained weights and PG is CFG on the base model",
                    stacklevel=3,
                )
                self._warned_disabled = True
            return []
        if not names:
            raise ValueError("PersonalizationGuidance needs a LoRA in the denoiser (load_lora_weights): none is active")
        targets = []
        for layer in live:
            for adapter in sorted(names & set(layer.active_adapters) & set(layer.scaling)):
                if layer.use_dora.get(adapter, False):
                    raise ValueError(
                        f"PersonalizationGuidance: adapter {adapter} is DoRA, whose output is not linear in its scale"
                    )
                targets.append((layer, adapter))
        return targets

    def _layers(self, denoiser: torch.nn.Module) -> list:
        """The denoiser's LoRA layers, found once per denoiser and set of loaded adapters (walking
        a full SDXL UNet's 7,530 modules each step cost 35 ms on a CPU)."""
        configs = getattr(denoiser, "peft_config", None) or {}
        # which layers an adapter occupies follows from its config's targets: adapters deleted and
        # loaded again elsewhere, even under the same name, change the key
        key = (id(denoiser), tuple(sorted((name, repr(_placement(c))) for name, c in configs.items())))
        if self._layer_cache is None or self._layer_cache[0] != key or self._layer_cache[1]() is not denoiser:
            self._layer_cache = (key, weakref.ref(denoiser), list(lora_layers([denoiser])))
        return self._layer_cache[2]

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
