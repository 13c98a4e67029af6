"""SANA (``SanaPipeline``): a SanaTransformer2DModel on Gemma-2 states with their attention mask,
flow prediction (v = ε − x0), rectified-flow noising x_σ = (1 − σ)·x0 + σ·ε, an AutoencoderDC;
sampled with the checkpoint's multistep flow DPM-Solver. Its twin: ``sana``."""

from __future__ import annotations

import inspect
import os
from typing import TYPE_CHECKING

from wig.lazy import lazy_module
from wig.models.base import Family, Text, check_finite, register_family, warn_truncated

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")


@register_family
class Sana(Family):
    name = "sana"
    summary = "SANA style"
    twins = {"sana": "sana"}  # sampled with its multistep flow DPM-Solver (ddim False)
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
    def latent_dist(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DC-AE encodes deterministically: std 0."""
        with torch.no_grad():
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

    @classmethod
    def matches(cls, pipe) -> bool:
        return type(getattr(pipe, "transformer", None)).__name__ == "SanaTransformer2DModel"

    @staticmethod
    def build_tiny(out, config: dict | None = None, seed: int | None = None):
        return build_tiny_sana(out, config, seed)


def build_tiny_sana(out: str | os.PathLike, config: dict | None = None, seed: int | None = None):
    """Build the SANA-style twin with a fixed seed and write it as a diffusers pipeline folder."""
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    from wig.models.tiny import gemma_tokenizer, seeded, tuples

    config = config or Sana.tiny_config()
    seed = config.get("seed", 0) if seed is None else seed
    tokenizer = gemma_tokenizer()
    with seeded(seed):
        transformer = SanaTransformer2DModel(**config["transformer"])
    with seeded(seed + 1):
        vae = AutoencoderDC(**{k: tuples(v) for k, v in config["vae"].items()})
    with seeded(seed + 2):
        text_encoder = Gemma2Model(
            Gemma2Config(
                vocab_size=len(tokenizer),
                pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **config["text_encoder"],
            )
        )
    scheduler = DPMSolverMultistepScheduler(**config["scheduler"])
    pipe = SanaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return pipe
