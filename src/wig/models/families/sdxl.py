"""Stable Diffusion XL (``StableDiffusionXLPipeline``): SD's UNet conditioned on two CLIP text
encoders, a pooled text embedding and six size/crop ids (``text_time``); sampled with the
checkpoint's Euler. Its twin: ``sdxl`` (SD's layout with two text encoders and the size ids)."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING

from wig.errors import WigError
from wig.lazy import lazy_module
from wig.models.base import Text, check_finite, register_family, warn_truncated
from wig.models.families.sd import SD

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")


@register_family
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
    summary = "Stable Diffusion XL style"
    ddim = False  # the checkpoint's Euler, as its model card samples
    twins = {"sdxl": "sdxl"}
    pretrained_twins = frozenset()
    clip_tokens = False  # two text encoders
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
    def latent_dist(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior in fp32 (``train_dreambooth_lora_sdxl.py`` keeps the SDXL VAE in fp32: it
        overflows in fp16)."""
        with torch.no_grad():
            dtype = torch.float32 if vae.config.force_upcast else vae.dtype
            previous = vae.dtype
            vae.to(dtype=dtype)
            try:
                dist = vae.encode(pixels.to(vae.device, dtype)).latent_dist
                return dist.mean.float(), dist.std.float()
            finally:
                vae.to(dtype=previous)

    @classmethod
    def matches(cls, pipe) -> bool:
        return hasattr(pipe, "text_encoder_2") and hasattr(pipe, "unet")

    @staticmethod
    def build_tiny(out, config: dict | None = None, seed: int | None = None):
        return build_tiny_sdxl(out, config, seed)


def build_tiny_sdxl(out: str | os.PathLike, config: dict | None = None, seed: int | None = None):
    """Build the SDXL-style twin (`wig/configs/tiny_sdxl.json`) as a diffusers pipeline folder that
    stock ``StableDiffusionXLPipeline.from_pretrained`` (and the modular SDXL pipeline) load: two CLIP
    text encoders, the second with a projection whose pooled output and the six size/crop ids
    make the UNet's ``text_time`` embedding. No watermarker (``add_watermarker=False``)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from wig.models.tiny import clip_tokenizer, seeded, tuples

    config = config or SDXL.tiny_config()
    seed = config.get("seed", 0) if seed is None else seed
    unet_config = config["unet"]
    expected = 6 * unet_config["addition_time_embed_dim"] + config["text_encoder_2"]["projection_dim"]
    if unet_config["projection_class_embeddings_input_dim"] != expected:
        raise WigError(
            f"tiny sdxl config: unet.projection_class_embeddings_input_dim must be 6 × addition_time_embed_dim "
            f"+ text_encoder_2.projection_dim = {expected}"
        )
    with seeded(seed):
        unet = UNet2DConditionModel(**{k: tuples(v) for k, v in unet_config.items()})
    with seeded(seed + 1):
        vae = AutoencoderKL(**config["vae"])
    with seeded(seed + 2):
        text_encoder = CLIPTextModel(CLIPTextConfig(**config["text_encoder"]))
    with seeded(seed + 3):
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**config["text_encoder_2"]))
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(pad_token="!"),
        unet=unet,
        scheduler=EulerDiscreteScheduler(**config["scheduler"]),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return pipe
