"""`wig.integrations.diffusers.PersonalizationGuidance` in a stock modular SDXL pipeline (the tiny
twin, a LoRA loaded by the pipeline's own ``load_lora_weights``), against diffusers' own CFG guider
and hand-written loops that never touch the guider: ω = 0 runs the unconditional branch with the
LoRA disabled, ω = 0.4 on a second UNet whose weights hold θ + 0.4·B·A."""

import re

import numpy as np
import pytest
import torch
from diffusers import ModularPipeline, StableDiffusionXLPipeline
from diffusers.guiders import ClassifierFreeGuidance

from wig.integrations.diffusers import PersonalizationGuidance
from wig.personalization.lora import lora_layers

from conftest import ROOT, generators, sdxl_reference_loop, to_uint8, unet_with_lora_written_in, unet_without_lora

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
    pipe.load_lora_weights(str(sdxl_lora_path.parent), adapter_name="subject")
    return pipe


def _run(pipe, guider):
    pipe.update_components(guider=guider)
    out = pipe(
        prompt=PROMPTS, num_inference_steps=STEPS, height=SIZE, width=SIZE, generator=_generator(), output="images"
    )
    return to_uint8(out)


def _scalings(pipe):
    return [(id(layer), a, v) for layer in lora_layers([pipe.unet]) for a, v in layer.scaling.items()]


def _reference(tiny_sdxl, sdxl_lora_path, uncond_unet):
    stock = StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl))
    stock.load_lora_weights(str(sdxl_lora_path.parent))
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


def test_a_step_that_raises_mid_branch_leaves_no_scaled_adapter(modular):
    before = _scalings(modular)
    guider = PersonalizationGuidance(guidance_scale=LAMBDA, omega=0.0)
    guider.set_state(step=0, num_inference_steps=4, timestep=torch.tensor(999))
    guider.prepare_inputs({"x": (torch.zeros(1), torch.zeros(1))})
    guider.prepare_models(modular.unet)
    guider.prepare_models(modular.unet)  # the unconditional batch: adapters at ω, then the denoiser raises
    assert _scalings(modular) != before
    guider.set_state(step=1, num_inference_steps=4, timestep=torch.tensor(749))  # the next step (or call)
    assert _scalings(modular) == before


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
    """README "PG in stock diffusers, as a guider": its code block, with the twin's and the LoRA's
    folders for the hub names and the CPU for CUDA, draws what the guider draws here."""
    readme = (ROOT / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "PersonalizationGuidance(" in b]
    code = (
        block.replace('"stabilityai/stable-diffusion-xl-base-1.0"', repr(str(tiny_sdxl)))
        .replace('"my-sdxl-dreambooth-lora/"', repr(str(sdxl_lora_path.parent)))
        .replace("torch.float16", "torch.float32")
        .replace('pipe.to("cuda")', 'pipe.to("cpu")')
    )
    assert code.count(str(tiny_sdxl)) == 1 and code.count(str(sdxl_lora_path.parent)) == 1
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    modular.update_components(guider=PersonalizationGuidance(guidance_scale=5.0, omega=0.0))
    gen = torch.Generator("cpu").manual_seed(0)
    ref = modular(prompt="a photo of sks dog in the snow", generator=gen, output="images")[0]
    assert np.abs(to_uint8([scope["image"]]) - to_uint8([ref])).max() <= 1
