"""Tiny random-init twins of the real models, built offline from configs.

A twin has the same classes and file layout as its real checkpoint, so it is saved with
`save_pretrained` and loaded back through the very `from_pretrained` path a real model uses.
"""

from __future__ import annotations

import gzip
import os
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch

from wig.errors import WigError
from wig.models.facts import TINY, shipped_config


def default_config(kind: str) -> dict:
    """The shipped config a tiny kind is built from (`wig.models.facts.TINY`)."""
    if kind not in TINY:
        raise WigError(f"unknown tiny model {kind!r}; choose from {', '.join(TINY)}")
    return shipped_config(TINY[kind].config)


@lru_cache(maxsize=1)
def _clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary and merges, rebuilt from the BPE file open_clip ships.

    Same construction as open_clip's SimpleTokenizer, hence the same 49408 ids as the
    tokenizer of every CLIP-based Stable Diffusion checkpoint.
    """
    import open_clip.tokenizer as oct

    bpe_path = Path(oct.__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(oct.bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """A CLIPTokenizer with CLIP's real vocabulary, built offline (``pad_token="!"``: SDXL's
    ``tokenizer_2``, which pads with "!" where the first pads with end-of-text)."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_bpe()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=77, pad_token=pad_token)


def build_tiny_sd(out: str | os.PathLike, config: dict | None = None, seed: int | None = None):
    """Build the SD-style twin with a fixed seed and write it as a diffusers pipeline folder.

    Same config and seed give byte-identical files.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    config = config or default_config("sd")
    seed = config.get("seed", 0) if seed is None else seed
    out = Path(out)
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

    config = config or default_config("ip2p")
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


def build_tiny_sdxl(out: str | os.PathLike, config: dict | None = None, seed: int | None = None):
    """Build the SDXL-style twin (`wig/configs/tiny_sdxl.json`) as a diffusers pipeline folder that
    stock ``StableDiffusionXLPipeline.from_pretrained`` (and the modular SDXL pipeline) load: two CLIP
    text encoders, the second with a projection whose pooled output and the six size/crop ids
    make the UNet's ``text_time`` embedding. No watermarker (``add_watermarker=False``)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = config or default_config("sdxl")
    seed = config.get("seed", 0) if seed is None else seed
    unet_config = config["unet"]
    expected = 6 * unet_config["addition_time_embed_dim"] + config["text_encoder_2"]["projection_dim"]
    if unet_config["projection_class_embeddings_input_dim"] != expected:
        raise WigError(
            f"tiny sdxl config: unet.projection_class_embeddings_input_dim must be 6 × addition_time_embed_dim "
            f"+ text_encoder_2.projection_dim = {expected}"
        )
    with seeded(seed):
        unet = UNet2DConditionModel(**{k: _tuples(v) for k, v in unet_config.items()})
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


def gemma_tokenizer():
    """A character-level GemmaTokenizer built offline: Gemma's own pipeline (spaces as "▁", BPE
    with byte fallback, <bos> first) over printable ASCII and the 256 byte tokens, so every
    prompt encodes, an identifier like "sks" included."""
    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    pieces = specials + [f"<0x{b:02X}>" for b in range(256)] + ["▁"] + [chr(c) for c in range(33, 127)]
    return GemmaTokenizer(vocab={p: i for i, p in enumerate(pieces)}, merges=[], add_bos_token=True)


def build_tiny_sana(out: str | os.PathLike, config: dict | None = None, seed: int | None = None):
    """Build the SANA-style twin with a fixed seed and write it as a diffusers pipeline folder."""
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    config = config or default_config("sana")
    seed = config.get("seed", 0) if seed is None else seed
    tokenizer = gemma_tokenizer()
    with seeded(seed):
        transformer = SanaTransformer2DModel(**config["transformer"])
    with seeded(seed + 1):
        vae = AutoencoderDC(**{k: _tuples(v) for k, v in config["vae"].items()})
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


def _tuples(value):
    # JSON lists → the tuples AutoencoderDC's config expects (nested for the qkv multiscales)
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


@contextmanager
def seeded(seed: int):
    """Module init under a fixed seed, leaving the caller's global generator untouched."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


BUILDERS = {"sd": build_tiny_sd, "sana": build_tiny_sana, "ip2p": build_tiny_ip2p, "sdxl": build_tiny_sdxl}
