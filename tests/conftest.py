"""Shared fixtures: one tiny SD and one tiny SANA twin and random LoRAs per test session (per xdist worker)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

# Small enough for 2 cores, large enough that every code path (cross-attention at two
# resolutions, VAE up/down sampling) runs: 32 px images, 16x16 latents.
H = W = 32
STEPS = 8
PROMPTS = ["a photo of sks dog", "a sks dog on the beach"]
SEEDS = [0, 7]


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    from wig.sampling.tiny import build_tiny_sd

    out = tmp_path_factory.mktemp("tiny-sd")
    build_tiny_sd(out)
    return out


@pytest.fixture(scope="session")
def tiny_sana(tmp_path_factory):
    from wig.sampling.tiny import build_tiny_sana

    out = tmp_path_factory.mktemp("tiny-sana")
    build_tiny_sana(out)
    return out


@pytest.fixture(scope="session")
def lora_path(tiny_sd, tmp_path_factory):
    """A random LoRA large enough to change the image (alpha = rank, so its scaling is 1)."""
    from wig.personalization.lora import random_lora
    from wig.sampling.pipelines import load_pipeline

    pipe = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    return random_lora(pipe, tmp_path_factory.mktemp("lora"), std=0.3, seed=1)


@pytest.fixture(scope="session")
def sana_lora_path(tiny_sana, tmp_path_factory):
    """A random LoRA of the SANA twin's transformer (alpha = rank)."""
    from wig.personalization.lora import random_lora
    from wig.sampling.pipelines import load_pipeline

    pipe = load_pipeline(str(tiny_sana), device="cpu", dtype="float32")
    return random_lora(pipe, tmp_path_factory.mktemp("sana-lora"), std=0.3, seed=1)


@pytest.fixture(scope="session")
def weak_lora_path(tiny_sd, tmp_path_factory):
    from wig.personalization.lora import random_lora
    from wig.sampling.pipelines import load_pipeline

    pipe = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    return random_lora(pipe, tmp_path_factory.mktemp("weak"), std=0.2, seed=2)


def generators(seeds=SEEDS):
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def to_uint8(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def point_row(method: str, **values) -> dict:
    """A grid point's manifest/score columns for hand-made tables: ``method``, every registered
    guidance parameter at the registry's default, then ``values`` (so a new plug-in's column never
    breaks a hand-made table)."""
    from wig.guidance import columns

    return {"method": method, **{name: f.default for name, f in columns().items()}, **values}
