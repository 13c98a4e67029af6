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

from wig.guidance import Guidance
from wig.models.families import FAMILIES
from wig.models.pipelines import load_pipeline
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
    size: int  # the twin's native size (its denoiser's sample size × the autoencoder's stride)
    steps: int
    scale: float  # the family's default CFG λ: its stock pipeline's
    weights: str  # the denoiser's file in the pipeline folder
    stock_kwargs: dict = field(default_factory=dict)
    stock_call: dict = field(default_factory=dict)


# every registered family that samples from text alone (an image-edit family's stock call differs:
# test_ip2p.py), shipped or plugged in: a new family is tested without a new test
TEXT_FAMILIES = sorted(n for n, f in FAMILIES.items() if not f.image_input)
# the session's twins and LoRAs of the shipped families (conftest.py), built once for every file
SESSION = {
    "sd": ("tiny_sd", "lora_path"),
    "sana": ("tiny_sana", "sana_lora_path"),
    "sdxl": ("tiny_sdxl", "sdxl_lora_path"),
}


@pytest.fixture(scope="module", params=TEXT_FAMILIES)
def case(request, tmp_path_factory):
    import inspect
    import json

    from diffusers import DiffusionPipeline

    from wig.models.families import build_tiny
    from wig.personalization.lora import random_lora

    name, family = request.param, FAMILIES[request.param]
    if name in SESSION:
        twin, lora = (request.getfixturevalue(f) for f in SESSION[name])
    else:  # a plug-in's family: its own twin and a random LoRA of it
        twin = tmp_path_factory.mktemp(f"tiny-{name}")
        build_tiny(name, twin)
        lora = random_lora(
            load_pipeline(str(twin), device="cpu", dtype="float32"), tmp_path_factory.mktemp("lora"), std=0.3, seed=1
        )
    pipe = load_pipeline(str(twin), device="cpu", dtype="float32")
    stock = DiffusionPipeline.load_config(str(twin))["_class_name"]
    stock = getattr(__import__("diffusers", fromlist=[stock]), stock)
    index = json.loads((Path(twin) / "model_index.json").read_text())
    return Case(
        name,
        Path(twin),
        Path(lora),
        lambda out: build_tiny(name, out),
        stock,
        family.denoiser(pipe).config.sample_size * pipe.vae_scale_factor,
        4,
        float(inspect.signature(stock.__call__).parameters["guidance_scale"].default),
        f"{family.component}/diffusion_pytorch_model.safetensors",
        {"safety_checker": None} if "safety_checker" in index else {},
        dict(family.stock_call),
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
    extra = case.stock_call  # what the family passes the stock call (SANA: no resolution binning)
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


def test_the_family_registry_is_what_the_loader_the_twins_the_schema_the_cli_and_the_study_read(
    tiny_sd, tiny_sana, tiny_sdxl
):
    from wig.cli import build_parser
    from wig.models.families import FAMILIES, default_config, family_of, tiny_kinds
    from wig.workflow import model
    from wig.workflow.config_schema import schema

    assert set(FAMILIES) >= {"sd", "sana", "ip2p", "sdxl"}
    assert (
        set(model.IMAGE_FAMILIES) == {n for n, f in FAMILIES.items() if f.image_input}
        and "ip2p" in model.IMAGE_FAMILIES
    )
    assert set(model.DDIM_FAMILIES) == {n for n, f in FAMILIES.items() if f.ddim} and "sd" in model.DDIM_FAMILIES
    for path, family in ((tiny_sd, "sd"), (tiny_sana, "sana"), (tiny_sdxl, "sdxl")):
        pipe = load_pipeline(str(path), device="cpu", dtype="float32")  # scheduler="auto": the family's sampler
        assert family_of(pipe).name == family
        assert (type(pipe.scheduler).__name__ == "DDIMScheduler") == FAMILIES[family].ddim
    kinds = tiny_kinds()
    assert {k: (kinds[k].config, kinds[k].family) for k in ("sd", "sana", "ip2p", "sdxl", "synthetic")} == {
        "sd": ("sd", "sd"),
        "sana": ("sana", "sana"),
        "ip2p": ("sd", "ip2p"),
        "sdxl": ("sdxl", "sdxl"),
        "synthetic": ("synthetic", "sd"),
    }
    assert default_config("ip2p") == default_config("sd") and {t.family for t in kinds.values()} <= set(FAMILIES)
    # the schema's enums and the CLI's choices are the registry's
    props = schema()["properties"]["models"]["additionalProperties"]["properties"]
    assert props["family"]["enum"] == sorted(FAMILIES) and props["tiny"]["enum"] == sorted(kinds)
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["build-tiny"]
    (family,) = [a for a in sub._actions if a.dest == "family"]
    assert sorted(family.choices) == sorted(k for k, t in kinds.items() if not t.pretrained)


def test_a_lora_training_step_runs_and_writes_both_checkpoints(case, tmp_path):
    from wig.concepts import read_images
    from wig.personalization import Subject
    from wig.personalization import make as make_method

    images = read_images(Path(__file__).resolve().parents[1] / "resources/datasets/demo/images/brown_dog")[:2]
    method = make_method("db-lora", steps=2, weak_step=1, rank=2, resolution=case.size, prior_weight=0.0)
    pipe = load_pipeline(str(case.twin), device="cpu", dtype="float32")
    log = method.train(pipe, Subject(images, "a photo of sks dog"), tmp_path / "run", seed=0, progress=False)
    assert len(log) == 2 and np.isfinite(log["loss"].to_numpy()).all()
    assert all(p.is_file() for p in method.checkpoint_files(tmp_path / "run").values())
