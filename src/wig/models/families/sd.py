"""Stable Diffusion 1.x/2.x (``StableDiffusionPipeline``): a UNet2DConditionModel on CLIP text
states, ε/v/x0 prediction, DDPM noising, an AutoencoderKL; sampled with DDIM as in the paper. Its
twins: ``sd`` (``wig/configs/tiny_sd.json``) and ``synthetic`` (the synthetic world's base, an SD
pipeline pretrained here from ``tiny_synthetic.json``: `wig.synthetic.pretrain`)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from wig.errors import WigError
from wig.lazy import lazy_module
from wig.models.base import Family, Text, check_finite, register_family, warn_truncated

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")


@register_family
class SD(Family):
    name = "sd"
    summary = "Stable Diffusion 1.x/2.x style"
    ddim = True
    default = True  # the paper's SD 1.5 / 2.1: a checkpoint entry without `family:`
    twins = {"sd": "sd", "synthetic": "synthetic"}
    pretrained_twins = frozenset({"synthetic"})
    clip_tokens = True
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
    def latent_dist(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of the VAE's posterior, unscaled."""
        with torch.no_grad():
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

    @classmethod
    def matches(cls, pipe) -> bool:
        return hasattr(pipe, "unet")

    @staticmethod
    def build_tiny(out, config: dict | None = None, seed: int | None = None):
        return build_tiny_sd(out, config, seed)


def build_tiny_sd(out: str | os.PathLike, config: dict | None = None, seed: int | None = None):
    """Build the SD-style twin with a fixed seed and write it as a diffusers pipeline folder.

    Same config and seed give byte-identical files.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from wig.models.tiny import clip_tokenizer, seeded

    config = config or SD.tiny_config()
    seed = config.get("seed", 0) if seed is None else seed
    with seeded(seed):
        unet = UNet2DConditionModel(**config["unet"])
    with seeded(seed + 1):
        vae = AutoencoderKL(**config["vae"])
    with seeded(seed + 2):
        text_encoder = CLIPTextModel(CLIPTextConfig(**config["text_encoder"]))
    scheduler = DDIMScheduler(**config["scheduler"])
    tokenizer = clip_tokenizer()
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return pipe
