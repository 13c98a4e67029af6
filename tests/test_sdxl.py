"""The sdxl family: wig's sampler against stock ``StableDiffusionXLPipeline`` and hand-written
loops, DreamBooth-LoRA training with SDXL's size/crop conditioning, on the tiny SDXL twin."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image

from wig.concepts import read_images
from wig.guidance import Guidance
from wig.models.families import family_of
from wig.models.families.sdxl import SDXL
from wig.models.pipelines import load_pipeline
from wig.personalization import Subject, make
from wig.personalization.lora import attach_loras
from wig.personalization.training import pixel_tensor
from wig.sampling.sampler import Request, sample, sample_latents

from conftest import ROOT, generators, sdxl_reference_loop, to_uint8, unet_with_lora_written_in, unet_without_lora

pytestmark = pytest.mark.check

PROMPTS = ["a photo of sks dog", "a sks dog on the beach"]
SEEDS = [0, 7]
SIZE, STEPS, LAMBDA = 64, 4, 5.0
DOG = ROOT / "resources/datasets/demo/images/brown_dog"


def _stock(tiny_sdxl, lora=None):
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl))
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(str(lora))
    return pipe


def _ours(pipe, guidance, **kw):
    return to_uint8(
        sample(pipe, PROMPTS, guidance, generators(SEEDS), steps=STEPS, height=SIZE, width=SIZE, progress=False, **kw)
    )


def _stock_images(stock, scale):
    out = stock(
        PROMPTS, guidance_scale=scale, num_inference_steps=STEPS, height=SIZE, width=SIZE, generator=generators(SEEDS)
    )
    return to_uint8(out.images)


@pytest.fixture(scope="module")
def tuned(tiny_sdxl, sdxl_lora_path):
    pipe = load_pipeline(str(tiny_sdxl), device="cpu", dtype="float32")
    attach_loras(pipe, sdxl_lora_path)
    return pipe


def test_the_twin_is_an_sdxl_pipeline_with_the_checkpoints_scheduler(tiny_sdxl):
    pipe = load_pipeline(str(tiny_sdxl), device="cpu", dtype="float32")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline" and family_of(pipe) is SDXL
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"  # `scheduler: auto` keeps SDXL's own
    assert pipe.unet.config.addition_embed_type == "text_time" and pipe.tokenizer_2.pad_token == "!"


def test_without_guidance_the_sampler_is_the_stock_pipeline_at_scale_one(tiny_sdxl):
    # CFG with and without a LoRA against the stock pipeline: test_families.py (the sdxl case)
    pipe = load_pipeline(str(tiny_sdxl), device="cpu", dtype="float32")
    assert np.abs(_ours(pipe, Guidance("none")) - _stock_images(_stock(tiny_sdxl), 1.0)).max() <= 1


@pytest.mark.parametrize("omega", [0.0, 0.4])
def test_pg_equals_a_loop_whose_unconditional_branch_runs_theta_omega(tiny_sdxl, sdxl_lora_path, tuned, omega):
    request = Request(prompts=PROMPTS, generators=generators(SEEDS), steps=STEPS, height=SIZE, width=SIZE)
    ours = sample_latents(tuned, Guidance("pg", LAMBDA, omega=omega), request, progress=False)
    weak = unet_without_lora if omega == 0 else unet_with_lora_written_in(tiny_sdxl, sdxl_lora_path, omega)
    ref = sdxl_reference_loop(_stock(tiny_sdxl, sdxl_lora_path.parent), PROMPTS, SEEDS, SIZE, STEPS, LAMBDA, weak)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_the_same_seed_twice_gives_the_same_images(tuned):
    first, again = (_ours(tuned, Guidance("pg", LAMBDA, omega=0.0)) for _ in range(2))
    assert np.array_equal(first, again)


def test_size_and_crop_ids_are_the_crop_pixel_tensor_takes():
    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 255, (60, 100, 3), dtype=np.uint8))  # h 60, w 100
    tall = wide.transpose(Image.Transpose.TRANSPOSE)  # h 100, w 60
    ids = SDXL.image_conditions([wide, tall], 32)
    assert ids.tolist() == [[60, 100, 0, 10, 32, 32], [100, 60, 10, 0, 32, 32]]
    for image, (_, _, top, left, _, _) in zip((wide, tall), ids.int().tolist()):
        # the resize train_dreambooth_lora_sdxl.py and pixel_tensor share, cropped at the ids' corner
        w, h = image.size
        resized = image.resize((32, int(32 * h / w)) if w < h else (int(32 * w / h), 32), Image.BILINEAR)
        crop = pixel_tensor([image], 32)[0]
        by_ids = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
        by_ids = by_ids[:, top : top + 32, left : left + 32]
        assert (crop - by_ids).abs().mean() < 0.05  # same region (PIL and torchvision resample alike)
        shifted = by_ids.roll(3, dims=(1 if top else 2))
        assert (crop - shifted).abs().mean() > (crop - by_ids).abs().mean()


@pytest.fixture(scope="module")
def run(tiny_sdxl, tmp_path_factory):
    pipe = load_pipeline(str(tiny_sdxl), device="cpu", dtype="float32")
    out = tmp_path_factory.mktemp("sdxl-train") / "run"
    _method().train(pipe, _subject(), out, seed=3, progress=False)
    return out


def _method():
    return make("db-lora", steps=8, weak_step=4, lr=1e-3, resolution=32)


def _subject():
    return Subject(read_images(DOG), "a photo of sks dog", None, None)


def test_training_feeds_each_images_own_size_ids(tiny_sdxl, tmp_path, monkeypatch):
    seen = []
    real = SDXL.predict

    def spy(pipe, x, t, text, model=None):
        seen.append(text.time_ids.clone())
        return real(pipe, x, t, text, model)

    monkeypatch.setattr(SDXL, "predict", staticmethod(spy))
    pipe = load_pipeline(str(tiny_sdxl), device="cpu", dtype="float32")
    make("db-lora", steps=3, weak_step=1, lr=1e-3, resolution=32).train(
        pipe, _subject(), tmp_path / "r", seed=3, progress=False
    )
    expected = {tuple(row) for row in SDXL.image_conditions(_subject().images, 32).tolist()}
    assert len(seen) == 3 and all(tuple(ids[0].tolist()) in expected for ids in seen)


def test_a_trained_lora_loads_in_stock_sdxl_and_changes_its_image(tiny_sdxl, run, tmp_path):
    stock = _stock(tiny_sdxl)
    base = _stock_images(stock, LAMBDA)
    stock.load_lora_weights(str(run / "full"))
    assert np.abs(_stock_images(stock, LAMBDA) - base).max() > 0
    again = tmp_path / "again"
    pipe = load_pipeline(str(tiny_sdxl), device="cpu", dtype="float32")
    _method().train(pipe, _subject(), again, seed=3, progress=False)
    for name, path in _method().checkpoint_files(run).items():
        assert _method().checkpoint_files(again)[name].read_bytes() == path.read_bytes()


def test_class_images_are_what_cfg_draws_with_the_zero_null_condition(tiny_sdxl, tmp_path):
    """generate_class_images calls the stock pipeline; an empty negative prompt must reach it as
    SDXL's zero condition (negative_prompt=None), what wig's CFG feeds, so image i is `cfg` at seed i."""
    from wig.personalization.training import generate_class_images

    pipe = load_pipeline(str(tiny_sdxl), device="cpu", dtype="float32")
    generate_class_images(pipe, "a photo of dog", 1, tmp_path / "c", seed=3, steps=STEPS, scale=LAMBDA, progress=False)
    (image,) = read_images(tmp_path / "c")
    ours = sample(pipe, ["a photo of dog"], Guidance("cfg", LAMBDA), generators([3]), steps=STEPS, progress=False)
    assert np.abs(to_uint8([image]) - to_uint8(ours)).max() <= 1
