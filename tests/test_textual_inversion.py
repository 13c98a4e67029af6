"""DreamBooth-LoRA + textual inversion (db-lora-ti) on the tiny twin: one run's files load in stock
diffusers and give wig's images; runs are reproducible; the new tokens are learned and matter;
bad embedding files are refused before the pipeline changes."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file, save_file

from wig.concepts import read_images
from wig.guidance import Guidance
from wig.models.pipelines import load_pipeline
from wig.personalization import Subject, make
from wig.personalization.lora import adapter_names
from wig.personalization.tokens import EMBEDDINGS_KEY, LearnedTokens, TokenError
from wig.personalization.training import denoising_loss
from wig.sampling.sampler import sample

from conftest import generators, to_uint8
from test_training import DOG, RES

pytestmark = pytest.mark.check

TOKENS = ["<s0>", "<s1>"]
INSTANCE = "a photo of <s0><s1> dog"
KW = dict(steps=3, height=RES, width=RES, progress=False)


def _method(**kw):
    settings = dict(steps=12, weak_step=4, lr=1e-3, embedding_lr=1e-2, resolution=RES, prior_weight=0.0)
    return make("db-lora-ti", **(settings | kw))


def _train(pipe, out, seed=3, **settings):
    method = _method(**settings)
    assert method.identifier("sks") == "<s0><s1>"
    return method.train(pipe, Subject(read_images(DOG), INSTANCE), out, seed=seed, progress=False)


def _pipe(tiny_sd):
    return load_pipeline(str(tiny_sd), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def pipe(tiny_sd):
    return _pipe(tiny_sd)


@pytest.fixture(scope="module")
def run(pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("ti") / "run"
    _train(pipe, out)
    return out


def _files(run):
    method = _method()
    return {**{f"lora_{k}": v for k, v in method.checkpoint_files(run).items()}, **method.embeddings(run)}


def test_training_leaves_the_pipeline_as_it_was(tiny_sd, pipe, run):
    fresh = _pipe(tiny_sd)
    assert len(pipe.tokenizer) == len(fresh.tokenizer) and "<s0>" not in pipe.tokenizer.get_vocab()
    assert torch.equal(
        pipe.text_encoder.get_input_embeddings().weight, fresh.text_encoder.get_input_embeddings().weight
    )
    assert not adapter_names(pipe)


def test_one_run_writes_lora_and_embeddings_per_checkpoint(run):
    files = _files(run)
    assert all(f.is_file() for f in files.values())
    full, weak = (load_file(str(files[k]))[EMBEDDINGS_KEY] for k in ("full", "weak"))
    assert full.shape == weak.shape == (2, 32)
    assert not torch.equal(full, weak)  # the weak checkpoint (step 4) is taken while they still train


def test_same_seed_gives_identical_files(pipe, run, tmp_path):
    _train(pipe, tmp_path / "again")
    _train(pipe, tmp_path / "other", seed=4)
    for name, path in _files(run).items():
        assert _files(tmp_path / "again")[name].read_bytes() == path.read_bytes(), name
        assert _files(tmp_path / "other")[name].read_bytes() != path.read_bytes(), name


def test_embeddings_freeze_after_their_fraction(pipe, tmp_path):
    # ti_fraction 0.25 of 12 steps: frozen from step 4 on, so the weak (step 4) and full rows agree
    _train(pipe, tmp_path / "early", ti_fraction=0.25)
    files = _method().embeddings(tmp_path / "early")
    assert torch.equal(*(load_file(str(files[k]))[EMBEDDINGS_KEY] for k in ("full", "weak")))


def test_stock_diffusers_loads_a_run_and_draws_what_wig_draws(tiny_sd, run):
    stock = StableDiffusionPipeline.from_pretrained(str(tiny_sd), safety_checker=None)
    stock.set_progress_bar_config(disable=True)
    stock.load_lora_weights(str(run / "full"))
    rows = load_file(str(_method().embeddings(run)["full"]))[EMBEDDINGS_KEY]
    # as the advanced DreamBooth script's model card loads its embeddings
    stock.load_textual_inversion(rows, token=TOKENS, text_encoder=stock.text_encoder, tokenizer=stock.tokenizer)
    prompts = ["a <s0><s1> dog on the beach", "a photo of <s0><s1> dog"]
    ref = stock(prompts, guidance_scale=7.5, num_inference_steps=3, height=RES, width=RES, generator=generators())

    ours_pipe = _pipe(tiny_sd)
    weights = _method().attach(ours_pipe, run)
    ours = sample(ours_pipe, prompts, Guidance("cfg", 7.5), generators(), weights=weights, **KW)
    assert np.abs(to_uint8(ours) - to_uint8(ref.images)).max() <= 1

    # the learned tokens reach the image: the weak checkpoint's rows in their place change it
    layer = ours_pipe.text_encoder.get_input_embeddings()
    ids = ours_pipe.tokenizer.convert_tokens_to_ids(TOKENS)
    layer.weight.data[ids] = load_file(str(_method().embeddings(run)["weak"]))[EMBEDDINGS_KEY]
    other = sample(ours_pipe, prompts, Guidance("cfg", 7.5), generators(), **KW)
    assert np.abs(to_uint8(other) - to_uint8(ours)).max() > 5


def test_an_sd21_shaped_twin_round_trips_through_stock_diffusers_too(tiny_sd, tmp_path):
    # SD 2.1's text encoder is wider (1024 for 768 in SD 1.5) and it predicts v: a twin with a
    # 48-wide encoder and v-prediction trains, writes (2, 48) rows and loads in stock diffusers
    import json

    from wig.models.families import default_config
    from wig.models.families.sd import build_tiny_sd

    config = json.loads(json.dumps(default_config("sd")))
    config["text_encoder"].update(hidden_size=48, projection_dim=48)
    config["unet"]["cross_attention_dim"] = 48
    config["scheduler"]["prediction_type"] = "v_prediction"
    build_tiny_sd(tmp_path / "sd21", config=config)
    pipe = _pipe(tmp_path / "sd21")
    _train(pipe, tmp_path / "run", steps=4, weak_step=2)
    rows = load_file(str(_method().embeddings(tmp_path / "run")["full"]))[EMBEDDINGS_KEY]
    assert rows.shape == (2, 48)
    stock = StableDiffusionPipeline.from_pretrained(str(tmp_path / "sd21"), safety_checker=None)
    stock.set_progress_bar_config(disable=True)
    stock.load_lora_weights(str(tmp_path / "run" / "full"))
    stock.load_textual_inversion(rows, token=TOKENS, text_encoder=stock.text_encoder, tokenizer=stock.tokenizer)
    ref = stock([INSTANCE], guidance_scale=7.5, num_inference_steps=3, height=RES, width=RES, generator=generators([0]))
    weights = _method().attach(pipe, tmp_path / "run")
    ours = sample(pipe, [INSTANCE], Guidance("cfg", 7.5), generators([0]), weights=weights, **KW)
    assert np.abs(to_uint8(ours) - to_uint8(ref.images)).max() <= 1
    # and its file does not fit the 32-wide SD 1.5 twin
    with pytest.raises(TokenError, match="whose width is 32"):
        _method().attach(_pipe(tiny_sd), tmp_path / "run")


def test_pg_and_ag_with_ti_equal_stock_loading_by_hand(tiny_sd, run):
    # the ∅ branch never holds the new tokens: PG's θω is the LoRA at scale ω whatever the tokens;
    # AG's pretrained weak branch keeps the full checkpoint's rows
    by_method = _pipe(tiny_sd)
    weights = _method().attach(by_method, run)
    by_hand = _pipe(tiny_sd)
    by_hand.load_lora_weights(str(run / "full"), adapter_name="full")
    by_hand.load_lora_weights(str(run / "weak"), adapter_name="weak")
    rows = load_file(str(_method().embeddings(run)["full"]))[EMBEDDINGS_KEY]
    by_hand.load_textual_inversion(rows, token=TOKENS, text_encoder=by_hand.text_encoder, tokenizer=by_hand.tokenizer)
    for guidance in (Guidance("pg", 7.5, omega=0.3), Guidance("ag", 7.5)):
        kw = dict(KW, output_type="np")
        ours = sample(by_method, [INSTANCE], guidance, generators([0]), weights=weights, **kw)
        np.testing.assert_array_equal(ours, sample(by_hand, [INSTANCE], guidance, generators([0]), **kw))
    # AG against the weak checkpoint encodes the prompt with the weak checkpoint's rows
    ag_weak = Guidance("ag", 7.5, weak="lora")
    kw = dict(KW, output_type="np")
    ours = sample(by_method, [INSTANCE], ag_weak, generators([0]), weights=weights, **kw)
    assert np.abs(ours - sample(by_hand, [INSTANCE], ag_weak, generators([0]), **kw)).max() > 1e-3


def test_training_lowers_the_instance_loss(tiny_sd, tmp_path):
    pipe = _pipe(tiny_sd)
    images = read_images(DOG)
    # the start of the run: the tokens at their seeded initialisation, no LoRA
    with LearnedTokens(pipe, TOKENS, torch.Generator("cpu").manual_seed(3)):
        before = denoising_loss(pipe, images, INSTANCE, RES)
    _train(pipe, tmp_path / "run", steps=40, weak_step=10)
    _method().attach(pipe, tmp_path / "run", weak=False)
    after = denoising_loss(pipe, images, INSTANCE, RES)
    assert after < before - 0.01, (before, after)


def _refused(tiny_sd, run, match):
    pipe = _pipe(tiny_sd)
    n_tokens = len(pipe.tokenizer)
    with pytest.raises(TokenError, match=match):
        _method().attach(pipe, run)
    assert len(pipe.tokenizer) == n_tokens and not adapter_names(pipe)  # the pipeline is untouched
    return pipe


def test_an_embedding_file_of_another_width_is_refused_by_name(tiny_sd, run, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("full", "weak"):
        (bad / name).mkdir()
        (bad / name / "pytorch_lora_weights.safetensors").write_bytes(
            (run / name / "pytorch_lora_weights.safetensors").read_bytes()
        )
        save_file({EMBEDDINGS_KEY: torch.zeros(2, 1024)}, str(bad / name / "learned_embeds.safetensors"))
    _refused(
        tiny_sd,
        bad,
        r"full/learned_embeds.safetensors: embeddings of shape \(2, 1024\) do not fit the text encoder, "
        "whose width is 32",
    )


def test_a_token_the_vocabulary_has_is_refused_by_name(tiny_sd, run):
    pipe = _pipe(tiny_sd)
    _method().attach(pipe, run)
    n_tokens, adapters = len(pipe.tokenizer), adapter_names(pipe)
    with pytest.raises(TokenError, match=r"full/learned_embeds.safetensors: token <s0> already exists"):
        _method().attach(pipe, run)
    assert len(pipe.tokenizer) == n_tokens and adapter_names(pipe) == adapters


def test_a_file_that_is_not_safetensors_is_refused_by_name(tiny_sd, run, tmp_path):
    bad = tmp_path / "bad"
    for name in ("full", "weak"):
        (bad / name).mkdir(parents=True)
        (bad / name / "pytorch_lora_weights.safetensors").write_bytes(
            (run / name / "pytorch_lora_weights.safetensors").read_bytes()
        )
        (bad / name / "learned_embeds.safetensors").write_bytes(b"not a tensor file")
    _refused(tiny_sd, bad, "not a safetensors token-embedding file: .*full/learned_embeds.safetensors")


def test_wig_generate_attaches_a_run_by_the_method_that_wrote_it(tiny_sd, run, tmp_path, capsys):
    from PIL import Image

    from wig.cli import main

    out = tmp_path / "cli.png"
    common = ["generate", "--model", str(tiny_sd), "--method", "pg", "--omega", "0.0", "--prompt", INSTANCE]
    size = ["--seed", "0", "--steps", "3", "--height", str(RES), "--width", str(RES), "--quiet"]
    assert main([*common, *size, "--run", str(run), "--out", str(out)]) == 0
    pipe = _pipe(tiny_sd)
    ref = sample(
        pipe, [INSTANCE], Guidance("pg", omega=0.0), generators([0]), weights=_method().attach(pipe, run), **KW
    )
    assert np.array_equal(to_uint8([Image.open(out)]), to_uint8(ref))
    # a folder without a run's config.json: one error naming the file, no image
    assert main([*common, *size, "--run", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 1
    assert f"not a fine-tune run folder: {tmp_path / 'config.json'}" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
