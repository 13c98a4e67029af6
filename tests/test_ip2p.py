"""InstructPix2Pix: its dual guidance against the stock pipeline, and PG in its null-text branches
with the pretrained model (the SD twin, its first convolution zero-padded) as θ — the PG paper's
Fig. 8 — against a hand-written loop over separate UNets."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from wig.guidance import Guidance
from wig.models.families.ip2p import build_tiny_ip2p
from wig.models.pipelines import load_pipeline
from wig.personalization.full_weights import attach_base
from wig.sampling.sampler import SamplingError, sample

from conftest import STEPS, generators, to_uint8

pytestmark = pytest.mark.check

ROOT = Path(__file__).resolve().parents[1]
DOG = ROOT / "resources/datasets/demo/images/brown_dog"
INSTRUCTIONS = ["make it a watercolour", "turn the dog into a cat"]
S_T, S_I = 7.5, 1.5


@pytest.fixture(scope="module")
def tiny_ip2p(tmp_path_factory):
    out = tmp_path_factory.mktemp("ip2p")
    build_tiny_ip2p(out)
    return out


@pytest.fixture(scope="module")
def images():
    return [Image.open(p).convert("RGB").resize((32, 32)) for p in sorted(DOG.iterdir())[:2]]


def _ours(pipe, guidance, images, weights=None):
    return sample(
        pipe, INSTRUCTIONS, guidance, generators(), steps=STEPS, images=images, weights=weights, progress=False
    )


def test_dual_guidance_equals_the_stock_instruct_pix2pix_pipeline(tiny_ip2p, tiny_sd, images):
    stock = StableDiffusionInstructPix2PixPipeline.from_pretrained(tiny_ip2p, safety_checker=None)
    stock.set_progress_bar_config(disable=True)
    ref = stock(
        INSTRUCTIONS,
        image=images,
        num_inference_steps=STEPS,
        guidance_scale=S_T,
        image_guidance_scale=S_I,
        generator=generators(),
    ).images
    pipe = load_pipeline(str(tiny_ip2p), device="cpu", dtype="float32")
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"  # its own, as the stock call
    ours = _ours(pipe, Guidance("ip2p-cfg", S_T, image_scale=S_I), images)
    assert np.abs(to_uint8(ours) - to_uint8(ref)).max() <= 1
    # PG at ω = 1 with the pretrained base attached: the same images
    weights = attach_base(pipe, tiny_sd / "unet")  # the SD twin's UNet (4 input channels): θ
    pg = _ours(pipe, Guidance("ip2p-cfg", S_T, image_scale=S_I, omega=1.0), images, weights)
    assert np.abs(to_uint8(pg) - to_uint8(ref)).max() <= 1


def _reference(pipe, tuned, weak, images):
    """The dual-guidance loop by hand: (θ', c, I) (θω, ∅, I) (θω, ∅, 0), each its own UNet call."""

    def encode(texts):
        ids = pipe.tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        return pipe.text_encoder(ids.input_ids)[0]

    cond, uncond = encode(INSTRUCTIONS), encode([""] * 2)
    pixels = pipe.image_processor.preprocess(images)
    image = pipe.vae.encode(pixels).latent_dist.mode()
    sched = copy.deepcopy(pipe.scheduler)
    sched.set_timesteps(STEPS)
    gens = generators()  # the initial noise and every ancestral step's, as the stock pipeline draws them
    x = randn_tensor((2, 4, 16, 16), generator=gens, dtype=cond.dtype) * sched.init_noise_sigma
    for t in sched.timesteps:
        xs = sched.scale_model_input(x, t)

        def call(unet, text, img):
            return unet(torch.cat([xs, img], 1), t, encoder_hidden_states=text, return_dict=False)[0]

        e_t = call(tuned, cond, image)
        e_i = call(weak, uncond, image)
        e_u = call(weak, uncond, torch.zeros_like(image))
        x = sched.step(e_u + S_T * (e_t - e_i) + S_I * (e_i - e_u), t, x, generator=gens, return_dict=False)[0]
    return x


@torch.no_grad()
def test_pg_in_the_null_text_branches_equals_a_loop_with_a_lerped_padded_base(tiny_ip2p, tiny_sd, images):
    from wig.sampling.sampler import Request, sample_latents

    pipe = load_pipeline(str(tiny_ip2p), device="cpu", dtype="float32")
    tuned = copy.deepcopy(pipe.unet)
    weights = attach_base(pipe, tiny_sd / "unet")  # the SD twin's UNet (4 input channels): θ
    base = UNet2DConditionModel.from_pretrained(tiny_sd / "unet")
    assert torch.equal(pipe.unet.conv_in.weight[:, :4], base.conv_in.weight)
    assert not pipe.unet.conv_in.weight[:, 4:].any()  # the image channels of θ: zeros
    weak = copy.deepcopy(pipe.unet)
    own = tuned.state_dict()
    for name, tensor in weak.state_dict().items():
        tensor.copy_(torch.lerp(tensor, own[name], 0.4))
    request = Request(prompts=INSTRUCTIONS, generators=generators(), steps=STEPS, images=images)
    guidance = Guidance("ip2p-cfg", S_T, image_scale=S_I, omega=0.4)
    ours = sample_latents(pipe, guidance, request, progress=False, weights=weights)
    torch.testing.assert_close(ours, _reference(pipe, tuned, weak, images), rtol=1e-4, atol=1e-4)
    request.generators = generators()
    image_only = sample_latents(
        pipe, Guidance("ip2p-cfg", S_T, image_scale=S_I, omega=0.4, weak_branches="image"), request, False, weights
    )
    assert (image_only - ours).abs().max() > 1e-3  # the choice of branches matters


def test_an_edit_needs_its_images_and_its_pipeline(tiny_ip2p, tiny_sd, images):
    pipe = load_pipeline(str(tiny_ip2p), device="cpu", dtype="float32")
    with pytest.raises(SamplingError, match="give one image per prompt"):
        sample(pipe, INSTRUCTIONS, Guidance("ip2p-cfg"), generators(), steps=1)
    with pytest.raises(SamplingError, match="input image's size 32×32: give no height/width"):
        sample(pipe, INSTRUCTIONS, Guidance("ip2p-cfg"), generators(), steps=1, images=images, height=64)
    with pytest.raises(SamplingError, match="needs the pretrained base|needs a fine-tune"):
        sample(pipe, INSTRUCTIONS, Guidance("ip2p-cfg", omega=0.0), generators(), steps=1, images=images)
    sd = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    with pytest.raises(SamplingError, match="ip2p-cfg guides an image edit"):
        sample(sd, INSTRUCTIONS, Guidance("ip2p-cfg"), generators(), steps=1)


def test_cli_edits_an_image_with_and_without_the_pretrained_base(tiny_ip2p, tiny_sd, images, tmp_path):
    from wig.cli import main

    images[0].save(tmp_path / "in.png")
    args = ["generate", "--model", str(tiny_ip2p), "--prompt", INSTRUCTIONS[0], "--seed", "0", "--image"]
    args += [str(tmp_path / "in.png"), "--steps", str(STEPS), "--device", "cpu", "--quiet", "--method", "ip2p-cfg"]
    assert main([*args, "--out", str(tmp_path / "stock.png")]) == 0
    assert main([*args, "--omega", "0", "--base", str(tiny_sd / "unet"), "--out", str(tmp_path / "pg.png")]) == 0
    stock, pg = (np.asarray(Image.open(tmp_path / f"{n}.png"), dtype=np.int16) for n in ("stock", "pg"))
    assert stock.shape == pg.shape == (32, 32, 3) and np.abs(stock - pg).max() > 5  # θ0 in the null branches
    pipe = load_pipeline(str(tiny_ip2p), device="cpu", dtype="float32")
    (ref,) = sample(pipe, INSTRUCTIONS[:1], Guidance("ip2p-cfg"), generators([0]), steps=STEPS, images=[images[0]])
    assert np.abs(stock - np.asarray(ref, dtype=np.int16)).max() <= 1
    assert main([*args, "--image", str(tmp_path / "missing.png"), "--out", str(tmp_path / "x.png")]) == 1
    assert not (tmp_path / "x.png").exists()
