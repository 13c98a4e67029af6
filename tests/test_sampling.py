"""The sampler against stock diffusers and against hand-written reference loops.

The references below never touch `wig.sampling.sampler`: they encode with diffusers'
``encode_prompt``, draw noise with diffusers' ``randn_tensor`` and run each branch as its own
UNet pass (or its own UNet), which is exactly what the batched per-sample-scale forward claims
to reproduce.
"""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from wig.branches import WEAK
from wig.errors import WigError
from wig.guidance import Guidance
from wig.models.pipelines import load_pipeline
from wig.personalization.lora import attach_loras
from wig.sampling.generation import generate_samples
from wig.sampling.sampler import Request, SamplingError, sample, sample_latents

from conftest import PROMPTS, STEPS, H, W, generators, lora_written_in, reference_loop, to_uint8

pytestmark = pytest.mark.check

LAMBDA = 7.5


@pytest.fixture(scope="module")
def base(tiny_sd):
    return load_pipeline(str(tiny_sd), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def tuned(tiny_sd, lora_path, weak_lora_path):
    pipe = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    attach_loras(pipe, lora_path, weak_lora_path)
    return pipe


def _stock(tiny_sd, lora=None):
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(str(lora))
    return pipe


def _latents(pipe, guidance, **kw):
    request = Request(prompts=PROMPTS, generators=generators(), steps=STEPS, height=H, width=W, **kw)
    return sample_latents(pipe, guidance, request, progress=False)


def _unet_call(unet, cond: bool, adapters=None):
    def fn(x, t, c, u):
        if adapters is None:
            unet.disable_adapters()
        else:
            unet.enable_adapters()
            unet.set_adapters(adapters)
        try:
            return unet(x, t, encoder_hidden_states=c if cond else u, return_dict=False)[0]
        finally:
            unet.enable_adapters()
            unet.set_adapters(["full", "weak"], weights=[1.0, 1.0])

    return fn


# --- against stock diffusers ---------------------------------------------------------------


def test_none_equals_stock_pipeline_without_guidance(tiny_sd, base):
    # stock diffusers skips CFG at guidance_scale = 1: one conditional pass, like `none`
    ours = sample(base, PROMPTS, Guidance("none"), generators(), steps=STEPS, height=H, width=W, progress=False)
    ref = _stock(tiny_sd)(
        PROMPTS, guidance_scale=1.0, num_inference_steps=STEPS, height=H, width=W, generator=generators()
    )
    assert np.abs(to_uint8(ours) - to_uint8(ref.images)).max() <= 1


# --- PG ----------------------------------------------------------------------------------


def test_pg_omega_zero_uses_the_pretrained_weak_branch(tuned):
    ours = _latents(tuned, Guidance("pg", LAMBDA, omega=0.0))
    unet = tuned.unet
    ref = reference_loop(
        tuned,
        [_unet_call(unet, cond=False, adapters=None), _unet_call(unet, cond=True, adapters=["full"])],
        lambda u, c: u + LAMBDA * (c - u),
    )
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert (ours - _latents(tuned, Guidance("cfg", LAMBDA))).abs().max() > 1e-2  # ω matters


def test_pg_omega_interpolates_weights(tiny_sd, tuned, lora_path):
    omega = 0.4
    ours = _latents(tuned, Guidance("pg", LAMBDA, omega=omega))
    weak_unet = lora_written_in(tiny_sd, lora_path, omega)
    ref = reference_loop(
        tuned,
        [
            lambda x, t, c, u: weak_unet(x, t, encoder_hidden_states=u, return_dict=False)[0],
            _unet_call(tuned.unet, cond=True, adapters=["full"]),
        ],
        lambda u, c: u + LAMBDA * (c - u),
    )
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    others = [_latents(tuned, Guidance("pg", LAMBDA, omega=w)) for w in (0.0, 1.0)]
    assert all((ours - o).abs().max() > 1e-2 for o in others)


# --- AG and CFG++ ------------------------------------------------------------------------


@pytest.mark.parametrize("weak", ["pretrained", "lora"])
def test_ag_equals_three_separate_passes(tuned, weak):
    lam, lam_ag = 3.0, 2.5
    ours = _latents(tuned, Guidance("ag", lam, ag_scale=lam_ag, weak=weak))
    unet = tuned.unet
    weak_fn = _unet_call(unet, True, adapters=None if weak == "pretrained" else ["weak"])
    ref = reference_loop(
        tuned,
        [_unet_call(unet, False, ["full"]), _unet_call(unet, True, ["full"]), weak_fn],
        lambda u, c, w: u + lam * (c - u) + (lam_ag - 1) * (c - w),
    )
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


# class prompts: the subject replaced by its class noun (SAG's c₀)
CLASS_PROMPTS = [p.replace("sks ", "") for p in PROMPTS]


@pytest.mark.parametrize("omega", [1.0, 0.4])
def test_sag_equals_its_formula_from_three_separate_passes(tiny_sd, tuned, lora_path, omega):
    # T = 0.5 splits the few test steps between the subject-agnostic start and the subject's
    # return; r = 0.5 extrapolates away from c₀. ω < 1 is PG + SAG (a separately lerped UNet).
    lam, r, T = 5.0, 0.5, 0.5
    assert CLASS_PROMPTS != PROMPTS
    g = Guidance("sag", lam, omega=omega, subject_weight=r, subject_from=T)
    ours = _latents(tuned, g, extra_texts={"class_prompt": CLASS_PROMPTS})
    c0 = tuned.encode_prompt(CLASS_PROMPTS, "cpu", 1, False)[0]
    unet = tuned.unet
    full = _unet_call(unet, True, ["full"])
    if omega == 1.0:
        weak = _unet_call(unet, False, ["full"])
    else:
        weak_unet = lora_written_in(tiny_sd, lora_path, omega)
        weak = lambda x, t, c, u: weak_unet(x, t, encoder_hidden_states=u, return_dict=False)[0]  # noqa: E731

    def agnostic(x, t, c, u):
        return full(x, t, c0, u)

    seen = set()

    def formula(u, c, c_0, time):
        w_t = -1.0 if time > T else r
        seen.add(w_t)
        return u + lam * ((1 + w_t) * c - w_t * c_0 - u)

    ref = reference_loop(tuned, [weak, full, agnostic], formula, timed=True)
    assert seen == {-1.0, r}  # both phases ran
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    cfg = _latents(tuned, Guidance("pg" if omega < 1 else "cfg", lam, **({"omega": omega} if omega < 1 else {})))
    assert (ours - cfg).abs().max() > 1e-2  # c₀ matters


def test_sag_needs_the_class_prompts(tuned):
    with pytest.raises(SamplingError, match="needs the extra text 'class_prompt'"):
        _latents(tuned, Guidance("sag"))


@pytest.mark.parametrize("method", ["cfgpp", "pgpp"])
def test_cfgpp_equals_the_cfgpp_ddim_update(tuned, method):
    lam = 0.6  # CFG++ works with λ in [0, 1]
    ours = _latents(tuned, Guidance(method, lam, **({"omega": 0.0} if method == "pgpp" else {})))
    unet = tuned.unet
    ref = reference_loop(
        tuned,
        [_unet_call(unet, False, ["full"] if method == "cfgpp" else None), _unet_call(unet, True, ["full"])],
        lambda u, c: u + lam * (c - u),
        renoise_uncond=True,
    )
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    plain = _latents(tuned, Guidance(method.removesuffix("pp"), lam, **({"omega": 0.0} if method == "pgpp" else {})))
    assert (ours - plain).abs().max() > 1e-3  # the re-noising differs from plain DDIM


# --- refusals ----------------------------------------------------------------------------


def test_methods_that_need_a_lora_refuse_without_one(base):
    for g in (Guidance("pg", omega=0.0), Guidance("pgpp"), Guidance("ag")):
        with pytest.raises(SamplingError, match="needs a fine-tune"):
            _latents(base, g)


def test_prompt_and_generator_counts_must_match(base):
    with pytest.raises(SamplingError, match="one generator per image"):
        sample_latents(base, Guidance("cfg"), Request(prompts=PROMPTS, generators=generators([1])), progress=False)


def test_one_job_of_several_points_equals_a_job_per_point(tiny_sd, lora_path, tuned, tmp_path):
    """A chunked generation job (sampling.points_per_job) makes the images one job per point
    makes, bit for bit — though it loads the weak LoRA for AG beside CFG and PG."""
    alone = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    attach_loras(alone, lora_path)
    points = {
        "cfg/w1.0_l7.5": Guidance("cfg", scale=LAMBDA),
        "pg/w0.0_l7.5": Guidance("pg", scale=LAMBDA, omega=0.0),
        "ag/w1.0_l7.5_a2.0_weak": Guidance("ag", scale=LAMBDA, weak="lora"),
    }
    options = dict(batch_size=2, progress=False, steps=STEPS, height=H, width=W)
    together = generate_samples(tuned, PROMPTS, points, [0, 3], tmp_path / "job", **options)
    assert together["point"].unique(maintain_order=True).to_list() == list(points)
    for key, guidance in points.items():
        single = generate_samples(
            tuned if WEAK in guidance.required_adapters() else alone,
            PROMPTS,
            {key: guidance},
            [0, 3],
            tmp_path / key,
            **options,
        )
        part = together.filter(together["point"] == key)
        assert part["path"].to_list() == [f"{key}/{p}" for p in single["path"]]
        assert part["sha256"].to_list() == single["sha256"].to_list()
        assert all((tmp_path / "job" / p).is_file() for p in part["path"])
    assert len(set(together["sha256"])) == len(together)  # the points differ from one another
    with pytest.raises(WigError, match="at least one grid point"):
        generate_samples(alone, PROMPTS, {}, [0], tmp_path / "none", **options)
    assert not (tmp_path / "none").exists()
