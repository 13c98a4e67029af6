"""ClassDiffusion (Custom Diffusion + the semantic preservation loss) on the tiny twin: SPL as
defined, runs reproducible and leaving the pipeline as it was, PG(ω) with the exact per-sample
delta equal to a separate UNet with θ + ω·ΔW written into its weights, bad files refused."""

import copy
import shutil

import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from wig.concepts import read_images
from wig.guidance import Guidance
from wig.models.families.sd import build_tiny_sd
from wig.models.pipelines import load_pipeline
from wig.personalization import Subject, make
from wig.personalization.methods.classdiffusion.custom_diffusion import (
    CustomDiffusionError,
    pooled,
    rescale,
    spl,
    trained_layers,
)
from wig.personalization.tokens import TokenError
from wig.sampling.sampler import Request, sample_latents

from conftest import STEPS, H, W, generators, reference_loop
from test_training import DOG, RES

pytestmark = pytest.mark.check

INSTANCE = "a photo of <new1> dog"
PROMPTS = ["a photo of <new1> dog", "a <new1> dog on the beach"]


def _method(**kw):
    return make("classdiffusion", **(dict(steps=12, weak_step=4, lr=1e-3, resolution=RES) | kw))


def _pipe(path):
    return load_pipeline(str(path), device="cpu", dtype="float32")


def _train(pipe, out, seed=3, **kw):
    return _method(**kw).train(pipe, Subject(read_images(DOG), INSTANCE), out, seed=seed, progress=False)


@pytest.fixture(scope="module")
def pipe(tiny_sd):
    return _pipe(tiny_sd)


@pytest.fixture(scope="module")
def run(pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("cd") / "run"
    _train(pipe, out)
    return out


def test_spl_is_one_minus_the_cosine_of_pooled_features():
    a = torch.tensor([[3.0, 4.0, 0.0], [1.0, 0.0, 0.0]])
    b = torch.tensor([[4.0, 3.0, 0.0], [0.0, 2.0, 0.0]])
    # row 0: cos = 24/25; row 1: orthogonal, cos = 0 → mean of (1/25, 1)
    torch.testing.assert_close(spl(a, b), torch.tensor((1 / 25 + 1.0) / 2), rtol=0, atol=1e-7)
    assert float(spl(a, a)) == pytest.approx(0.0, abs=1e-7)


def test_spl_reads_the_text_encoders_pooled_output(pipe):
    texts = ["a photo of a dog", "a photo of a cat"]
    by_hand = pipe.text_encoder(pipe.tokenizer(texts, padding="max_length", return_tensors="pt").input_ids)[1]
    torch.testing.assert_close(pooled(pipe, texts, grad=False), by_hand, rtol=0, atol=0)


def test_rescale_masks_the_pasted_image():
    from PIL import Image

    image = Image.new("RGB", (40, 30), (255, 255, 255))
    seen, canvas = set(), False
    for seed in range(40):
        px, mask, prefix = rescale(image, 32, 16, torch.Generator().manual_seed(seed), enabled=True)
        assert px.shape == (3, 32, 32) and mask.shape == (1, 16, 16)
        seen.add(prefix)
        if prefix in ("zoomed in ", "close up "):  # grown and cropped: all of it is image
            assert bool((mask == 1).all()) and bool((px == 1).all())
        else:  # shrunk onto a zero canvas: the mask lies inside the white square
            inside = torch.nn.functional.interpolate(mask[None], size=32)[0].expand(3, -1, -1) == 1
            assert bool((px[inside] == 1).all())
            canvas |= bool((px == 0).any())  # their canvas: zeros
    assert {"a far away ", "very small ", "zoomed in ", "close up "} <= seen and canvas
    px, mask, prefix = rescale(image, 32, 16, torch.Generator().manual_seed(0), enabled=False)
    assert prefix == "" and bool((mask[0, 1:-1, 1:-1] == 1).all())


def test_training_leaves_the_pipeline_as_it_was(tiny_sd, pipe, run):
    fresh = _pipe(tiny_sd)
    assert len(pipe.tokenizer) == len(fresh.tokenizer)
    for name, layer in trained_layers(pipe.unet).items():
        assert (
            torch.equal(layer.weight, dict(fresh.unet.named_modules())[name].weight) and not layer.weight.requires_grad
        )


def test_one_run_writes_weights_and_token_per_checkpoint_and_the_spl_falls(run):
    method = _method()
    for files in (method.checkpoint_files(run), method.embeddings(run)):
        assert all(f.is_file() for f in files.values())
        assert files["full"].read_bytes() != files["weak"].read_bytes()
    assert list(load_file(str(method.embeddings(run)["full"]))) == ["<new1>"]  # diffusers' Custom Diffusion layout
    log = pl.read_parquet(run / "log.parquet")
    assert log.columns == ["step", "loss", "instance_loss", "spl", "lr", "seconds"]
    assert (log["lr"] == 2e-3).all()  # lr × batch 2 (their --scale_lr)
    assert log["spl"][-3:].mean() < log["spl"][0] - 1e-3, log["spl"].to_list()


def test_same_seed_gives_identical_files(pipe, run, tmp_path):
    _train(pipe, tmp_path / "again")
    _train(pipe, tmp_path / "other", seed=4)
    method = _method()
    for files in (method.checkpoint_files, method.embeddings):
        for name, path in files(run).items():
            assert files(tmp_path / "again")[name].read_bytes() == path.read_bytes()
            assert files(tmp_path / "other")[name].read_bytes() != path.read_bytes()


def _materialised(pipe, run, omega):
    """A separate UNet with θ + ω·(θ' − θ) written into its trained weights."""
    unet = copy.deepcopy(pipe.unet)
    state = load_file(str(_method().checkpoint_files(run)["full"]))
    for name, layer in trained_layers(unet).items():
        attn, proj = name.rsplit(".", 1)
        trained = state[f"{attn}.processor.{proj}_custom_diffusion.weight"]
        layer.weight.data = layer.weight.data + omega * (trained - layer.weight.data)
    return unet


@pytest.mark.parametrize("omega", [0.0, 0.4, 1.0])
def test_pg_with_the_delta_equals_interpolated_weights(tiny_sd, run, omega):
    base = _pipe(tiny_sd)
    weak_unet, full_unet = _materialised(base, run, omega), _materialised(base, run, 1.0)
    tuned = _pipe(tiny_sd)
    weights = _method().attach(tuned, run)
    request = Request(prompts=PROMPTS, generators=generators(), steps=STEPS, height=H, width=W)
    ours = sample_latents(tuned, Guidance("pg", 7.5, omega=omega), request, progress=False, weights=weights)
    ref = reference_loop(
        tuned,
        [
            lambda x, t, c, u: weak_unet(x, t, encoder_hidden_states=u, return_dict=False)[0],
            lambda x, t, c, u: full_unet(x, t, encoder_hidden_states=c, return_dict=False)[0],
        ],
        lambda u, c: u + 7.5 * (c - u),
        prompts=PROMPTS,
    )
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    if omega < 1:
        cfg = sample_latents(tuned, Guidance("cfg", 7.5), request, progress=False, weights=weights)
        assert (ours - cfg).abs().max() > 1e-3  # ω reaches the image


def _refused(pipe, run, error, match):
    n_tokens = len(pipe.tokenizer)
    with pytest.raises(error, match=match):
        _method().attach(pipe, run)
    assert len(pipe.tokenizer) == n_tokens  # nothing added


def test_a_file_for_another_base_is_refused_by_name(run, tmp_path):
    other = tmp_path / "other-base"
    build_tiny_sd(other, seed=1)  # same architecture, other weights
    _refused(
        _pipe(other),
        run,
        CustomDiffusionError,
        r"full/pytorch_custom_diffusion_weights.safetensors was trained on another base",
    )


@pytest.mark.parametrize("case", ["stripped", "int"])
def test_a_file_without_its_base_record_or_of_integers_is_refused_by_name(tiny_sd, run, tmp_path, case):
    from safetensors.torch import save_file

    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    path = bad / "full/pytorch_custom_diffusion_weights.safetensors"
    state = load_file(str(path))
    if case == "int":  # the base record kept: the dtype is what is wrong
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        key = sorted(state)[0]
        save_file(dict(state, **{key: state[key].round().to(torch.int32)}), str(path), metadata=meta)
        match = f"{key} is stored as int32, not floats"
    else:  # the same tensors re-saved without safetensors metadata: no base_sha256 to check
        save_file(state, str(path))
        match = "no base_sha256 in its metadata, so the base it was trained on cannot be checked"
    _refused(_pipe(tiny_sd), bad, CustomDiffusionError, match)


def test_a_token_the_vocabulary_has_is_refused(tiny_sd, run):
    pipe = _pipe(tiny_sd)
    _method().attach(pipe, run)
    _refused(pipe, run, TokenError, r"learned_embeds.safetensors: token <new1> already exists")


def test_a_broken_weight_file_is_refused_by_name(tiny_sd, run, tmp_path):
    bad = tmp_path / "bad"
    for name in ("full", "weak"):
        (bad / name).mkdir(parents=True)
        (bad / name / "learned_embeds.safetensors").write_bytes(
            (run / name / "learned_embeds.safetensors").read_bytes()
        )
        (bad / name / "pytorch_custom_diffusion_weights.safetensors").write_bytes(b"\x00" * 16)
    _refused(_pipe(tiny_sd), bad, CustomDiffusionError, "not a safetensors Custom Diffusion file: .*full/")


def test_settings_it_cannot_honour_are_refused_when_made():
    from wig.errors import WigError

    with pytest.raises(WigError, match="mixed_precision must be 'no', got 'fp16'"):
        make("classdiffusion", mixed_precision="fp16")
    with pytest.raises(WigError, match="prior_weight must be 0.0"):
        make("classdiffusion", prior_weight=1.0)


def test_gradient_checkpointing_trains_the_same_run(pipe, run, tmp_path):
    _train(pipe, tmp_path / "ckpt", gradient_checkpointing=True)
    assert not pipe.unet.is_gradient_checkpointing
    for files in (_method().checkpoint_files, _method().embeddings):
        for name, path in files(run).items():
            torch.testing.assert_close(load_file(str(files(tmp_path / "ckpt")[name])), load_file(str(path)))


@pytest.mark.parametrize("method", ["classdiffusion", "db-lora-ti"])
def test_sd_only_methods_refuse_a_sana_pipeline_by_name(tiny_sana, method, tmp_path):
    from wig.errors import WigError

    sana = load_pipeline(str(tiny_sana), device="cpu", dtype="float32")
    with pytest.raises(WigError, match=f"{method} needs .*CLIP text encoder.*which the sana family is not"):
        make(method).train(sana, Subject(read_images(DOG), "a photo of <new1> dog"), tmp_path / "run", progress=False)
    with pytest.raises(WigError, match=f"{method} (needs|cannot run on) .*sana"):
        make(method).attach(sana, tmp_path / "run")
    assert not (tmp_path / "run").exists()
