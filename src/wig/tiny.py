"""Tiny random-init twins of the real models, built offline from configs.

A twin has the same classes and file layout as its real checkpoint, so it is saved with
`save_pretrained` and loaded back through the very `from_pretrained` path a real model uses.
"""

from __future__ import annotations

import gzip
import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch

from wig.errors import WigError

FAMILIES = ("sd",)


def default_config(family: str) -> dict:
    """The shipped config of a twin (``src/wig/configs/tiny_<family>.json``)."""
    if family not in FAMILIES:
        raise WigError(f"unknown model family {family!r}; choose from {', '.join(FAMILIES)}")
    text = resources.files("wig.configs").joinpath(f"tiny_{family}.json").read_text()
    return json.loads(text)


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


def clip_tokenizer():
    """A CLIPTokenizer with CLIP's real vocabulary, built offline."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_bpe()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=77)


def build_tiny_sd(out: str | os.PathLike, config: dict | None = None, seed: int | None = None):
    """Build the SD-style twin with a fixed seed and write it as a diffusers pipeline folder.

    Same config and seed give byte-identical files.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    config = config or default_config("sd")
    seed = config.get("seed", 0) if seed is None else seed
    out = Path(out)
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**config["unet"])
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**config["vae"])
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(CLIPTextConfig(**config["text_encoder"]))
    finally:
        torch.random.set_rng_state(gen_state)
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


BUILDERS = {"sd": build_tiny_sd}
