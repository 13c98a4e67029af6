"""What differs between model families; everything else (guidance, LoRA scales, jobs) is shared.

A family says which module denoises, how a text becomes its condition, how one network
evaluation is called, how latents become images and how training noises a latent:

    sd    UNet2DConditionModel, CLIP text states, ε/v/x0 prediction, DDPM noising, AutoencoderKL
    sana  SanaTransformer2DModel, Gemma-2 states + attention mask, flow prediction (v = ε − x0),
          rectified-flow noising x_σ = (1 − σ)·x0 + σ·ε, AutoencoderDC
    ip2p  InstructPix2Pix: sd with the input image's latents beside the noisy ones (8 channels)

Each mirrors its stock diffusers pipeline operation for operation (``StableDiffusionPipeline``,
``SanaPipeline``, ``StableDiffusionInstructPix2PixPipeline``), which the tests check image for image.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Mapping

import torch

from wig.errors import WigError
from wig.models.facts import FAMILIES as FACTS

log = logging.getLogger("wig.models.families")


class NonFiniteError(WigError):
    """NaN or inf where an image or latent should be: a diverged sample is never a result."""

    def __init__(self, what: str, indices: list[int]):
        super().__init__(f"non-finite values (NaN/inf) in the {what} of image(s) {indices}")
        self.what, self.indices = what, indices


def check_finite(tensor: torch.Tensor, what: str) -> None:
    """Raise `NonFiniteError` naming the batch entries of ``tensor`` that hold NaN or inf."""
    bad = (~torch.isfinite(tensor)).flatten(1).any(1)
    if bool(bad.any()):
        raise NonFiniteError(what, [int(i) for i in torch.nonzero(bad).flatten()])


def warn_truncated(tokenizer, texts: list[str], limit: int, family: str) -> None:
    """Say so when the text encoder will see only the first ``limit`` tokens of a text (what stock
    diffusers warns about, and wig's CLI would otherwise hide)."""
    for text in texts:
        ids = tokenizer(text, truncation=False, add_special_tokens=True)["input_ids"]
        if len(ids) > limit:
            kept = tokenizer.decode(ids[:limit], skip_special_tokens=True)
            log.warning(
                "%s text encoder sees %d of the %d tokens of %r: only %r is used", family, limit, len(ids), text, kept
            )


@dataclass
class Text:
    """A batch of conditions: text hidden states and, for families that use them, their mask and
    the latents of an input image (InstructPix2Pix; zeros where a branch does not see the image)."""

    embeds: torch.Tensor
    mask: torch.Tensor | None = None
    image: torch.Tensor | None = None

    @staticmethod
    def cat(texts: list[Text]) -> Text:
        def cat(parts):
            return None if parts[0] is None else torch.cat(parts)

        return Text(cat([t.embeds for t in texts]), cat([t.mask for t in texts]), cat([t.image for t in texts]))

    def select(self, index: torch.Tensor) -> Text:
        """The conditions of the samples ``index``."""
        return Text(*(None if x is None else x[index] for x in (self.embeds, self.mask, self.image)))


class Family:
    name: str
    component: str  # the pipeline attribute holding the denoiser (and the LoRA)
    image_input: bool = False  # it conditions on an input image (`Request.images`): `wig.models.facts`
    lora_targets: tuple[str, ...]
    text_options: tuple[str, ...] = ()
    stock_call: dict = {}  # extra arguments for the stock pipeline call (class images)

    @classmethod
    def denoiser(cls, pipe) -> torch.nn.Module:
        return getattr(pipe, cls.component)

    @classmethod
    def size_step(cls, pipe) -> int:
        """Image sizes must be multiples of this: the autoencoder's stride times the denoiser's
        patch size (diffusers would otherwise round the size down without a word)."""
        return pipe.vae_scale_factor * (getattr(cls.denoiser(pipe).config, "patch_size", None) or 1)


class SD(Family):
    name = "sd"
    component = "unet"
    # diffusers' train_dreambooth_lora.py and the paper
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")

    @staticmethod
    def encode(pipe, texts: list[str], cond: bool = True, grad: bool = False, **options) -> Text:
        """As ``StableDiffusionPipeline.encode_prompt`` (no clip skip); ``cond`` plays no part.
        ``grad``: keep the graph (training learned token embeddings)."""
        with torch.set_grad_enabled(grad):
            return SD._encode(pipe, texts)

    @staticmethod
    def _encode(pipe, texts: list[str]) -> Text:
        warn_truncated(pipe.tokenizer, texts, pipe.tokenizer.model_max_length, "sd")
        tok = pipe.tokenizer(
            texts,
            padding="max_length",
            max_length=pipe.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        device = pipe.text_encoder.device
        use_mask = getattr(pipe.text_encoder.config, "use_attention_mask", False)
        mask = tok.attention_mask.to(device) if use_mask else None
        embeds = pipe.text_encoder(tok.input_ids.to(device), attention_mask=mask)[0]
        return Text(embeds.to(dtype=pipe.text_encoder.dtype, device=device))

    @staticmethod
    def latent_dtype(pipe, text: Text) -> torch.dtype:
        return text.embeds.dtype

    @staticmethod
    def predict(pipe, x: torch.Tensor, t, text: Text, model: torch.nn.Module | None = None) -> torch.Tensor:
        """One evaluation of ``model`` (default: the pipeline's UNet) as the stock pipeline calls it."""
        model = pipe.unet if model is None else model
        return model(x, t, encoder_hidden_states=text.embeds, return_dict=False)[0]

    @staticmethod
    def decode(pipe, latents: torch.Tensor, output_type: str = "pil"):
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
        check_finite(image, "decoded image")
        return pipe.image_processor.postprocess(image, output_type=output_type, do_denormalize=[True] * len(image))

    @staticmethod
    @torch.no_grad()
    def latent_dist(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of the VAE's posterior, unscaled."""
        dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
        return dist.mean.float(), dist.std.float()

    @staticmethod
    def noise_scheduler(pipe):
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(pipe.scheduler.config)

    @staticmethod
    def noised(scheduler, latents, noise, gen: torch.Generator):
        """Training input, timestep (uniform over the training steps, from ``gen``) and target."""
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=gen)
        t = t.to(latents.device)
        kind = scheduler.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = scheduler.get_velocity(latents, noise, t)
        elif kind == "sample":
            target = latents
        else:
            raise WigError(f"training supports epsilon, v_prediction and sample models, not {kind!r}")
        return scheduler.add_noise(latents, noise, t), t, target


class Sana(Family):
    name = "sana"
    component = "transformer"
    # diffusers' train_dreambooth_lora_sana.py default: self- and cross-attention q/k/v
    lora_targets = ("to_q", "to_k", "to_v")
    text_options = ("max_sequence_length", "complex_human_instruction")
    # at the size asked for: binning would snap 64 px to a 512-px bucket and resize back
    stock_call = {"use_resolution_binning": False}

    @staticmethod
    def default_options() -> dict:
        """``SanaPipeline.__call__``'s own defaults (300 tokens, its complex human instruction)."""
        from diffusers import SanaPipeline

        params = inspect.signature(SanaPipeline.__call__).parameters
        return {k: params[k].default for k in Sana.text_options}

    @staticmethod
    def encode(pipe, texts: list[str], cond: bool = True, grad: bool = False, **options) -> Text:
        """As ``SanaPipeline.encode_prompt``: the prompt after the complex human instruction (its
        first and last max_sequence_length − 1 states), the negative prompt without it.
        ``grad``: keep the graph (training learned token embeddings)."""
        with torch.set_grad_enabled(grad):
            return Sana._encode(pipe, texts, cond, **options)

    @staticmethod
    def _encode(pipe, texts: list[str], cond: bool, **options) -> Text:
        options = {**Sana.default_options(), **options}
        warn_truncated(pipe.tokenizer, texts, options["max_sequence_length"], "sana")
        if not cond:
            options["complex_human_instruction"] = None
        embeds, mask, _, _ = pipe.encode_prompt(
            texts, do_classifier_free_guidance=False, device=pipe.text_encoder.device, **options
        )
        return Text(embeds, mask)

    @staticmethod
    def latent_dtype(pipe, text: Text) -> torch.dtype:
        return torch.float32  # SanaPipeline keeps its latents in fp32 whatever the model dtype

    @staticmethod
    def predict(pipe, x: torch.Tensor, t, text: Text, model: torch.nn.Module | None = None) -> torch.Tensor:
        """One evaluation of ``model`` (default: the pipeline's transformer) as SanaPipeline calls it."""
        model = pipe.transformer if model is None else model
        timestep = t.expand(x.shape[0]) * model.config.timestep_scale
        out = model(
            x.to(model.dtype),
            encoder_hidden_states=text.embeds.to(model.dtype),
            encoder_attention_mask=text.mask,
            timestep=timestep,
            return_dict=False,
        )[0].float()
        if model.config.out_channels // 2 == model.config.in_channels:  # learned sigma: drop it
            out = out.chunk(2, dim=1)[0]
        return out

    @staticmethod
    def decode(pipe, latents: torch.Tensor, output_type: str = "pil"):
        image = pipe.vae.decode(latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor, return_dict=False)[0]
        check_finite(image, "decoded image")
        return pipe.image_processor.postprocess(image, output_type=output_type)

    @staticmethod
    @torch.no_grad()
    def latent_dist(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DC-AE encodes deterministically: std 0."""
        latent = vae.encode(pixels.to(vae.device, vae.dtype)).latent.float()
        return latent, torch.zeros_like(latent)

    @staticmethod
    def noise_scheduler(pipe):
        # as diffusers' SANA script: FlowMatchEuler from the checkpoint's scheduler config
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)

    @staticmethod
    def noised(scheduler, latents, noise, gen: torch.Generator):
        """x_σ = (1 − σ)·x0 + σ·ε at a uniformly drawn step of the training schedule (the SANA
        script's weighting "none"); target ε − x0; the transformer sees that step's timestep."""
        u = torch.rand(len(latents), generator=gen)
        i = (u * scheduler.config.num_train_timesteps).long()
        t = scheduler.timesteps[i].to(latents.device)
        sigma = scheduler.sigmas[i].to(latents.device, latents.dtype).view(-1, *[1] * (latents.dim() - 1))
        return (1.0 - sigma) * latents + sigma * noise, t, noise - latents


class IP2P(SD):
    """InstructPix2Pix (Brooks et al. 2023): an SD UNet with 8 input channels, the noisy latents
    followed by the latents of the image to edit (the VAE posterior's mode, unscaled, as
    ``StableDiffusionInstructPix2PixPipeline`` encodes it); a branch without the image gets zeros
    there. Sizes come from the input image."""

    name = "ip2p"
    image_input = FACTS["ip2p"].image_input

    @staticmethod
    @torch.no_grad()
    def image_latents(pipe, images) -> torch.Tensor:
        """The stock pipeline's ``prepare_image_latents``: preprocess, encode, the posterior's mode."""
        pixels = pipe.image_processor.preprocess(images).to(pipe.vae.device, pipe.text_encoder.dtype)
        return pipe.vae.encode(pixels).latent_dist.mode()

    @staticmethod
    def predict(pipe, x: torch.Tensor, t, text: Text, model: torch.nn.Module | None = None) -> torch.Tensor:
        model = pipe.unet if model is None else model
        x = torch.cat([x, text.image], dim=1)
        return model(x, t, encoder_hidden_states=text.embeds, return_dict=False)[0]


FAMILIES = {f.name: f for f in (SD, Sana, IP2P)}


def family_of(pipe) -> type[Family]:
    """The family of a loaded pipeline, from the module that denoises (and the pipeline's class
    where one module serves two: InstructPix2Pix's UNet)."""
    if type(pipe).__name__ == "StableDiffusionInstructPix2PixPipeline":
        return IP2P
    if hasattr(pipe, "unet"):
        return SD
    if type(getattr(pipe, "transformer", None)).__name__ == "SanaTransformer2DModel":
        return Sana
    raise WigError(f"unsupported pipeline {type(pipe).__name__}: wig knows {', '.join(FAMILIES)}")


def check_options(family, options: Mapping) -> None:
    unknown = sorted(set(options) - set(family.text_options))
    if unknown:
        allowed = ", ".join(family.text_options) or "none"
        raise WigError(f"text options {unknown} do not apply to family {family.name} (it takes: {allowed})")
