"""A full fine-tune given as weights (Diffusion-DPO's case): θω = θ + ω(θ' − θ) for every tensor.

The tiny "DPO" UNet is the tiny SD twin's UNet with every tensor perturbed. The references are
hand-written loops over separate UNets (the base, the fine-tune, an explicitly lerped third one)
that never touch `wig.personalization.full_weights`.
"""

import json

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

from wig.errors import WigError
from wig.guidance import Guidance
from wig.models.families import default_config
from wig.models.pipelines import load_pipeline
from wig.personalization.full_weights import FullWeightsError, attach_full_weights
from wig.sampling.sampler import Request, SamplingError, sample_latents

from conftest import PROMPTS, STEPS, H, W, generators, reference_loop

pytestmark = pytest.mark.check

LAMBDA = 7.5


@pytest.fixture(scope="module")
def dpo_unet(tiny_sd, tmp_path_factory):
    """The base UNet with every floating tensor moved by 5 % of its own spread (a seeded fine-tune)."""
    unet = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for tensor in unet.state_dict().values():
            spread = tensor.std() if tensor.numel() > 1 else tensor.abs() + 1
            tensor += 0.05 * spread * torch.randn(tensor.shape, generator=gen)
    out = tmp_path_factory.mktemp("dpo") / "unet"
    unet.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def base(tiny_sd):
    return load_pipeline(str(tiny_sd), device="cpu", dtype="float32")


def _latents(pipe, guidance, weights=None):
    request = Request(prompts=PROMPTS, generators=generators(), steps=STEPS, height=H, width=W)
    return sample_latents(pipe, guidance, request, progress=False, weights=weights)


def _call(unet, cond):
    return lambda x, t, c, u: unet(x, t, encoder_hidden_states=c if cond else u, return_dict=False)[0]


def _lerped(tiny_sd, dpo_unet, omega):
    theta = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    tuned = UNet2DConditionModel.from_pretrained(dpo_unet).state_dict()
    with torch.no_grad():
        for name, tensor in theta.state_dict().items():
            tensor.copy_(torch.lerp(tensor, tuned[name], omega))  # θ + ω(θ' − θ)
    return theta


def test_omega_one_is_cfg_with_the_finetune_as_the_pipeline_denoiser(tiny_sd, base, dpo_unet):
    weights = attach_full_weights(base, dpo_unet)
    ours = _latents(base, Guidance("pg", LAMBDA, omega=1.0), weights)
    cfg = _latents(base, Guidance("cfg", LAMBDA), weights)
    stock = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    stock.unet = UNet2DConditionModel.from_pretrained(dpo_unet)
    assert torch.equal(ours, _latents(stock, Guidance("cfg", LAMBDA)))
    assert torch.equal(cfg, ours)
    assert (ours - _latents(base, Guidance("cfg", LAMBDA))).abs().max() > 1e-2  # the fine-tune matters


def test_omega_zero_is_a_two_model_loop(tiny_sd, base, dpo_unet):
    weights = attach_full_weights(base, dpo_unet)
    ours = _latents(base, Guidance("pg", LAMBDA, omega=0.0), weights)
    tuned = UNet2DConditionModel.from_pretrained(dpo_unet)
    ref = reference_loop(base, [_call(base.unet, False), _call(tuned, True)], lambda u, c: u + LAMBDA * (c - u))
    assert torch.equal(ours, ref)


def test_omega_between_is_an_explicitly_lerped_third_model_and_the_base_comes_back(tiny_sd, base, dpo_unet):
    before = {k: v.clone() for k, v in base.unet.state_dict().items()}
    weights = attach_full_weights(base, dpo_unet)
    ours = _latents(base, Guidance("pg", LAMBDA, omega=0.4), weights)
    weak, tuned = _lerped(tiny_sd, dpo_unet, 0.4), UNet2DConditionModel.from_pretrained(dpo_unet)
    ref = reference_loop(base, [_call(weak, False), _call(tuned, True)], lambda u, c: u + LAMBDA * (c - u))
    assert torch.equal(ours, ref)
    after = base.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the pipeline holds θ again
    others = [_latents(base, Guidance("pg", LAMBDA, omega=w), weights) for w in (0.0, 1.0)]
    assert all((ours - o).abs().max() > 1e-3 for o in others)


def test_sag_with_omega_runs_theta_omega_and_the_finetune_in_groups(tiny_sd, base, dpo_unet):
    weights = attach_full_weights(base, dpo_unet)
    guidance = Guidance("sag", LAMBDA, omega=0.4, subject_weight=1.0, subject_from=0.5)
    classes = ["a photo of dog", "a dog on the beach"]
    request = Request(
        prompts=PROMPTS,
        generators=generators(),
        steps=STEPS,
        height=H,
        width=W,
        extra_texts={"class_prompt": classes},
    )
    ours = sample_latents(base, guidance, request, progress=False, weights=weights)
    weak, tuned = _lerped(tiny_sd, dpo_unet, 0.4), UNet2DConditionModel.from_pretrained(dpo_unet)
    c0, _ = base.encode_prompt(classes, "cpu", 1, False)

    def combine(u, c, k, time):
        w = -1.0 if time > 0.5 else 1.0
        return u + LAMBDA * ((1 + w) * c - w * k - u)

    class_call = lambda x, t, c, u: tuned(x, t, encoder_hidden_states=c0, return_dict=False)[0]  # noqa: E731
    ref = reference_loop(base, [_call(weak, False), _call(tuned, True), class_call], combine, timed=True)
    # θ' runs c and c₀ as one batch of 2n (the reference: two of n), and SAG's sum in another order
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_ag_against_the_pretrained_model_runs_and_its_weak_checkpoint_variant_is_refused(base, dpo_unet):
    weights = attach_full_weights(base, dpo_unet)
    lam, lam_ag = 3.0, 2.0
    ours = _latents(base, Guidance("ag", lam, ag_scale=lam_ag), weights)
    tuned = UNet2DConditionModel.from_pretrained(dpo_unet)

    def combine(u, c, w):
        return u + lam * (c - u) + (lam_ag - 1.0) * (c - w)

    branches = [_call(tuned, False), _call(tuned, True), _call(base.unet, True)]
    torch.testing.assert_close(ours, reference_loop(base, branches, combine), rtol=1e-4, atol=1e-4)
    with pytest.raises(SamplingError, match="weak"):
        _latents(base, Guidance("ag", lam, ag_scale=lam_ag, weak="lora"), weights)


def test_another_architecture_is_refused_naming_the_first_mismatching_tensor(base, tmp_path):
    config = default_config("sd")["unet"]
    other = UNet2DConditionModel(**{**config, "block_out_channels": [c * 2 for c in config["block_out_channels"]]})
    other.save_pretrained(tmp_path / "unet")
    before = {k: v.clone() for k, v in base.unet.state_dict().items()}
    with pytest.raises(FullWeightsError, match=r"tensor conv_in\.weight has shape \(64, 4, 3, 3\)"):
        attach_full_weights(base, tmp_path / "unet")
    assert all(torch.equal(v, base.unet.state_dict()[k]) for k, v in before.items())


def test_a_missing_or_extra_tensor_is_named(base, dpo_unet, tmp_path):
    from safetensors.torch import load_file

    state = load_file(str(dpo_unet / "diffusion_pytorch_model.safetensors"))
    first = next(iter(base.unet.state_dict()))
    save_file({k: v for k, v in state.items() if k != first}, str(tmp_path / "missing.safetensors"))
    with pytest.raises(FullWeightsError, match=f"missing.safetensors: the fine-tune lacks the base's tensor {first}"):
        attach_full_weights(base, tmp_path / "missing.safetensors")
    save_file({**state, "extra.weight": torch.zeros(2)}, str(tmp_path / "extra.safetensors"))
    with pytest.raises(FullWeightsError, match="tensor extra.weight is not in the base"):
        attach_full_weights(base, tmp_path / "extra.safetensors")
    (tmp_path / "pickle.safetensors").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(FullWeightsError, match="not a safetensors file: .*pickle.safetensors"):
        attach_full_weights(base, tmp_path / "pickle.safetensors")
    with pytest.raises(FullWeightsError, match="no fine-tuned weights at"):
        attach_full_weights(base, tmp_path)


def test_a_pipeline_folder_and_a_sharded_model_folder_load_the_same_tensors(tiny_sd, base, dpo_unet, tmp_path):
    from safetensors.torch import load_file

    state = load_file(str(dpo_unet / "diffusion_pytorch_model.safetensors"))
    names = sorted(state)
    shards = {"a.safetensors": names[: len(names) // 2], "b.safetensors": names[len(names) // 2 :]}
    folder = tmp_path / "sharded"
    folder.mkdir()
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(folder / shard))
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    pipeline = tmp_path / "pipeline"
    (pipeline / "unet").mkdir(parents=True)
    (pipeline / "model_index.json").write_text("{}")
    save_file(state, str(pipeline / "unet" / "diffusion_pytorch_model.safetensors"))
    for path in (folder, pipeline):
        tuned = attach_full_weights(base, path).tuned.state_dict()
        assert all(torch.equal(tuned[k], state[k]) for k in state)


def test_cli_generates_with_a_given_denoiser_and_writes_nothing_for_another_architecture(tiny_sd, dpo_unet, tmp_path):
    import numpy as np
    from PIL import Image

    from wig.cli import main
    from wig.personalization import make
    from wig.sampling.sampler import sample

    args = ["generate", "--model", str(tiny_sd), "--prompt", PROMPTS[0], "--seed", "0", "--steps", str(STEPS)]
    args += ["--height", str(H), "--width", str(W), "--device", "cpu", "--quiet", "--method", "pg", "--omega", "0.4"]
    assert main([*args, "--denoiser", str(dpo_unet), "--out", str(tmp_path / "pg.png")]) == 0
    pipe = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    weights = make("given", weights=str(dpo_unet)).attach(pipe, weak=False)
    guidance = Guidance("pg", 7.5, omega=0.4)
    ref = sample(pipe, PROMPTS[:1], guidance, generators([0]), steps=STEPS, height=H, width=W, weights=weights)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "pg.png")), np.asarray(ref[0]))
    config = default_config("sd")["unet"]
    UNet2DConditionModel(**{**config, "cross_attention_dim": 16}).save_pretrained(tmp_path / "other")
    assert main([*args, "--denoiser", str(tmp_path / "other"), "--out", str(tmp_path / "other.png")]) == 1
    assert not (tmp_path / "other.png").exists()
    with pytest.raises(WigError, match="no weak"):
        make("given", weights=str(dpo_unet)).attach(pipe, weak=True)


@pytest.fixture(scope="module")
def rank2_unet(tiny_sd, tmp_path_factory):
    """A fine-tune whose every Linear/Conv2d weight moves by a rank-2 update, and whose biases and
    norm parameters move freely: a rank-2 extraction is exact up to float error."""
    unet = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for module in unet.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                w = module.weight
                up = torch.randn(w.shape[0], 2, generator=gen)
                down = torch.randn(2, w[0].numel(), generator=gen)
                w += (0.1 * w.std() / 2**0.5) * (up @ down).view_as(w) / w[0].numel() ** 0.5
            norm = isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm))
            if norm or isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                params = [module.bias, module.weight] if norm else [module.bias]
                for p in params:
                    if p is not None:
                        p += 0.05 * torch.randn(p.shape, generator=gen)
    out = tmp_path_factory.mktemp("rank2") / "unet"
    unet.save_pretrained(out)
    return out


def test_low_rank_is_the_batched_path_prints_its_error_and_matches_full_weights(base, rank2_unet, capsys):
    from wig.personalization import make

    exact = attach_full_weights(base, rank2_unet)
    approx = make("given", weights=str(rank2_unet), low_rank=2).attach(base, weak=False)
    printed = capsys.readouterr().err
    assert "conv_in" in printed and "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q" in printed
    assert "worst:" in printed
    for omega in (0.4, 1.0):
        guidance = Guidance("pg", LAMBDA, omega=omega)
        torch.testing.assert_close(
            _latents(base, guidance, approx), _latents(base, guidance, exact), rtol=1e-4, atol=1e-4
        )


def test_low_rank_above_its_tolerance_is_refused_naming_the_worst_layer(base, dpo_unet, capsys):
    from wig.personalization import make
    from wig.personalization.low_rank import LowRankError

    with pytest.raises(LowRankError, match=r"rank-1 approximation of \S+ has relative error 0\.\d+ > tolerance 0\.01"):
        make("given", weights=str(dpo_unet), low_rank=1).attach(base, weak=False)
    assert "relative error ‖Δ − Δ_r‖/‖Δ‖ per layer" in capsys.readouterr().err
    with pytest.raises(WigError, match="low_rank approximates a full fine-tune"):
        make("given", weights=str(dpo_unet), kind="lora", low_rank=2)
