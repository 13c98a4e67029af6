"""What every model family must do, checked once over a family fixture (SD, SANA, SDXL tiny twins):
seeded twins, our CFG equals the stock pipeline's, a LoRA changes the
image, PG at ω = 1 is CFG bit for bit. Family-specific checks stay in test_sampling.py (SD's
reference loops, CFG++), test_sana.py (Gemma, text options, flow training) and test_sdxl.py (size
ids, SDXL's reference loops, training)."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from diffusers import SanaPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from wig.guidance import Guidance
from wig.models.pipelines import load_pipeline
from wig.models.tiny import build_tiny_sana, build_tiny_sd, build_tiny_sdxl
from wig.personalization.lora import attach_loras
from wig.sampling.sampler import Request, decode, sample, sample_latents

from conftest import PROMPTS, generators, to_uint8
from test_tiny import _files

pytestmark = pytest.mark.check


@dataclass
class Case:
    name: str
    twin: Path
    lora: Path
    build: Callable
    stock: type
    size: int  # the twin's test size (SANA: its native 64 px, 16×16 latents)
    steps: int
    scale: float  # the family's default CFG λ
    weights: str  # the denoiser's file in the pipeline folder
    stock_kwargs: dict = field(default_factory=dict)


@pytest.fixture(scope="module", params=["sd", "sana", "sdxl"])
def case(request, tiny_sd, lora_path, tiny_sana, sana_lora_path, tiny_sdxl, sdxl_lora_path):
    if request.param == "sdxl":  # its Euler sampler, λ 5 (StableDiffusionXLPipeline's default)
        return Case(
            "sdxl",
            tiny_sdxl,
            sdxl_lora_path,
            build_tiny_sdxl,
            StableDiffusionXLPipeline,
            64,
            4,
            5.0,
            "unet/diffusion_pytorch_model.safetensors",
        )
    if request.param == "sd":
        return Case(
            "sd",
            tiny_sd,
            lora_path,
            build_tiny_sd,
            StableDiffusionPipeline,
            32,
            8,
            7.5,
            "unet/diffusion_pytorch_model.safetensors",
            {"safety_checker": None},
        )
    return Case(
        "sana",
        tiny_sana,
        sana_lora_path,
        build_tiny_sana,
        SanaPipeline,
        64,
        6,
        4.5,
        "transformer/diffusion_pytorch_model.safetensors",
    )


@pytest.fixture(scope="module")
def pipes(case):
    base = load_pipeline(str(case.twin), device="cpu", dtype="float32")
    tuned = load_pipeline(str(case.twin), device="cpu", dtype="float32")
    attach_loras(tuned, case.lora)
    return base, tuned


def _stock(case, lora=None):
    pipe = case.stock.from_pretrained(str(case.twin), **case.stock_kwargs)
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(str(lora))
    return pipe


def _latents(case, pipe, guidance):
    request = Request(prompts=PROMPTS, generators=generators(), steps=case.steps, height=case.size, width=case.size)
    return sample_latents(pipe, guidance, request, progress=False)


def test_same_seed_gives_byte_identical_files(case, tmp_path):
    case.build(tmp_path / "again")
    first, again = _files(case.twin), _files(tmp_path / "again")
    assert first.keys() == again.keys() and case.weights in first
    assert all(first[k] == again[k] for k in first)


@pytest.mark.parametrize("with_lora", [False, True], ids=["base", "lora"])
def test_cfg_equals_stock_pipeline(case, pipes, with_lora):
    pipe = pipes[1] if with_lora else pipes[0]
    ours = sample(
        pipe,
        PROMPTS,
        Guidance("cfg", case.scale),
        generators(),
        steps=case.steps,
        height=case.size,
        width=case.size,
        progress=False,
    )
    extra = {"use_resolution_binning": False} if case.name == "sana" else {}
    ref = _stock(case, case.lora if with_lora else None)(
        PROMPTS,
        guidance_scale=case.scale,
        num_inference_steps=case.steps,
        height=case.size,
        width=case.size,
        generator=generators(),
        **extra,
    ).images
    assert np.abs(to_uint8(ours) - to_uint8(ref)).max() <= 1


def test_lora_changes_the_image(case, pipes):
    base, tuned = (_latents(case, p, Guidance("cfg", case.scale)) for p in pipes)
    assert (base - tuned).abs().max() > 0.1
    images = [decode(p, x, "np") for p, x in zip(pipes, (base, tuned))]
    assert np.abs(images[0] - images[1]).mean() > 0.02  # mean pixel change > 2 % of the range


def test_pg_omega_one_equals_cfg_exactly(case, pipes):
    tuned = pipes[1]
    assert torch.equal(
        _latents(case, tuned, Guidance("pg", case.scale, omega=1.0)), _latents(case, tuned, Guidance("cfg", case.scale))
    )


def test_one_table_of_family_facts_is_what_the_families_the_loader_the_twins_and_the_study_read(
    tiny_sd, tiny_sana, tiny_sdxl
):
    from wig.models.facts import FAMILIES as FACTS
    from wig.models.facts import TINY
    from wig.models.families import FAMILIES, family_of
    from wig.models.tiny import default_config
    from wig.workflow import model

    assert set(FAMILIES) == set(FACTS) == {"sd", "sana", "ip2p", "sdxl"}
    assert {n: f.image_input for n, f in FAMILIES.items()} == {n: f.image_input for n, f in FACTS.items()}
    assert model.IMAGE_FAMILIES == ("ip2p",) and model.DDIM_FAMILIES == ("sd",)
    for path, family in ((tiny_sd, "sd"), (tiny_sana, "sana"), (tiny_sdxl, "sdxl")):
        pipe = load_pipeline(str(path), device="cpu", dtype="float32")  # scheduler="auto": the facts' sampler
        assert family_of(pipe).name == family
        assert (type(pipe.scheduler).__name__ == "DDIMScheduler") == FACTS[family].ddim
    assert {k: (t.config, t.family) for k, t in TINY.items()} == {
        "sd": ("sd", "sd"),
        "sana": ("sana", "sana"),
        "ip2p": ("sd", "ip2p"),
        "sdxl": ("sdxl", "sdxl"),
        "synthetic": ("synthetic", "sd"),
    }
    assert default_config("ip2p") == default_config("sd") and set(TINY) <= set(FACTS) | {"synthetic"}
