"""`wig.integrations.diffusers.PersonalizationGuidance` in stock modular pipelines — SDXL (the tiny
twin, a LoRA loaded by the pipeline's own ``load_lora_weights``) and SD 3 (a transformer) — against
diffusers' own CFG guider and hand-written loops that never touch the guider: ω = 0 runs the
unconditional branch with the LoRA disabled, ω = 0.4 on a second denoiser whose weights hold
θ + 0.4·B·A."""

import numpy as np
import pytest
import torch
from diffusers import ModularPipeline, StableDiffusionXLPipeline
from diffusers.guiders import ClassifierFreeGuidance
from lora_files import Spec, stranger_lora, write_in

from wig.branches import LORA_WEIGHT_NAME
from wig.integrations.diffusers import PersonalizationGuidance
from wig.personalization.lora import lora_layers

from conftest import (
    generators,
    guider_example,
    lora_written_in,
    sdxl_reference_loop,
    to_uint8,
    unet_with_lora_written_in,
    unet_without_lora,
)

pytestmark = pytest.mark.check

PROMPTS = ["a photo of sks dog", "a sks dog on the beach"]
SEEDS = (0, 7)
SIZE, STEPS, LAMBDA = 64, 4, 5.0
COMPONENTS = ["unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"]


def _generator():
    return generators(SEEDS)


@pytest.fixture(scope="module")
def modular(tiny_sdxl, sdxl_lora_path):
    pipe = ModularPipeline.from_pretrained(str(tiny_sdxl))
    pipe.load_components(names=COMPONENTS, torch_dtype=torch.float32)
    pipe.load_lora_weights(str(sdxl_lora_path.parent), weight_name=sdxl_lora_path.name, adapter_name="subject")
    return pipe


def _run(pipe, guider):
    pipe.update_components(guider=guider)
    out = pipe(
        prompt=PROMPTS, num_inference_steps=STEPS, height=SIZE, width=SIZE, generator=_generator(), output="images"
    )
    return to_uint8(out)


def _scalings(pipe):
    return _scalings_of(pipe.unet)


def _scalings_of(model):
    """Every LoRA layer's scaling per adapter: what the guider changes and must put back."""
    return [(id(layer), a, v) for layer in lora_layers([model]) for a, v in layer.scaling.items()]


def _reference(tiny_sdxl, sdxl_lora_path, uncond_unet):
    stock = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl))
    stock.load_lora_weights(str(sdxl_lora_path.parent), weight_name=sdxl_lora_path.name)
    x = sdxl_reference_loop(stock, PROMPTS, SEEDS, SIZE, STEPS, LAMBDA, uncond_unet)
    with torch.no_grad():
        image = stock.vae.decode(x / stock.vae.config.scaling_factor, return_dict=False)[0]
    return to_uint8(stock.image_processor.postprocess(image, output_type="pil"))


def test_omega_one_is_diffusers_own_cfg_guider(modular):
    ours = _run(modular, PersonalizationGuidance(guidance_scale=LAMBDA, omega=1.0))
    ref = _run(modular, ClassifierFreeGuidance(guidance_scale=LAMBDA))
    assert np.abs(ours - ref).max() <= 1


def test_omega_zero_runs_the_unconditional_branch_without_the_lora(modular, tiny_sdxl, sdxl_lora_path):
    ours = _run(modular, PersonalizationGuidance(guidance_scale=LAMBDA, omega=0.0))
    ref = _reference(tiny_sdxl, sdxl_lora_path, unet_without_lora)
    assert np.abs(ours - ref).max() <= 1
    cfg = _run(modular, ClassifierFreeGuidance(guidance_scale=LAMBDA))
    assert np.abs(ours - cfg).max() > 20  # ω matters on this LoRA


def test_omega_between_is_the_lora_written_into_the_weights(modular, tiny_sdxl, sdxl_lora_path):
    ours = _run(modular, PersonalizationGuidance(guidance_scale=LAMBDA, omega=0.4))
    ref = _reference(tiny_sdxl, sdxl_lora_path, unet_with_lora_written_in(tiny_sdxl, sdxl_lora_path, 0.4))
    assert np.abs(ours - ref).max() <= 1
    others = [_run(modular, PersonalizationGuidance(guidance_scale=LAMBDA, omega=w)) for w in (0.0, 1.0)]
    assert all(np.abs(ours - o).max() > 5 for o in others)


def test_the_pipeline_is_as_it_was_after_a_call(modular):
    before = _scalings(modular)
    plain = _run(modular, ClassifierFreeGuidance(guidance_scale=LAMBDA))
    _run(modular, PersonalizationGuidance(guidance_scale=LAMBDA, omega=0.3))
    assert _scalings(modular) == before
    assert np.array_equal(_run(modular, ClassifierFreeGuidance(guidance_scale=LAMBDA)), plain)


def test_a_batch_prepared_but_never_run_changes_nothing_for_the_next_guider(tiny_sdxl, modular):
    """An exception between prepare_models and the denoiser's forward (in the pipeline's own code,
    a ControlNet's, a callback's) leaves the denoiser armed but unchanged, and a later call's
    forward — a new guider's — runs on the weights as they are."""
    before = _scalings(modular)
    plain = _run(modular, ClassifierFreeGuidance(guidance_scale=LAMBDA))
    guider = PersonalizationGuidance(guidance_scale=LAMBDA, omega=0.0)

    def step():  # a pipeline step: it prepares the unconditional batch, then raises before the forward
        guider.set_state(step=0, num_inference_steps=4, timestep=torch.tensor(999))
        guider.prepare_inputs({"x": (torch.zeros(1), torch.zeros(1))})
        guider.prepare_models(modular.unet)
        guider.prepare_models(modular.unet)
        raise RuntimeError("a callback failed")

    with pytest.raises(RuntimeError, match="callback"):
        step()
    assert _scalings(modular) == before
    assert np.array_equal(_run(modular, ClassifierFreeGuidance(guidance_scale=LAMBDA)), plain)
    assert _scalings(modular) == before


def test_a_denoiser_that_raises_mid_forward_leaves_the_pipeline_as_it_was(tiny_sdxl, sdxl_lora_path):
    """A forward that raises inside the unconditional batch (here: in its fourth LoRA layer) puts every
    scaling back (torch's always-called hook), so a *new* CFG guider then draws byte for byte what it
    drew before PG was ever used."""
    pipe = ModularPipeline.from_pretrained(str(tiny_sdxl))
    pipe.load_components(names=COMPONENTS, torch_dtype=torch.float32)
    pipe.load_lora_weights(str(sdxl_lora_path.parent), weight_name=sdxl_lora_path.name, adapter_name="subject")
    before = _scalings(pipe)
    plain = _run(pipe, ClassifierFreeGuidance(guidance_scale=LAMBDA))
    layer = list(lora_layers([pipe.unet]))[3]
    calls = []

    def boom(module, args):
        calls.append(module.scaling["subject"])
        if len(calls) == 2:  # the first step's unconditional batch, its adapters at ω
            raise RuntimeError("out of memory (simulated)")

    handle = layer.register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            _run(pipe, PersonalizationGuidance(guidance_scale=LAMBDA, omega=0.0))
    finally:
        handle.remove()
    assert calls[1] == 0.0 and calls[0] != 0.0  # it raised with the adapters scaled
    assert _scalings(pipe) == before
    assert np.array_equal(_run(pipe, ClassifierFreeGuidance(guidance_scale=LAMBDA)), plain)


def test_the_guider_saves_and_reloads_its_settings(tmp_path):
    guider = PersonalizationGuidance(guidance_scale=4.0, omega=0.25, adapter_names=["subject"], start=0.1, stop=0.9)
    guider.save_pretrained(tmp_path)
    again = PersonalizationGuidance.from_pretrained(tmp_path)
    keys = ("guidance_scale", "omega", "adapter_names", "guidance_rescale", "start", "stop", "enabled")
    assert {k: again.config[k] for k in keys} == {k: guider.config[k] for k in keys}
    assert again.config["adapter_names"] == ["subject"] and again.omega == 0.25


def test_named_adapters_and_a_missing_lora_are_refused(modular, tiny_sdxl):
    with pytest.raises(ValueError, match="adapter.*nope.*not active"):
        _run(modular, PersonalizationGuidance(guidance_scale=LAMBDA, omega=0.0, adapter_names=["nope"]))
    plain = ModularPipeline.from_pretrained(str(tiny_sdxl))
    plain.load_components(names=COMPONENTS, torch_dtype=torch.float32)
    with pytest.raises(ValueError, match="needs a LoRA"):
        _run(plain, PersonalizationGuidance(guidance_scale=LAMBDA, omega=0.0))


def test_the_readme_example_runs_as_written_on_the_twin(tiny_sdxl, sdxl_lora_path, modular):
    """docs/library.md "PG in stock diffusers, as a guider": its code block, with the twin's and the LoRA's
    folders for the hub names and the CPU for CUDA, draws what the guider draws here."""
    code = guider_example(tiny_sdxl, sdxl_lora_path.parent)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    modular.update_components(guider=PersonalizationGuidance(guidance_scale=5.0, omega=0.0))
    gen = torch.Generator("cpu").manual_seed(0)
    ref = modular(prompt="a photo of sks dog in the snow", generator=gen, output="images")[0]
    assert np.abs(to_uint8([scope["image"]]) - to_uint8([ref])).max() <= 1


# --- beyond SDXL: a transformer modular pipeline (Stable Diffusion 3) ---------------------------
# SD 3 builds offline as a tiny twin from CLIP's vocabulary: its T5 is left out (text_encoder_3 =
# None, which SD 3 supports: its T5 states are zeros). Flux 2, QwenImage and Wan need Mistral, Qwen
# or UMT5 tokenizer files that exist only on the hub.

SD3_COMPONENTS = ["transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"]


@pytest.fixture(scope="module")
def tiny_sd3(tmp_path_factory):
    """A seeded random-init SD 3 twin (MMDiT, two CLIP encoders, no T5) and a random rank-4 LoRA of
    its transformer's attention, saved as StableDiffusion3Pipeline saves LoRAs."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from diffusers import StableDiffusion3Pipeline as SD3
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from wig.models.tiny import clip_tokenizer, seeded

    out = tmp_path_factory.mktemp("tiny-sd3")
    with seeded(0):
        transformer = SD3Transformer2DModel(
            sample_size=32,
            patch_size=1,
            in_channels=4,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            caption_projection_dim=32,
            joint_attention_dim=32,
            pooled_projection_dim=64,
            out_channels=4,
        )
    with seeded(1):
        vae = AutoencoderKL(
            block_out_channels=[16, 32],
            down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2,
            latent_channels=4,
            norm_num_groups=8,
            shift_factor=0.0609,
            scaling_factor=1.5035,
        )
    clip = dict(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=32,
    )
    with seeded(2):
        text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(**clip))
    with seeded(3):
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**clip))
    SD3(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tokenizer(pad_token="!"),
        text_encoder_3=None,
        tokenizer_3=None,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    ).save_pretrained(out / "model", safe_serialization=True)
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"]), "random")
    gen = torch.Generator("cpu").manual_seed(1)
    for layer in lora_layers([transformer]):
        for mat in (layer.lora_A["random"].weight, layer.lora_B["random"].weight):
            mat.data.copy_(torch.randn(mat.shape, generator=gen) * 0.3)
    state = get_peft_model_state_dict(transformer, adapter_name="random")
    SD3.save_lora_weights(out / "lora", transformer_lora_layers=state, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def modular_sd3(tiny_sd3):
    pipe = ModularPipeline.from_pretrained(str(tiny_sd3 / "model"))
    pipe.load_components(names=SD3_COMPONENTS, torch_dtype=torch.float32)
    pipe.load_lora_weights(str(tiny_sd3 / "lora"), weight_name=LORA_WEIGHT_NAME, adapter_name="subject")
    return pipe


def _run_sd3(pipe, guider):
    pipe.update_components(guider=guider)
    out = pipe(
        prompt=PROMPTS,
        negative_prompt="",  # the modular SD 3 pipeline guides only with a negative prompt given
        num_inference_steps=STEPS,
        height=SIZE,
        width=SIZE,
        generator=generators(SEEDS),
        output="images",
    )
    return to_uint8(out)


def _sd3_reference(tiny_sd3, omega):
    """Stock StableDiffusion3Pipeline's pieces in a loop of our own: its encode_prompt, noise,
    flow-matching Euler steps and decode; the conditional branch on the LoRA'd transformer, the
    unconditional one with the LoRA disabled (ω 0) or on a second transformer holding θ + ω·B·A."""
    from diffusers import StableDiffusion3Pipeline as SD3
    from diffusers.utils.torch_utils import randn_tensor

    stock = SD3.from_pretrained(str(tiny_sd3 / "model"), text_encoder_3=None, tokenizer_3=None)
    stock.load_lora_weights(str(tiny_sd3 / "lora"), weight_name=LORA_WEIGHT_NAME)
    cond, uncond, pooled, uncond_pooled = stock.encode_prompt(
        PROMPTS, None, None, device="cpu", do_classifier_free_guidance=True, negative_prompt=""
    )
    if omega == 0:

        def weak(**kw):
            stock.transformer.disable_adapters()
            try:
                return stock.transformer(**kw, return_dict=False)[0]
            finally:
                stock.transformer.enable_adapters()
    else:
        lora = tiny_sd3 / "lora/pytorch_lora_weights.safetensors"
        lerped = lora_written_in(tiny_sd3 / "model", lora, omega, component="transformer")

        def weak(**kw):
            return lerped(**kw, return_dict=False)[0]

    scheduler = stock.scheduler
    scheduler.set_timesteps(STEPS)
    x = randn_tensor((len(PROMPTS), 4, SIZE // 2, SIZE // 2), generator=generators(SEEDS), dtype=cond.dtype)
    with torch.no_grad():
        for t in scheduler.timesteps:
            ts = t.expand(len(x))
            c = stock.transformer(
                hidden_states=x, timestep=ts, encoder_hidden_states=cond, pooled_projections=pooled, return_dict=False
            )[0]
            u = weak(hidden_states=x, timestep=ts, encoder_hidden_states=uncond, pooled_projections=uncond_pooled)
            x = scheduler.step(u + LAMBDA * (c - u), t, x, return_dict=False)[0]
        x = x / stock.vae.config.scaling_factor + stock.vae.config.shift_factor
        image = stock.vae.decode(x, return_dict=False)[0]
    return to_uint8(stock.image_processor.postprocess(image, output_type="pil"))


def test_sd3_omega_one_is_diffusers_own_cfg_guider(modular_sd3):
    ours = _run_sd3(modular_sd3, PersonalizationGuidance(guidance_scale=LAMBDA, omega=1.0))
    assert np.abs(ours - _run_sd3(modular_sd3, ClassifierFreeGuidance(guidance_scale=LAMBDA))).max() <= 1


@pytest.mark.parametrize("omega", [0.0, 0.4])
def test_sd3_omega_below_one_is_the_unconditional_branch_on_theta_omega(modular_sd3, tiny_sd3, omega):
    before = _scalings_of(modular_sd3.transformer)
    ours = _run_sd3(modular_sd3, PersonalizationGuidance(guidance_scale=LAMBDA, omega=omega))
    assert _scalings_of(modular_sd3.transformer) == before
    assert np.abs(ours - _sd3_reference(tiny_sd3, omega)).max() <= 1
    cfg = _run_sd3(modular_sd3, ClassifierFreeGuidance(guidance_scale=LAMBDA))
    assert np.abs(ours - cfg).max() > 5  # ω matters on this LoRA


# --- real adapter setups: a subject LoRA beside a style LoRA on other layers ---------------------
# Both are strangers' files (`lora_files.stranger_lora`: peft + stock save_lora_weights, alpha ≠
# rank); the references write θ + Σ coefficient·ΔW into plain UNets by hand.

SUBJECT = Spec(("to_q", "to_k", "to_v", "to_out.0"), r=3, alpha=7)
STYLE = Spec(("proj_in", "proj_out", "ff.net.2", "conv1", "conv2"), r=2, alpha=5)


@pytest.fixture(scope="module")
def subject_and_style(tiny_sdxl, tmp_path_factory):
    from wig.models.pipelines import load_pipeline

    pipe = load_pipeline(str(tiny_sdxl), device="cpu", dtype="float32")
    folder = tmp_path_factory.mktemp("two-adapters")
    return {
        "subject": stranger_lora(pipe, folder / "subject", {"unet": SUBJECT}, seed=3, std=0.15),
        "style": stranger_lora(pipe, folder / "style", {"unet": STYLE}, seed=4, std=0.08),
    }


def _two_adapters(tiny_sdxl, loras):
    pipe = ModularPipeline.from_pretrained(str(tiny_sdxl))
    pipe.load_components(names=COMPONENTS, torch_dtype=torch.float32)
    for name, lora in loras.items():
        pipe.load_lora_weights(str(lora.file.parent), weight_name=lora.file.name, adapter_name=name)
    pipe.set_adapters(list(loras))  # each load activates its own adapter alone: all of them, as a user does
    return pipe


def _written_unet(tiny_sdxl, loras, coefficients):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(tiny_sdxl), subfolder="unet")
    for name, c in coefficients.items():
        write_in(unet, "unet", loras[name], c)
    return unet


def _hand_loop(tiny_sdxl, loras, strong, weak):
    stock = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl))
    stock.unet = _written_unet(tiny_sdxl, loras, strong)
    weak_unet = _written_unet(tiny_sdxl, loras, weak)
    x = sdxl_reference_loop(
        stock, PROMPTS, SEEDS, SIZE, STEPS, LAMBDA, lambda _: lambda *a, **kw: weak_unet(*a, **kw)[0]
    )
    with torch.no_grad():
        image = stock.vae.decode(x / stock.vae.config.scaling_factor, return_dict=False)[0]
    return to_uint8(stock.image_processor.postprocess(image, output_type="pil"))


@pytest.mark.parametrize(
    ("omega", "subject_weight", "lora_scale"),
    [(0.0, 1.0, None), (0.5, 1.0, None), (0.5, 0.6, None), (0.5, 1.0, 0.7)],
    ids=["omega0", "omega0.5", "set_adapters-0.6", "cross_attention_kwargs-0.7"],
)
def test_pg_on_one_of_two_adapters_on_disjoint_layers_is_the_hand_loop(
    tiny_sdxl, subject_and_style, omega, subject_weight, lora_scale
):
    """adapter_names = the subject: θ' = θ + s·(w·ΔW_subject + ΔW_style) and θω = θ + s·(ω·w·ΔW_subject +
    ΔW_style), w the subject's set_adapters weight, s the cross_attention_kwargs scale."""
    pipe = _two_adapters(tiny_sdxl, subject_and_style)
    pipe.set_adapters(["subject", "style"], adapter_weights=[subject_weight, 1.0])
    pipe.update_components(
        guider=PersonalizationGuidance(guidance_scale=LAMBDA, omega=omega, adapter_names=["subject"])
    )
    kwargs = {} if lora_scale is None else {"cross_attention_kwargs": {"scale": lora_scale}}
    before = _scalings(pipe)
    ours = to_uint8(
        pipe(
            prompt=PROMPTS,
            num_inference_steps=STEPS,
            height=SIZE,
            width=SIZE,
            generator=_generator(),
            output="images",
            **kwargs,
        )
    )
    assert _scalings(pipe) == before
    s = 1.0 if lora_scale is None else lora_scale
    ref = _hand_loop(
        tiny_sdxl,
        subject_and_style,
        strong={"subject": s * subject_weight, "style": s},
        weak={"subject": s * omega * subject_weight, "style": s},
    )
    assert np.abs(ours - ref).max() <= 1
    cfg = _hand_loop(
        tiny_sdxl,
        subject_and_style,
        strong={"subject": s * subject_weight, "style": s},
        weak={"subject": s * subject_weight, "style": s},
    )
    assert np.abs(ours - cfg).max() > 5  # ω matters here


def test_adapters_deleted_and_set_again_are_guided_as_loaded(tiny_sdxl, subject_and_style, tmp_path):
    """A third adapter loaded, PG run (the layer list cached), the adapter deleted and the others set
    again: the guider sees the pipeline as it is now, and draws what it draws on the two alone."""
    from wig.models.pipelines import load_pipeline

    extra = stranger_lora(
        load_pipeline(str(tiny_sdxl), device="cpu", dtype="float32"),
        tmp_path / "extra",
        {"unet": Spec(("to_k", "ff.net.2"), r=2, alpha=4)},
        seed=9,
        std=0.2,
    )
    guider = PersonalizationGuidance(guidance_scale=LAMBDA, omega=0.0, adapter_names=["subject"])
    two = _two_adapters(tiny_sdxl, subject_and_style)
    expected = _run(two, guider)
    three = _two_adapters(tiny_sdxl, {**subject_and_style, "extra": extra})
    with_extra = _run(three, guider)
    assert np.abs(with_extra - expected).max() > 5
    three.delete_adapters("extra")
    three.set_adapters(["subject", "style"])
    assert np.abs(_run(three, guider) - expected).max() <= 1


def test_a_disabled_lora_is_cfg_on_the_base_model_said_once(tiny_sdxl, subject_and_style):
    pipe = _two_adapters(tiny_sdxl, subject_and_style)
    pipe.disable_lora()
    with pytest.warns(UserWarning, match="disabled.*CFG on the base model") as caught:
        ours = _run(pipe, PersonalizationGuidance(guidance_scale=LAMBDA, omega=0.3))
    assert len([w for w in caught if "disabled" in str(w.message)]) == 1
    assert np.array_equal(ours, _run(pipe, ClassifierFreeGuidance(guidance_scale=LAMBDA)))
    base = ModularPipeline.from_pretrained(str(tiny_sdxl))
    base.load_components(names=COMPONENTS, torch_dtype=torch.float32)
    assert np.abs(ours - _run(base, ClassifierFreeGuidance(guidance_scale=LAMBDA))).max() <= 1


def test_a_fused_lora_is_refused_in_one_line_and_pg_runs_once_unfused(tiny_sdxl, subject_and_style):
    pipe = _two_adapters(tiny_sdxl, subject_and_style)
    guider = PersonalizationGuidance(guidance_scale=LAMBDA, omega=0.0, adapter_names=["subject"])
    unfused = _run(pipe, guider)
    pipe.fuse_lora(components=["unet"])
    with pytest.raises(
        ValueError, match=r"^PersonalizationGuidance: adapter\(s\) .*subject.* fused .*unfuse_lora\(\)"
    ) as err:
        _run(pipe, guider)
    assert "\n" not in str(err.value)
    pipe.unfuse_lora(components=["unet"])
    assert np.abs(_run(pipe, guider) - unfused).max() <= 1


# --- wig's sampler and the guider agree ----------------------------------------------------------


@pytest.mark.parametrize("omega", [0.0, 0.35, 1.0])
def test_wig_generate_and_the_guider_draw_the_same_image(tiny_sdxl, tmp_path, omega):
    """A stranger's SDXL LoRA (alpha ≠ rank, rank/alpha patterns, attention, feed-forward and resnet
    convolutions, both text encoders): `wig generate` (the classic pipeline, all branches in one
    batched forward) and the modular pipeline with `PersonalizationGuidance` give the same images
    for the same prompts, seeds and (λ, ω). (SDXL's null condition is zeros, so the text encoders'
    LoRA reaches the conditional branch alone in both.)"""
    from lora_files import TEXT_TARGETS, UNET_TARGETS
    from PIL import Image

    from wig.cli import main
    from wig.models.pipelines import load_pipeline

    pipe = load_pipeline(str(tiny_sdxl), device="cpu", dtype="float32")
    first = lambda suffix: next(n for n, _ in pipe.unet.named_modules() if n.endswith(suffix))  # noqa: E731
    specs = {
        "unet": Spec(
            UNET_TARGETS,
            r=3,
            alpha=7,
            rank_pattern={first("attn2.to_k"): 5},
            alpha_pattern={first("resnets.0.conv2"): 1.5},
        ),
        "text_encoder": Spec(TEXT_TARGETS, r=2, alpha=5),
        "text_encoder_2": Spec(TEXT_TARGETS, r=4, alpha=3),
    }
    lora = stranger_lora(pipe, tmp_path / "lora", specs, seed=5, std=0.08)
    args = ["generate", "--model", str(tiny_sdxl), "--lora", str(lora.file), "--method", "pg"]
    args += ["--omega", str(omega), "--scale", str(LAMBDA), "--steps", str(STEPS)]
    args += ["--height", str(SIZE), "--width", str(SIZE), "--out", str(tmp_path / "wig-{index}.png"), "--quiet"]
    for prompt, seed in zip(PROMPTS, SEEDS):
        args += ["--prompt", prompt, "--seed", str(seed)]
    assert main(args) == 0
    ours = to_uint8([Image.open(tmp_path / f"wig-{i}.png") for i in range(len(PROMPTS))])

    modular = ModularPipeline.from_pretrained(str(tiny_sdxl))
    modular.load_components(names=COMPONENTS, torch_dtype=torch.float32)
    modular.load_lora_weights(str(lora.file.parent), weight_name=lora.file.name, adapter_name="subject")
    guided = _run(modular, PersonalizationGuidance(guidance_scale=LAMBDA, omega=omega))
    assert np.abs(ours - guided).max() <= 1
    if omega != 1.0:
        cfg = _run(modular, ClassifierFreeGuidance(guidance_scale=LAMBDA))
        assert np.abs(ours - cfg).max() > 5  # ω matters here
