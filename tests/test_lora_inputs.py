"""LoRA files as strangers bring them (`lora_files.stranger_lora`: peft adapters saved by stock
``save_lora_weights`` with their metadata, or kohya's keys), read by wig exactly as stock diffusers
reads them, over the families that take them:

- CFG through wig's sampler equals the stock pipeline with the same file loaded by the stock
  ``load_lora_weights`` (uint8 ≤ 1);
- PG(ω) through wig equals a loop of stock pieces whose weak branch runs θ + ω·ΔW and whose strong
  branch θ + ΔW, both written into plain copies of the weights by hand (ΔW = (α/r)·B·A computed
  from the spec, the text encoders' too);
- a file whose metadata lies is refused in one line naming the file and the key.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from diffusers import SanaPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.utils.torch_utils import randn_tensor
from lora_files import SANA_TARGETS, TEXT_TARGETS, UNET_TARGETS, Spec, stranger_lora, write_in
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from wig.guidance import Guidance
from wig.models.pipelines import load_pipeline
from wig.personalization.lora import (
    LoraError,
    adapter_names,
    attach_loras,
    check_lora_file,
    load_lora,
    lora_layers,
)
from wig.sampling.sampler import Request, sample, sample_latents

from conftest import PROMPTS, generators, sdxl_reference_loop, to_uint8

pytestmark = pytest.mark.check

OMEGA = 0.35
# family: (size, steps, λ, stock class, stock kwargs)
FAMILIES = {
    "sd": (32, 6, 7.5, StableDiffusionPipeline, {"safety_checker": None}),
    "sdxl": (64, 4, 5.0, StableDiffusionXLPipeline, {}),
    "sana": (64, 6, 4.5, SanaPipeline, {}),  # test_sana's reference loop's size, steps and λ
}
# shape: the families it applies to (kohya's format is SD's; SANA's LoRAs adapt its transformer alone)
SHAPES = {
    "alpha-patterns-conv": ("sd", "sdxl"),
    "text-encoder": ("sd", "sdxl"),
    "kohya": ("sd",),
    "alpha-patterns": ("sana",),
}
CASES = [(family, shape) for shape, families in SHAPES.items() for family in families]


def _first(model, suffix: str) -> str:
    return next(name for name, _ in model.named_modules() if name.endswith(suffix))


def _specs(pipe, family: str, shape: str) -> dict[str, Spec]:
    if family == "sana":
        t = pipe.transformer
        return {
            "transformer": Spec(SANA_TARGETS, r=3, alpha=7, rank_pattern={_first(t, "attn2.to_k"): 5}),
        }
    unet = pipe.unet
    if shape == "text-encoder":
        specs = {
            "unet": Spec(("to_q", "to_k", "to_v", "to_out.0"), r=4, alpha=2),
            "text_encoder": Spec(TEXT_TARGETS, r=2, alpha=5),
        }
        if family == "sdxl":
            specs["text_encoder_2"] = Spec(TEXT_TARGETS, r=3, alpha=1.5)
        return specs
    specs = {
        "unet": Spec(
            UNET_TARGETS,
            r=3,
            alpha=7,
            rank_pattern={_first(unet, "attn1.to_q"): 5},
            alpha_pattern={_first(unet, "proj_out"): 2, _first(unet, "resnets.0.conv1"): 11},
        )
    }
    if shape == "kohya":
        specs["text_encoder"] = Spec(TEXT_TARGETS, r=2, alpha=1)
    return specs


@pytest.fixture(scope="module")
def twins(tiny_sd, tiny_sdxl, tiny_sana):
    return {"sd": tiny_sd, "sdxl": tiny_sdxl, "sana": tiny_sana}


@pytest.fixture(scope="module")
def loras(twins, tmp_path_factory):
    out = {}
    for family, shape in CASES:
        pipe = load_pipeline(str(twins[family]), device="cpu", dtype="float32")
        folder = tmp_path_factory.mktemp(f"{family}-{shape}")
        out[family, shape] = stranger_lora(pipe, folder, _specs(pipe, family, shape), kohya=shape == "kohya")
    return out


def _ours(twins, family, lora):
    pipe = load_pipeline(str(twins[family]), device="cpu", dtype="float32")
    attach_loras(pipe, lora.file)
    return pipe


def _request(family):
    size, steps, *_ = FAMILIES[family]
    return dict(steps=steps, height=size, width=size)


@pytest.mark.parametrize(("family", "shape"), CASES)
def test_cfg_through_wig_equals_the_stock_pipeline_loading_the_same_file(twins, loras, family, shape):
    lora = loras[family, shape]
    size, steps, scale, stock_cls, kwargs = FAMILIES[family]
    pipe = _ours(twins, family, lora)
    # every layer of the file, the text encoders' too, at the strength stock diffusers gives it
    stock = stock_cls.from_pretrained(str(twins[family]), **kwargs)
    stock.set_progress_bar_config(disable=True)
    stock.load_lora_weights(str(lora.file))
    ours_layers = {
        (c, n): (m.scaling["full"], m.r["full"])
        for c in lora.components()
        for n, m in getattr(pipe, c).named_modules()
        if hasattr(m, "scaling") and "full" in m.scaling
    }
    assert set(ours_layers) == set(lora.deltas)
    stock_layers = {
        (c, n): (m.scaling[a], m.r[a])
        for c in lora.components()
        for n, m in getattr(stock, c).named_modules()
        if hasattr(m, "scaling")
        for a in m.scaling
    }
    assert ours_layers == stock_layers
    assert len({s for s, _ in ours_layers.values()}) > 1  # alpha ≠ rank: the scalings are not all 1

    ours = sample(pipe, PROMPTS, Guidance("cfg", scale), generators(), progress=False, **_request(family))
    extra = {"use_resolution_binning": False} if family == "sana" else {}
    ref = stock(
        PROMPTS,
        guidance_scale=scale,
        num_inference_steps=steps,
        height=size,
        width=size,
        generator=generators(),
        **extra,
    ).images
    assert np.abs(to_uint8(ours) - to_uint8(ref)).max() <= 1


def _written(twins, family, lora, coefficient):
    """A stock pipeline whose denoiser and text encoders hold θ + coefficient·ΔW, no peft."""
    _, _, _, stock_cls, kwargs = FAMILIES[family]
    pipe = stock_cls.from_pretrained(str(twins[family]), **kwargs)
    for component in lora.components():
        write_in(getattr(pipe, component), component, lora, coefficient)
    return pipe


def _reference_latents(twins, family, lora, omega):
    size, steps, scale, *_ = FAMILIES[family]
    strong, weak = _written(twins, family, lora, 1.0), _written(twins, family, lora, omega)
    with torch.no_grad():
        if family == "sdxl":  # its null condition is zeros: ω reaches the branch through the UNet
            return sdxl_reference_loop(
                strong,
                PROMPTS,
                [0, 7],
                size,
                steps,
                scale,
                lambda _: lambda *a, **kw: weak.unet(*a, **kw)[0],
            )
        if family == "sana":
            import test_sana

            assert (test_sana.H, test_sana.STEPS, test_sana.LAMBDA) == (size, steps, scale)
            return test_sana._reference_loop(strong, weak.transformer, strong.transformer)
        cond, _ = strong.encode_prompt(PROMPTS, "cpu", 1, False)
        uncond, _ = weak.encode_prompt([""] * len(PROMPTS), "cpu", 1, False)  # θω's text encoder too
        sched = copy.deepcopy(strong.scheduler)
        sched.set_timesteps(steps)
        x = randn_tensor((len(PROMPTS), 4, size // 2, size // 2), generator=generators(), dtype=cond.dtype)
        x = x * sched.init_noise_sigma
        for t in sched.timesteps:
            c = strong.unet(x, t, encoder_hidden_states=cond, return_dict=False)[0]
            u = weak.unet(x, t, encoder_hidden_states=uncond, return_dict=False)[0]
            x = sched.step(u + scale * (c - u), t, x, return_dict=False)[0]
        return x


@pytest.mark.parametrize(("family", "shape"), CASES)
def test_pg_through_wig_equals_the_update_written_into_the_weights_by_hand(twins, loras, family, shape):
    lora = loras[family, shape]
    pipe = _ours(twins, family, lora)
    _, _, scale, *_ = FAMILIES[family]
    request = Request(prompts=PROMPTS, generators=generators(), **_request(family))
    ours = sample_latents(pipe, Guidance("pg", scale, omega=OMEGA), request, progress=False)
    ref = _reference_latents(twins, family, lora, OMEGA)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    cfg = sample_latents(
        pipe, Guidance("cfg", scale), Request(prompts=PROMPTS, generators=generators(), **_request(family)), False
    )
    assert (ours - cfg).abs().max() > 1e-2  # ω matters on this LoRA


# --- files whose metadata lies ------------------------------------------------------------------


def _rewrite(src, dst, edit_metadata=None, edit_state=None):
    with safe_open(str(src), framework="pt") as f:
        header = dict(f.metadata())
    state = load_file(str(src))
    meta = json.loads(header["lora_adapter_metadata"])
    if edit_metadata:
        edit_metadata(meta)
    if edit_state:
        edit_state(state)
    header["lora_adapter_metadata"] = json.dumps(meta)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(dst), metadata=header)
    return dst


def _drop(key):
    return lambda meta: meta.pop(key)


def _set(key, value):
    return lambda meta: meta.__setitem__(key, value)


def _add_layer(state):
    some = next(k for k in state if k.endswith("lora_A.weight"))
    state["unet.down_blocks.9.attentions.0.proj_in.lora_A.weight"] = state[some].clone()
    state["unet.down_blocks.9.attentions.0.proj_in.lora_B.weight"] = state[some.replace("lora_A", "lora_B")].clone()


LIES = {
    "alpha missing": (_drop("unet.lora_alpha"), None, r"unet\.lora_alpha"),
    "alpha not a number": (_set("unet.lora_alpha", "seven"), None, r"unet\.lora_alpha"),
    "rank mismatch": (_set("unet.r", 4), None, r"unet\..*lora_A\.weight has rank 3.*says 4"),
    "a layer the model lacks": (None, _add_layer, r"down_blocks\.9\.attentions\.0\.proj_in"),
}


@pytest.mark.parametrize("lie", list(LIES))
def test_a_file_whose_metadata_lies_is_refused_in_one_line_naming_the_file_and_the_key(twins, loras, tmp_path, lie):
    edit_metadata, edit_state, key = LIES[lie]
    bad = _rewrite(loras["sdxl", "alpha-patterns-conv"].file, tmp_path / "bad.safetensors", edit_metadata, edit_state)
    pipe = load_pipeline(str(twins["sdxl"]), device="cpu", dtype="float32")
    with pytest.raises(LoraError) as err:
        load_lora(pipe, bad, "full")
    message = str(err.value)
    assert "\n" not in message and str(bad) in message
    assert __import__("re").search(key, message), message
    assert "full" not in adapter_names(pipe) and not list(lora_layers([pipe.unet], "full"))  # nothing half-loaded
    if edit_metadata is not None:  # a `given` LoRA's resolve rule, before any model exists, says the same
        with pytest.raises(LoraError) as early:
            check_lora_file(bad)
        assert str(early.value) == message


def test_a_fused_lora_is_refused_by_the_sampler_in_one_line(twins, loras):
    """After ``fuse_lora`` the LoRA sits in the base weights, where no branch scale reaches it: PG would
    run CFG. Refused; unfused again, PG runs as before."""
    lora = loras["sdxl", "alpha-patterns-conv"]
    pipe = _ours(twins, "sdxl", lora)
    request = lambda: Request(prompts=PROMPTS, generators=generators(), **_request("sdxl"))  # noqa: E731
    before = sample_latents(pipe, Guidance("pg", 5.0, omega=OMEGA), request(), progress=False)
    pipe.fuse_lora(components=["unet"])
    with pytest.raises(LoraError, match=r"full.* fused .*unfuse_lora\(\)") as err:
        sample_latents(pipe, Guidance("pg", 5.0, omega=OMEGA), request(), progress=False)
    assert "\n" not in str(err.value)
    pipe.unfuse_lora(components=["unet"])
    after = sample_latents(pipe, Guidance("pg", 5.0, omega=OMEGA), request(), progress=False)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def _with_key(suffix, make):
    def edit(state):
        some = next(k for k in state if k.endswith("lora_B.weight"))
        state[some.removesuffix("lora_B.weight") + suffix] = make(state[some])

    return edit


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (_with_key("lora_B.bias", lambda b: torch.zeros(b.shape[0])), r"lora_B\.bias \(a LoRA bias"),
        (_with_key("lora_magnitude_vector", lambda b: torch.ones(b.shape[0])), r"magnitude_vector \(DoRA"),
    ],
    ids=["lora-bias", "dora"],
)
def test_what_a_scale_does_not_multiply_is_refused_naming_the_key(twins, loras, tmp_path, edit, why):
    """A LoRA bias or a DoRA magnitude (stock diffusers loads both) is not linear in the LoRA's scale,
    so θω would not be θ + ω·ΔW: refused in one line, by the resolve check and by the loader."""
    bad = _rewrite(loras["sdxl", "alpha-patterns-conv"].file, tmp_path / "bad.safetensors", edit_state=edit)
    with pytest.raises(LoraError, match=why) as early:
        check_lora_file(bad)
    pipe = load_pipeline(str(twins["sdxl"]), device="cpu", dtype="float32")
    with pytest.raises(LoraError) as late:
        load_lora(pipe, bad, "full")
    assert str(late.value) == str(early.value) and "\n" not in str(late.value) and str(bad) in str(late.value)


def test_a_folder_with_one_lora_file_named_otherwise_is_read_as_stock_reads_it(twins, loras, tmp_path):
    """kohya's files keep their own names; stock load_lora_weights(folder) takes a folder's one
    safetensors file, and so does wig. Two files in the folder: refused, naming them."""
    import shutil

    lora = loras["sd", "kohya"]
    folder = tmp_path / "kohya"
    folder.mkdir()
    shutil.copy(lora.file, folder / "my_subject_v2.safetensors")
    ours = load_pipeline(str(twins["sd"]), device="cpu", dtype="float32")
    attach_loras(ours, folder)
    scalings = {n: m.scaling["full"] for n, m in ours.unet.named_modules() if hasattr(m, "scaling")}
    stock = StableDiffusionPipeline.from_pretrained(str(twins["sd"]), safety_checker=None)
    stock.load_lora_weights(str(folder), adapter_name="full")
    assert scalings == {n: m.scaling["full"] for n, m in stock.unet.named_modules() if hasattr(m, "scaling")}
    shutil.copy(lora.file, folder / "another.safetensors")
    with pytest.raises(LoraError, match=r"holds 2 safetensors files \(another\.safetensors, my_subject_v2"):
        attach_loras(load_pipeline(str(twins["sd"]), device="cpu", dtype="float32"), folder)
