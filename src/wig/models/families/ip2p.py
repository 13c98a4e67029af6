"""InstructPix2Pix (``StableDiffusionInstructPix2PixPipeline``): SD's UNet with 8 input
channels, reading the latents of the image it edits beside the noisy ones. Its twin: ``ip2p``."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from wig.lazy import lazy_module
from wig.models.base import Text, register_family
from wig.models.families.sd import SD

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")


@register_family
class IP2P(SD):
    """InstructPix2Pix (Brooks et al. 2023): an SD UNet with 8 input channels, the noisy latents
    followed by the latents of the image to edit (the VAE posterior's mode, unscaled, as
    ``StableDiffusionInstructPix2PixPipeline`` encodes it); a branch without the image gets zeros
    there. Sizes come from the input image."""

    name = "ip2p"
    summary = "InstructPix2Pix"
    image_input = True
    ddim = False  # the stock pipeline's scheduler (Euler ancestral)
    twins = {"ip2p": SD.twins[SD.name]}  # the SD twin's config, built with an 8-channel UNet
    pretrained_twins = frozenset()
    lora_format = "peft"  # no diffusers LoRA script trains it; PEFT's keys, which load_lora_weights reads

    @staticmethod
    def image_latents(pipe, images) -> torch.Tensor:
        """The stock pipeline's ``prepare_image_latents``: preprocess, encode, the posterior's mode."""
        with torch.no_grad():
            pixels = pipe.image_processor.preprocess(images).to(pipe.vae.device, pipe.text_encoder.dtype)
            return pipe.vae.encode(pixels).latent_dist.mode()

    @staticmethod
    def predict(pipe, x: torch.Tensor, t, text: Text, model: torch.nn.Module | None = None) -> torch.Tensor:
        model = pipe.unet if model is None else model
        x = torch.cat([x, text.image], dim=1)
        return model(x, t, encoder_hidden_states=text.embeds, return_dict=False)[0]

    @classmethod
    def matches(cls, pipe) -> bool:
        return type(pipe).__name__ == "StableDiffusionInstructPix2PixPipeline"

    @staticmethod
    def build_tiny(out, config: dict | None = None, seed: int | None = None):
        return build_tiny_ip2p(out, config, seed)


def build_tiny_ip2p(out: str | os.PathLike, config: dict | None = None, seed: int | None = None):
    """An InstructPix2Pix twin: the SD twin's config with an 8-channel UNet (noisy + image latents)
    and the Euler-ancestral scheduler timbrooks/instruct-pix2pix ships, as a diffusers folder."""
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from wig.models.tiny import clip_tokenizer, seeded

    config = config or IP2P.tiny_config()
    seed = config.get("seed", 0) if seed is None else seed
    with seeded(seed):
        unet = UNet2DConditionModel(**{**config["unet"], "in_channels": 8})
    with seeded(seed + 1):
        vae = AutoencoderKL(**config["vae"])
    with seeded(seed + 2):
        text_encoder = CLIPTextModel(CLIPTextConfig(**config["text_encoder"]))
    schedule = {k: config["scheduler"][k] for k in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps")}
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=EulerAncestralDiscreteScheduler(**schedule),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return pipe
