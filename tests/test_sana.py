"""The SANA family on its tiny twin: build, sampler against stock SanaPipeline and a
materialised-weights loop, LoRA training loadable by stock diffusers.

The references never touch `wig.sampling.sampler`: stock ``SanaPipeline.__call__``, or a loop that
encodes with the pipeline's ``encode_prompt``, steps its DPM-Solver and calls each branch's
transformer on its own.
"""

import copy
import inspect

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel
from diffusers.utils.torch_utils import randn_tensor
from safetensors.torch import load_file

from wig.concepts import read_images
from wig.guidance import Guidance
from wig.models.pipelines import load_pipeline
from wig.models.tiny import gemma_tokenizer
from wig.personalization import Subject, make
from wig.personalization.lora import attach_loras, random_lora
from wig.personalization.training import denoising_loss, generate_class_images
from wig.sampling.sampler import Request, SamplingError, sample, sample_latents

from conftest import PROMPTS, generators, to_uint8
from test_training import DOG

pytestmark = pytest.mark.check

H = W = 64  # the twin's native size: 16x16 latents
STEPS = 6
LAMBDA = 4.5  # SANA's default CFG scale


@pytest.fixture(scope="module")
def base(tiny_sana):
    return load_pipeline(str(tiny_sana), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def lora(base, tmp_path_factory):
    return random_lora(base, tmp_path_factory.mktemp("sana-lora"), std=0.3, seed=1)


@pytest.fixture(scope="module")
def tuned(tiny_sana, lora):
    pipe = load_pipeline(str(tiny_sana), device="cpu", dtype="float32")
    attach_loras(pipe, lora)
    return pipe


def _stock(tiny_sana, lora=None):
    pipe = SanaPipeline.from_pretrained(str(tiny_sana))
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(str(lora))
    return pipe


def _call_stock(pipe, **kw):
    return pipe(
        PROMPTS,
        guidance_scale=LAMBDA,
        num_inference_steps=STEPS,
        height=H,
        width=W,
        generator=generators(),
        use_resolution_binning=False,
        **kw,
    ).images


def _latents(pipe, guidance):
    request = Request(prompts=PROMPTS, generators=generators(), steps=STEPS, height=H, width=W)
    return sample_latents(pipe, guidance, request, progress=False)


# --- the twin ------------------------------------------------------------------------------


def test_stock_from_pretrained_loads_the_twin(tiny_sana):
    pipe = _stock(tiny_sana)
    assert isinstance(pipe.transformer, SanaTransformer2DModel)
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    assert pipe.scheduler.config.prediction_type == "flow_prediction" and pipe.scheduler.config.use_flow_sigmas
    assert pipe.vae_scale_factor == 4 and pipe.transformer.config.sample_size * 4 == H
    assert pipe.transformer.config.caption_channels == pipe.text_encoder.config.hidden_size


def test_gemma_tokenizer_encodes_any_prompt():
    tok = gemma_tokenizer()
    ids = tok(["a sks dog", "ein Hund im Schnee 🐶"]).input_ids
    assert ids[0][0] == tok.bos_token_id and tok.unk_token_id not in ids[0] + ids[1]
    assert tok.decode(ids[1], skip_special_tokens=True) == "ein Hund im Schnee 🐶"  # byte fallback
    assert len(ids[0]) == 1 + len("a sks dog")  # character level: <bos> + one piece per character


# --- the sampler -----------------------------------------------------------------------------


def test_text_options_reach_the_encoder(tiny_sana, base):
    # without the complex human instruction (and shorter states) stock and ours still agree,
    # and the images differ from the default's
    opts = {"complex_human_instruction": None, "max_sequence_length": 40}
    ours = sample(
        base,
        PROMPTS,
        Guidance("cfg", scale=LAMBDA),
        generators(),
        steps=STEPS,
        height=H,
        width=W,
        progress=False,
        output_type="np",
        text_options=opts,
    )
    ref = _call_stock(_stock(tiny_sana), output_type="np", **opts)
    default = sample(
        base,
        PROMPTS,
        Guidance("cfg", scale=LAMBDA),
        generators(),
        steps=STEPS,
        height=H,
        width=W,
        progress=False,
        output_type="np",
    )
    assert np.abs(ours - ref).max() <= 1 / 255 and np.abs(ours - default).max() > 1e-2
    with pytest.raises(SamplingError, match="clip_skip"):
        sample(base, PROMPTS, Guidance("cfg"), generators(), steps=1, text_options={"clip_skip": 1})


def _materialised(model_dir, lora_file, omega):
    """A separate transformer with θ + ω·B·A written into its Linear weights (no PEFT)."""
    model = SanaTransformer2DModel.from_pretrained(model_dir, subfolder="transformer")
    modules = dict(model.named_modules())
    state = load_file(str(lora_file))
    n = 0
    for key, a in state.items():
        if key.endswith(".lora_A.weight"):
            b = state[key.replace(".lora_A.", ".lora_B.")]
            modules[key.removeprefix("transformer.").removesuffix(".lora_A.weight")].weight.data += omega * (b @ a)
            n += 1
    assert n == 2 * 2 * 3  # 2 blocks × (linear self-attention, cross-attention) × q/k/v
    return model


def _reference_loop(pipe, weak, strong):
    """PG as two separate transformers, one call each per step; stock encode, noise and solver."""
    chi = inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default
    cond, cond_mask, _, _ = pipe.encode_prompt(PROMPTS, False, device="cpu", complex_human_instruction=chi)
    uncond, uncond_mask, _, _ = pipe.encode_prompt(
        [""] * len(PROMPTS), False, device="cpu", complex_human_instruction=None
    )
    sched = copy.deepcopy(pipe.scheduler)
    sched.set_timesteps(STEPS)
    x = randn_tensor((len(PROMPTS), 4, H // 4, W // 4), generator=generators(), dtype=torch.float32)
    for t in sched.timesteps:
        ts = t.expand(len(PROMPTS))
        e_u = weak(x, encoder_hidden_states=uncond, encoder_attention_mask=uncond_mask, timestep=ts, return_dict=False)[
            0
        ]
        e_c = strong(x, encoder_hidden_states=cond, encoder_attention_mask=cond_mask, timestep=ts, return_dict=False)[0]
        x = sched.step(e_u + LAMBDA * (e_c - e_u), t, x, return_dict=False)[0]
    return x


def test_pg_equals_a_loop_with_materialised_weak_weights(tiny_sana, lora, tuned):
    omega = 0.3
    ours = _latents(tuned, Guidance("pg", LAMBDA, omega=omega))
    with torch.no_grad():
        ref = _reference_loop(tuned, _materialised(tiny_sana, lora, omega), _materialised(tiny_sana, lora, 1.0))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    others = [_latents(tuned, Guidance("pg", LAMBDA, omega=w)) for w in (0.0, 1.0)]
    assert all((ours - o).abs().max() > 1e-2 for o in others)


def test_cfgpp_refuses_the_flow_solver(tuned):
    with pytest.raises(SamplingError, match="needs a DDIMScheduler, got DPMSolverMultistepScheduler"):
        _latents(tuned, Guidance("cfgpp", 0.6))


# --- training ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(base, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sana-train")
    generate_class_images(base, "a photo of dog", 2, tmp / "class", steps=2, height=H, width=W, progress=False)
    method = make("db-lora", steps=10, weak_step=3, lr=1e-2, resolution=H)
    subject = Subject(read_images(DOG), "a photo of sks dog", read_images(tmp / "class"), "a photo of dog")
    method.train(base, subject, tmp / "run", seed=3, progress=False)
    return tmp / "run", method, subject


def test_checkpoints_load_in_stock_diffusers_and_change_the_image(tiny_sana, run):
    out, method, _ = run
    ckpt = method.checkpoint_files(out)
    keys = load_file(str(ckpt["full"])).keys()
    assert keys and all(k.startswith("transformer.") and (".lora_A." in k or ".lora_B." in k) for k in keys)
    plain = to_uint8(_call_stock(_stock(tiny_sana)))
    outs = {name: to_uint8(_call_stock(_stock(tiny_sana, path))) for name, path in ckpt.items()}
    assert all(np.abs(o - plain).max() > 0 for o in outs.values())
    assert np.abs(outs["full"] - outs["weak"]).max() > 0


def test_same_seed_gives_identical_checkpoints(base, run, tmp_path):
    out, method, subject = run
    method.train(base, subject, tmp_path / "again", seed=3, progress=False)
    for name, path in method.checkpoint_files(out).items():
        assert path.read_bytes() == method.checkpoint_files(tmp_path / "again")[name].read_bytes()


def test_training_lowers_the_flow_matching_loss(tiny_sana, tmp_path):
    pipe = load_pipeline(str(tiny_sana), device="cpu", dtype="float32")
    images = read_images(DOG)
    before = denoising_loss(pipe, images, "a photo of sks dog", H, n=8)
    method = make("db-lora", steps=40, weak_step=10, lr=1e-2, resolution=H)
    method.train(pipe, Subject(images, "a photo of sks dog"), tmp_path / "run", progress=False)
    method.attach(pipe, tmp_path / "run", weak=False)
    pipe.set_adapters(["full"])
    after = denoising_loss(pipe, images, "a photo of sks dog", H, n=8)
    assert after < 0.9 * before, (before, after)
