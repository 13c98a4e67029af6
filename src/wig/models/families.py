"""What differs between model families; everything else (guidance, LoRA scales, jobs) is shared.

A family says which module denoises, how a text becomes its condition, how one network
evaluation is called, how latents become images and how training noises a latent:

    sd    UNet2DConditionModel, CLIP text states, ε/v/x0 prediction, DDPM noising, AutoencoderKL
    sana  SanaTransformer2DModel, Gemma-2 states + attention mask, flow prediction (v = ε − x0),
          rectified-flow noising x_σ = (1 − σ)·x0 + σ·ε, AutoencoderDC
    ip2p  InstructPix2Pix: sd with the input image's latents beside the noisy ones (8 channels)
    sdxl  sd with two CLIP encoders, a pooled text embedding and size/crop ids (``text_time``)

Each mirrors its stock diffusers pipeline operation for operation (``StableDiffusionPipeline``,
``SanaPipeline``, ``StableDiffusionInstructPix2PixPipeline``, ``StableDiffusionXLPipeline``), which the
tests check image for image.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, fields, replace
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
    """A batch of conditions: text hidden states and, for families that use them, their mask, the
    latents of an input image (InstructPix2Pix; zeros where a branch does not see the image), the
    pooled text embedding and the size/crop ids (SDXL's ``text_time`` condition; ids None: the
    sampler's default, original = target size, no crop)."""

    embeds: torch.Tensor
    mask: torch.Tensor | None = None
    image: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    @staticmethod
    def cat(texts: list[Text]) -> Text:
        def cat(parts):
            return None if parts[0] is None else torch.cat(parts)

        return Text(*(cat([getattr(t, f.name) for t in texts]) for f in fields(Text)))

    def select(self, index: torch.Tensor) -> Text:
        """The conditions of the samples ``index``."""
        return Text(*(None if x is None else x[index] for x in (getattr(self, f.name) for f in fields(Text))))


class Family:
    name: str
    component: str  # the pipeline attribute holding the denoiser (and the LoRA)
    lora_format: str = "peft"  # how its training scripts save a LoRA: "diffusers" (lora.down/up) or "peft" (lora_A/B)
    image_input: bool = False  # it conditions on an input image (`Request.images`): `wig.models.facts`
    lora_targets: tuple[str, ...]
    text_options: tuple[str, ...] = ()
    stock_call: dict = {}  # extra arguments for the stock pipeline call (class images)

    @classmethod
    def denoiser(cls, pipe) -> torch.nn.Module:
        return getattr(pipe, cls.component)

    @classmethod
    def text_encoders(cls, pipe) -> list[torch.nn.Module]:
        """The modules that turn a text into its condition (a fine-tune may change them)."""
        return [pipe.text_encoder]

    @staticmethod
    def image_conditions(images, resolution: int) -> torch.Tensor | None:
        """Per-image conditions training feeds beside an image's latents (SDXL's size/crop ids for
        the images as `wig.personalization.training.pixel_tensor` crops them); None: none."""
        return None

    @staticmethod
    def with_image_conditions(text: Text, conditions: torch.Tensor | None) -> Text:
        """``text`` for a training batch whose images have ``conditions`` (`image_conditions`)."""
        return text

    @classmethod
    def size_step(cls, pipe) -> int:
        """Image sizes must be multiples of this: the autoencoder's stride times the denoiser's
        patch size (diffusers would otherwise round the size down without a word)."""
        return pipe.vae_scale_factor * (getattr(cls.denoiser(pipe).config, "patch_size", None) or 1)


class SD(Family):
    name = "sd"
    component = "unet"
    lora_format = "diffusers"  # train_dreambooth_lora.py converts to lora.down/up
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
    lora_format = "peft"  # no diffusers LoRA script trains it; PEFT's keys, which load_lora_weights reads

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


class SDXL(SD):
    """Stable Diffusion XL: a UNet conditioned on two CLIP text encoders' penultimate states side by
    side, the second's pooled projection and six size/crop ids (``text_time``), as
    ``StableDiffusionXLPipeline`` calls it. The negative branch's empty text is the zero condition
    (embeddings and pooled) where the checkpoint says ``force_zeros_for_empty_prompt`` — what the
    stock call without a negative prompt feeds; so PG's θω branch sees zeros there, and the
    fine-tune reaches that branch through the UNet's weights alone. Ids at sampling: original =
    target = the image size, no crop (the stock defaults); at training: the image's own size and
    crop (``train_dreambooth_lora_sdxl.py``)."""

    name = "sdxl"
    # train_dreambooth_lora_sdxl.py's UNet targets
    lora_targets = ("to_k", "to_q", "to_v", "to_out.0")

    @classmethod
    def text_encoders(cls, pipe) -> list[torch.nn.Module]:
        return [m for m in (pipe.text_encoder, pipe.text_encoder_2) if m is not None]

    @staticmethod
    def encode(pipe, texts: list[str], cond: bool = True, grad: bool = False, **options) -> Text:
        """As ``StableDiffusionXLPipeline.encode_prompt`` (no clip skip, ``prompt_2`` = the prompt).
        ``grad``: keep the graph."""
        device = pipe.text_encoder_2.device
        with torch.set_grad_enabled(grad):
            if not cond and pipe.config.force_zeros_for_empty_prompt and all(t == "" for t in texts):
                width = sum(m.config.hidden_size for m in SDXL.text_encoders(pipe))
                length = pipe.tokenizer_2.model_max_length
                dtype = pipe.text_encoder_2.dtype
                embeds = torch.zeros(len(texts), length, width, dtype=dtype, device=device)
                pooled = torch.zeros(len(texts), pipe.text_encoder_2.config.projection_dim, dtype=dtype, device=device)
                return Text(embeds, pooled=pooled)
            for tokenizer in (pipe.tokenizer, pipe.tokenizer_2):
                if tokenizer is not None:
                    warn_truncated(tokenizer, texts, tokenizer.model_max_length, "sdxl")
            embeds, _, pooled, _ = pipe.encode_prompt(texts, device=device, do_classifier_free_guidance=False)
            return Text(embeds, pooled=pooled)

    @staticmethod
    def time_ids(pipe, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The stock call's ids for latents ``x``: original size = target size = the image's, crop (0, 0)."""
        h, w = (side * pipe.vae_scale_factor for side in x.shape[-2:])
        return torch.tensor([[h, w, 0, 0, h, w]], dtype=dtype, device=x.device).repeat(len(x), 1)

    @staticmethod
    def predict(pipe, x: torch.Tensor, t, text: Text, model: torch.nn.Module | None = None) -> torch.Tensor:
        model = pipe.unet if model is None else model
        ids = SDXL.time_ids(pipe, x, text.embeds.dtype) if text.time_ids is None else text.time_ids
        added = {"text_embeds": text.pooled, "time_ids": ids.to(x.device)}
        return model(x, t, encoder_hidden_states=text.embeds, added_cond_kwargs=added, return_dict=False)[0]

    @staticmethod
    def image_conditions(images, resolution: int) -> torch.Tensor:
        """Per image: its original (height, width), the top-left corner of the centre crop after
        the shorter side is resized to ``resolution``, and the target (resolution, resolution) —
        the ids ``train_dreambooth_lora_sdxl.py`` computes (``--center_crop``)."""
        rows = []
        for image in images:
            h, w = image.height, image.width
            # torchvision's Resize(int): the shorter side to `resolution`, the longer truncated
            rh, rw = (resolution, int(resolution * w / h)) if h <= w else (int(resolution * h / w), resolution)
            top, left = int(round((rh - resolution) / 2.0)), int(round((rw - resolution) / 2.0))
            rows.append([h, w, top, left, resolution, resolution])
        return torch.tensor(rows, dtype=torch.float32)

    @staticmethod
    def with_image_conditions(text: Text, conditions: torch.Tensor | None) -> Text:
        return replace(text, time_ids=conditions.to(text.embeds.device, text.embeds.dtype))

    @staticmethod
    def decode(pipe, latents: torch.Tensor, output_type: str = "pil"):
        """As the stock pipeline: the VAE in fp32 where an fp16 one says ``force_upcast``, the
        latents' mean/std where the VAE has them, the watermark where the pipeline has one."""
        vae = pipe.vae
        upcast = vae.dtype == torch.float16 and vae.config.force_upcast
        if upcast:
            vae.to(dtype=torch.float32)
        try:
            latents = latents.to(next(iter(vae.post_quant_conv.parameters())).dtype)
            mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
            if mean is not None and std is not None:
                mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
                std = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
                latents = latents * std / vae.config.scaling_factor + mean
            else:
                latents = latents / vae.config.scaling_factor
            image = vae.decode(latents, return_dict=False)[0]
        finally:
            if upcast:
                vae.to(dtype=torch.float16)
        check_finite(image, "decoded image")
        if getattr(pipe, "watermark", None) is not None:
            image = pipe.watermark.apply_watermark(image)
        return pipe.image_processor.postprocess(image, output_type=output_type)

    @staticmethod
    @torch.no_grad()
    def latent_dist(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior in fp32 (``train_dreambooth_lora_sdxl.py`` keeps the SDXL VAE in fp32: it
        overflows in fp16)."""
        dtype = torch.float32 if vae.config.force_upcast else vae.dtype
        previous = vae.dtype
        vae.to(dtype=dtype)
        try:
            dist = vae.encode(pixels.to(vae.device, dtype)).latent_dist
            return dist.mean.float(), dist.std.float()
        finally:
            vae.to(dtype=previous)


FAMILIES = {f.name: f for f in (SD, Sana, IP2P, SDXL)}


def family_of(pipe) -> type[Family]:
    """The family of a loaded pipeline, from the module that denoises (and the pipeline's class
    where one module serves two: InstructPix2Pix's UNet)."""
    if type(pipe).__name__ == "StableDiffusionInstructPix2PixPipeline":
        return IP2P
    if hasattr(pipe, "text_encoder_2") and hasattr(pipe, "unet"):
        return SDXL
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
