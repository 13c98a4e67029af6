"""DreamBlend: its two trajectories against plain CFG with each checkpoint, the captured
cross-attention maps against a hand-written attention, the CAG gradient against finite
differences, and the reference saved beside the result."""

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from wig.errors import WigError
from wig.guidance import RESULT, Guidance
from wig.guidance.methods.dreamblend import REFERENCE, cag_loss
from wig.models.attention import capture_cross_attention, cross_attention_layers
from wig.models.pipelines import load_pipeline
from wig.personalization.lora import attach_loras
from wig.sampling.generation import generate_samples
from wig.sampling.sampler import Request, SamplingError, sample_trajectories

from conftest import PROMPTS, STEPS, H, W, generators

pytestmark = pytest.mark.check


@pytest.fixture(scope="module")
def tuned(tiny_sd, lora_path, weak_lora_path):
    pipe = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    attach_loras(pipe, lora_path, weak_lora_path)
    return pipe


@pytest.fixture(scope="module")
def as_full(tiny_sd, weak_lora_path):
    """The underfit (weak) checkpoint loaded as the pipeline's only fine-tune: plain CFG with it."""
    pipe = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    attach_loras(pipe, weak_lora_path)
    return pipe


def _request(**kw):
    return Request(prompts=PROMPTS, generators=generators(), steps=STEPS, height=H, width=W, **kw)


@pytest.mark.parametrize("omega", [1.0, 0.0])
def test_at_strength_zero_the_result_is_cfg_with_the_overfit_and_the_reference_cfg_with_the_underfit(
    tuned, as_full, omega
):
    out = sample_trajectories(tuned, Guidance("dreamblend", 7.5, omega=omega), _request(), progress=False)
    (result,) = sample_trajectories(tuned, Guidance("pg", 7.5, omega=omega), _request(), progress=False).values()
    (reference,) = sample_trajectories(as_full, Guidance("cfg", 7.5), _request(), progress=False).values()
    assert torch.equal(out[RESULT], result)
    assert torch.equal(out[REFERENCE], reference)
    assert not torch.equal(result, reference)  # the two checkpoints differ: the test can fail


def test_guidance_moves_the_result_and_leaves_the_reference(tuned):
    plain = sample_trajectories(tuned, Guidance("dreamblend", 7.5), _request(), progress=False)
    guided = sample_trajectories(tuned, Guidance("dreamblend", 7.5, strength=50.0), _request(), progress=False)
    # capturing records beside the stock processor: the reference is unmoved, bit for bit
    assert torch.equal(guided[REFERENCE], plain[REFERENCE])
    assert not torch.equal(guided[RESULT], plain[RESULT])
    assert torch.isfinite(guided[RESULT]).all()
    # only the guided steps (t ≥ until) moved it: with until above every step's time it is plain
    late = sample_trajectories(tuned, Guidance("dreamblend", 7.5, strength=50.0, until=1.0), _request(), progress=False)
    assert torch.equal(late[RESULT], plain[RESULT])


def test_a_guidance_step_brings_the_results_maps_closer_to_the_references(base_sd):
    unet = base_sd.unet
    g = torch.Generator().manual_seed(2)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    x, x_ref = (torch.randn(2, 4, H // 8, W // 8, generator=g) for _ in range(2))
    with capture_cross_attention(unet) as store:

        def maps_of(latent, branch_id):
            assert branch_id == 3  # the result's prompt branch
            store.clear()
            store.recording = True
            with torch.enable_grad():
                unet(latent, 700, encoder_hidden_states=text)
            store.recording = False
            return dict(store.maps)

        with torch.no_grad():
            reference = maps_of(x_ref, 3)
            before = cag_loss(maps_of(x, 3), reference)
            moved = Guidance("dreamblend", strength=0.05).guide_latent(x, {REFERENCE: {1: reference}}, maps_of, 0, 0.7)
            after = cag_loss(maps_of(moved, 3), reference)
    assert not torch.equal(moved, x) and not moved.requires_grad
    assert after < before, (float(before), float(after))


def _layer_inputs(pipe, layer_name):
    """The hidden states and text a cross-attention layer sees in one UNet forward (a hook)."""
    unet = pipe.unet
    seen = {}
    module = dict(unet.named_modules())[layer_name]

    def hook(mod, args, kwargs):
        seen["hidden"] = args[0] if args else kwargs["hidden_states"]
        seen["text"] = kwargs["encoder_hidden_states"]

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 4, H // 8, W // 8, generator=g)
        text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
        with capture_cross_attention(unet) as store, torch.no_grad():
            stock = unet(x, 500, encoder_hidden_states=text).sample
            store.recording = True
            captured = unet(x, 500, encoder_hidden_states=text).sample
        return seen, store.maps, stock, captured
    finally:
        handle.remove()


def test_captured_maps_equal_a_hand_written_attention_and_leave_the_output_alone(base_sd):
    layers = cross_attention_layers(base_sd.unet)
    assert len(layers) >= 2 and all(name.endswith("attn2") for name in layers)
    name = sorted(layers)[0]
    seen, maps, stock, captured = _layer_inputs(base_sd, name)
    assert torch.equal(stock, captured)  # recording changes nothing the UNet returns
    assert set(maps) == set(layers)
    attn = layers[name]
    h, c = seen["hidden"], seen["text"]
    heads = attn.heads
    q = h @ attn.to_q.weight.T
    k = c @ attn.to_k.weight.T
    d = q.shape[-1] // heads
    q = q.view(q.shape[0], -1, heads, d).permute(0, 2, 1, 3)
    k = k.view(k.shape[0], -1, heads, d).permute(0, 2, 1, 3)
    by_hand = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, dim=-1).mean(dim=1)
    assert maps[name].shape == (2, h.shape[1], 77)
    torch.testing.assert_close(maps[name], by_hand, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(maps[name].sum(-1), torch.ones(2, h.shape[1]))


@pytest.fixture(scope="module")
def base_sd(tiny_sd):
    return load_pipeline(str(tiny_sd), device="cpu", dtype="float32")


def test_the_cag_gradient_matches_finite_differences(tiny_sd):
    """∇ₓ of the CAG loss through the UNet (float64) against central differences along random
    directions: the gradient the guidance steps with is the loss's."""
    pipe = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    unet = pipe.unet.double()
    g = torch.Generator().manual_seed(1)
    text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g, dtype=torch.float64)
    x0 = torch.randn(1, 4, H // 8, W // 8, generator=g, dtype=torch.float64)
    with capture_cross_attention(unet) as store:

        def maps(x):
            store.clear()
            store.recording = True
            unet(x, 700, encoder_hidden_states=text)
            store.recording = False
            return dict(store.maps)

        with torch.no_grad():
            reference = maps(torch.randn(x0.shape, generator=g, dtype=torch.float64))
            x = x0.clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(cag_loss(maps(x), reference), x)
        assert grad.abs().max() > 0
        eps = 1e-5
        for _ in range(3):
            v = torch.randn(x0.shape, generator=g, dtype=torch.float64)
            with torch.no_grad():
                fd = (cag_loss(maps(x0 + eps * v), reference) - cag_loss(maps(x0 - eps * v), reference)) / (2 * eps)
            torch.testing.assert_close((grad * v).sum(), fd, rtol=1e-6, atol=1e-9)


def test_dreamblend_needs_both_checkpoints_and_a_deterministic_sampler(base_sd, tuned, tiny_sd, lora_path):
    only_full = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    attach_loras(only_full, lora_path)
    with pytest.raises(
        SamplingError, match="dreamblend needs the weak \\(early\\) checkpoint loaded as adapter 'weak'"
    ):
        sample_trajectories(only_full, Guidance("dreamblend"), _request(), progress=False)
    with pytest.raises(SamplingError, match="needs a deterministic sampler \\(eta 0\\)"):
        sample_trajectories(tuned, Guidance("dreamblend"), _request(eta=1.0), progress=False)


def test_generation_saves_the_reference_beside_the_result_and_lists_only_the_result(tuned, tmp_path):
    point = Guidance("dreamblend", 7.5, strength=10.0)
    manifest = generate_samples(
        tuned, PROMPTS[:1], {point.key: point}, [0], tmp_path / "job", steps=STEPS, height=H, width=W, progress=False
    )
    assert manifest["path"].to_list() == ["s0_p00.png"]
    assert manifest.select("method", "strength").row(0) == ("dreamblend", 10.0)
    request = Request(PROMPTS[:1], [torch.Generator("cpu").manual_seed(0)], steps=STEPS, height=H, width=W)
    latents = sample_trajectories(tuned, point, request, progress=False)
    from wig.sampling.sampler import decode

    for name, file in ((RESULT, "s0_p00.png"), (REFERENCE, "s0_p00.reference.png")):
        (image,) = decode(tuned, latents[name])
        assert np.array_equal(np.asarray(Image.open(tmp_path / "job" / file)), np.asarray(image)), name
    assert isinstance(pl.read_parquet(tmp_path / "job/manifest.parquet"), pl.DataFrame)


def test_a_runs_step_checkpoints_are_the_underfit_and_overfit_adapters(tiny_sd, tmp_path):
    """db-lora with `checkpoints: [2, 5]`: dreamblend(underfit=2, overfit=5) at strength 0 is CFG
    with step2/ as the fine-tune (reference) and CFG with step5/ (result), bit for bit."""
    from wig.concepts import read_images
    from wig.personalization import Subject, make

    from conftest import ROOT

    pipe = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    method = make("db-lora", steps=6, weak_step=1, lr=1e-2, resolution=32, prior_weight=0.0, checkpoints=[2, 5])
    images = read_images(ROOT / "resources/datasets/demo/images/brown_dog")
    method.train(pipe, Subject(images, "a photo of sks dog"), tmp_path / "run", progress=False)
    weights = method.attach(pipe, tmp_path / "run")
    point = Guidance("dreamblend", 7.5, underfit=2, overfit=5)
    with pytest.raises(SamplingError, match="needs the run's checkpoint at step 2 loaded as adapter 'step2'"):
        sample_trajectories(pipe, point, _request(), progress=False, weights=weights)
    method.attach_steps(pipe, tmp_path / "run", [2, 5])
    out = sample_trajectories(pipe, point, _request(), progress=False, weights=weights)
    for name, step in ((REFERENCE, 2), (RESULT, 5)):
        alone = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
        attach_loras(alone, tmp_path / f"run/step{step}")
        (cfg,) = sample_trajectories(alone, Guidance("cfg", 7.5), _request(), progress=False).values()
        assert torch.equal(out[name], cfg), name
    assert not torch.equal(out[REFERENCE], out[RESULT])
    with pytest.raises(WigError, match="the run kept no checkpoint at step 3"):
        method.attach_steps(pipe, tmp_path / "run", [3])


def test_wig_generate_writes_the_reference_beside_the_result(tiny_sd, lora_path, weak_lora_path, tmp_path):
    """`wig generate --method dreamblend`: out.png and out.reference.png; the reference is what
    `wig generate --method cfg` makes with the underfit LoRA as the fine-tune, byte for byte."""
    from wig.cli import main

    common = ["generate", "--model", str(tiny_sd), "--prompt", PROMPTS[0], "--seed", "3", "--steps", "3"]
    common += ["--height", str(H), "--width", str(W), "--quiet"]
    out = tmp_path / "blend.png"
    argv = [*common, "--method", "dreamblend", "--lora", str(lora_path), "--weak-lora", str(weak_lora_path)]
    assert main([*argv, "--strength", "20", "--out", str(out)]) == 0
    assert main([*common, "--method", "cfg", "--lora", str(weak_lora_path), "--out", str(tmp_path / "cfg.png")]) == 0
    reference = np.asarray(Image.open(tmp_path / "blend.reference.png"))
    assert np.array_equal(reference, np.asarray(Image.open(tmp_path / "cfg.png")))
    assert not np.array_equal(np.asarray(Image.open(out)), reference)


def test_sana_masks_its_text_and_dreamblend_runs_there_too(tiny_sana, sana_lora_path, tmp_path):
    """SANA's cross-attention masks the padding: the captured maps hold 0 there (rows still sum to 1
    over the tokens it sees), CAG stays finite, and strength 0 is CFG with each checkpoint."""
    from wig.personalization.lora import random_lora

    pipe = load_pipeline(str(tiny_sana), device="cpu", dtype="float32")
    random_lora(pipe, tmp_path / "weak", std=0.3, seed=2)
    attach_loras(pipe, sana_lora_path, tmp_path / "weak")
    plain = sample_trajectories(pipe, Guidance("dreamblend", 4.5), _request(), progress=False)
    (cfg,) = sample_trajectories(pipe, Guidance("cfg", 4.5), _request(), progress=False).values()
    assert torch.equal(plain[RESULT], cfg)
    guided = sample_trajectories(pipe, Guidance("dreamblend", 4.5, strength=50.0), _request(), progress=False)
    assert torch.isfinite(guided[RESULT]).all() and not torch.equal(guided[RESULT], plain[RESULT])
    assert torch.equal(guided[REFERENCE], plain[REFERENCE])
    from wig.models.families import family_of

    family = family_of(pipe)
    text = family.encode(pipe, ["a photo of sks dog"])
    model = family.denoiser(pipe)
    with capture_cross_attention(model) as store, torch.no_grad():
        store.recording = True
        x = torch.randn(1, model.config.in_channels, H // pipe.vae_scale_factor, W // pipe.vae_scale_factor)
        family.predict(pipe, x, torch.tensor(500), text)
    hidden = text.mask[0] == 0
    assert hidden.any()  # the prompt is shorter than the sequence: padding is masked
    for maps in store.maps.values():
        assert torch.all(maps[0][:, hidden] == 0)
        torch.testing.assert_close(maps[0].sum(-1), torch.ones(maps.shape[1]))


def test_dreamblend_runs_on_sdxl_whose_null_condition_is_zeros(tiny_sdxl, sdxl_lora_path, tmp_path):
    """SDXL's UNet reads the pooled text and size ids beside the states: strength 0 is CFG with each
    checkpoint, CAG moves the result (finite) and leaves the reference."""
    from wig.personalization.lora import random_lora

    pipe = load_pipeline(str(tiny_sdxl), device="cpu", dtype="float32")
    random_lora(pipe, tmp_path / "weak", std=0.3, seed=2)
    attach_loras(pipe, sdxl_lora_path, tmp_path / "weak")

    def run(method, **params):
        request = Request(prompts=PROMPTS, generators=generators(), steps=4, height=64, width=64)
        return sample_trajectories(pipe, Guidance(method, 5.0, **params), request, progress=False)

    plain, (cfg,) = run("dreamblend"), run("cfg").values()
    assert torch.equal(plain[RESULT], cfg)
    guided = run("dreamblend", strength=50.0)
    assert torch.isfinite(guided[RESULT]).all() and not torch.equal(guided[RESULT], plain[RESULT])
    assert torch.equal(guided[REFERENCE], plain[REFERENCE])
