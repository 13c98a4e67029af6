"""Contract suites: one per plug-in kind, parametrized over *every registered plug-in* — wig's and
any an installed package plugs in (``wig.plugins`` entry points) — so a new guidance method,
personalization method, model family, metric or encoder kind is tested without writing a test
(the model: peft's ``test_custom_models.py``). tests/test_third_party_plugins.py runs this file with
a stranger's package installed and checks that its plug-ins are collected here.

    guidance methods   weights sum to one (any prediction type), the reductions they declare
                       (`GuidanceMethod.reduces_to`), the grid point's columns round trip
    families           the tiny twin loads in the stock pipeline and is recognised; the sampler's
                       CFG equals the stock pipeline's; a LoRA training step runs
    personalization    train on the tiny twin → its checkpoint files → attach: ω = 0 is the
                       pretrained model, and at every weighted layer the ω branch's output is the
                       ω-interpolation of the 0 and 1 branches' (θω = θ + ω(θ' − θ)); damaged
                       files are refused
    metrics, encoders  protocol shapes, deterministic, finite; bad input refused
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch

from wig.errors import WigError
from wig.evaluation.encoders import ENCODERS
from wig.evaluation.metrics import REGISTRY as METRICS
from wig.guidance import REGISTRY as GUIDANCE
from wig.guidance import RESULT, make, point_columns, point_of
from wig.models.families import FAMILIES
from wig.personalization import REGISTRY as PERSONALIZATION
from wig.settings import settings_of

pytestmark = pytest.mark.check

SHAPE = (2, 4, 8, 8)
TIMES = [(0, 1.0), (1, 0.95), (3, 0.6), (7, 0.1)]  # (step, diffusion time): early and late steps


# --- guidance methods --------------------------------------------------------------------------


def _weights_key(scales) -> tuple:
    """A branch's weights as the model sees them: a checkpoint at coefficient 0 is no checkpoint."""
    return tuple(sorted((k, float(v)) for k, v in scales.items() if float(v) != 0.0))


def _simulated(branches, constant=None) -> list[torch.Tensor]:
    """One deterministic prediction per distinct network evaluation (text, weights, image,
    trajectory): what a model would return, without a model."""
    out = []
    for b in branches:
        if constant is not None:
            out.append(torch.full(SHAPE, constant, dtype=torch.float64))
            continue
        key = repr((b.text, _weights_key(b.scales), b.image, b.trajectory)).encode()
        gen = torch.Generator().manual_seed(int(hashlib.sha256(key).hexdigest()[:12], 16))
        out.append(torch.randn(SHAPE, generator=gen, dtype=torch.float64))
    return out


def _predictions(method, step, time, constant=None) -> dict[str, torch.Tensor]:
    """Each trajectory's prediction of a step (the result's: ``result``; ``renoise``: what a
    method without companions re-noises with)."""
    branches = method.branches()
    outs = _simulated(branches, constant)
    if method.companions:
        grouped: dict[str, list] = {}
        for b, o in zip(branches, outs):
            grouped.setdefault(b.trajectory, []).append(o)
        return dict(method.combine_trajectories(grouped, step=step, time=time))
    guided, renoise = method.combine(outs, step=step, time=time)
    return {RESULT: guided, "renoise": renoise}


@pytest.mark.parametrize("name", sorted(GUIDANCE))
def test_a_guidance_methods_weights_sum_to_one(name):
    """Every branch predicting the same c gives c, for the result and what the step re-noises with:
    the combination holds for ε, v and x0 predictions alike."""
    method = make(name)
    for step, time in TIMES:
        for trajectory, prediction in _predictions(method, step, time, constant=0.37).items():
            torch.testing.assert_close(prediction, torch.full(SHAPE, 0.37, dtype=torch.float64), msg=trajectory)


@pytest.mark.parametrize(
    "name, settings, target",
    [(n, s, t) for n in sorted(GUIDANCE) for s, t in GUIDANCE[n].reduces_to],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_guidance_method_is_what_it_declares_it_reduces_to(name, settings, target):
    method = make(name, **settings)
    other = target(
        **{k: v for k, v in settings_of(method).items() if k in {f.name for f in dataclasses.fields(target)}}
    )
    assert target.name in GUIDANCE  # what it reduces to is a registered method
    for step, time in TIMES:
        ours, theirs = _predictions(method, step, time), _predictions(other, step, time)
        for key in theirs.keys() & ours.keys():
            torch.testing.assert_close(ours[key], theirs[key], rtol=1e-12, atol=1e-12, msg=f"{key} at step {step}")


def test_the_reduction_check_fails_a_method_that_is_not_what_it_declares():
    from wig.guidance.methods.cfg import CFG

    pg = make("pg", omega=0.5)  # ω = 0.5 is not CFG: the check must see it
    other = CFG(scale=pg.scale)
    differ = [not torch.allclose(_predictions(pg, s, t)[RESULT], _predictions(other, s, t)[RESULT]) for s, t in TIMES]
    assert all(differ)


@pytest.mark.parametrize("name", sorted(GUIDANCE))
def test_a_guidance_points_columns_round_trip(name):
    method = make(name)
    assert point_of(point_columns(method)) == method
    assert make(name, **settings_of(method)).key == method.key == f"{name}/{method.point_name}"
    json.dumps(method.settings())  # a job's params: plain data


# --- metrics and encoders ----------------------------------------------------------------------


def _metric_inputs(metric, n=5, m=3, d=16):
    rng = np.random.default_rng(0)
    generated = rng.normal(size=(n, d)).astype(np.float32)
    other = {
        "references": rng.normal(size=(m, d)).astype(np.float32),
        "texts": rng.normal(size=(n, d)).astype(np.float32),
        "samples": np.array([0, 0, 1, 1, 1]),
    }[metric.reads]
    return generated, other


@pytest.mark.parametrize("name", [n for n, m in METRICS.items() if m.reads != "pixels"])
def test_an_embedding_metric_scores_each_image_once_deterministically(name):
    metric = METRICS[name]
    generated, other = _metric_inputs(metric)
    scores = np.asarray(metric.score(generated, other))
    assert scores.shape == (len(generated),) and np.isfinite(scores).all()
    np.testing.assert_array_equal(scores, np.asarray(metric.score(generated.copy(), np.copy(other))))
    assert metric.encoder in ENCODERS and metric.fidelity in ("subject", "text", "diversity")


@pytest.mark.parametrize("name", [n for n, m in METRICS.items() if m.reads != "pixels"])
def test_an_embedding_metric_refuses_embeddings_that_do_not_fit(name):
    """A width that differs from the images', or (texts, group ids) not one per image, is refused —
    never broadcast into a score."""
    metric = METRICS[name]
    generated, other = _metric_inputs(metric)
    bad = other[:-1] if metric.reads != "references" else other[:, :-1]
    with pytest.raises(ValueError):
        metric.score(generated, bad)


@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_an_encoder_kinds_tiny_twin_embeds_deterministically_and_refuses_a_bad_protocol(kind, tmp_path):
    from PIL import Image

    from wig.evaluation.encoders import build_tiny_encoder, load_encoder

    cls = ENCODERS[kind]
    build_tiny_encoder(kind, tmp_path / "twin")  # every model has its tiny twin, a plug-in's too
    encoder = load_encoder({"kind": kind, "tiny": True}, tmp_path / "twin", device="cpu")
    images = [Image.new("RGB", (40, 30), (i * 60, 90, 200 - i * 50)) for i in range(3)]
    first = encoder.embed(encoder.preprocess(images, "standard"))
    again = encoder.embed(encoder.preprocess(images, "standard"))
    assert first.shape[0] == 3 and first.ndim == 2 and torch.isfinite(first).all()
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    with pytest.raises((WigError, ValueError)):
        encoder.preprocess(images, "no-such-protocol")
    if cls.texts:
        texts = encoder.embed_texts(["a dog", "a cat"])
        assert texts.shape == (2, first.shape[1]) and torch.isfinite(texts).all()


# --- personalization methods -------------------------------------------------------------------

TRAINED = sorted(n for n, c in PERSONALIZATION.items() if c.trains)
SUBJECT = "resources/datasets/demo/images/brown_dog"


def _family_for(cls):
    """The family a method's contract trains on: the default family where it supports it, else the
    first text family (by name) it supports."""
    from wig.models.families import default_family

    order = [default_family().name] + sorted(n for n, f in FAMILIES.items() if not f.image_input)
    return next(FAMILIES[n] for n in order if cls.supports(FAMILIES[n]))


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """Each trained method's run (2 steps at 32 px, weak checkpoint at step 1) on its family's twin."""
    from pathlib import Path

    from wig.concepts import read_images
    from wig.models.families import build_tiny
    from wig.models.pipelines import load_pipeline
    from wig.personalization import Subject
    from wig.personalization import make as make_method

    root = Path(__file__).resolve().parents[1]
    cache: dict = {}

    def run(name):
        if name not in cache:
            cls = PERSONALIZATION[name]
            family = _family_for(cls)
            twin = tmp_path_factory.mktemp(f"twin-{family.name}")
            build_tiny(family.name, twin)
            method = make_method(name, steps=2, weak_step=1, resolution=32, prior_weight=0.0)
            prompt = f"a photo of {method.identifier('sks')} dog"
            out = tmp_path_factory.mktemp(f"run-{name}") / "run"
            pipe = load_pipeline(str(twin), device="cpu", dtype="float32")
            method.train(pipe, Subject(read_images(root / SUBJECT)[:2], prompt), out, seed=0, progress=False)
            cache[name] = (method, family, twin, out, prompt)
        return cache[name]

    return run


def _weighted_layers(model):
    """The layers whose weights a fine-tune may change: each Linear/Conv2d, a LoRA-wrapped one as
    its wrapper (peft's layer with ``base_layer``), never the adapter's own matrices."""
    layers = []
    for name, module in model.named_modules():
        inside = any(name.startswith(f"{outer}.") for outer, _ in layers)
        if inside:
            continue
        if hasattr(module, "base_layer") or isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            layers.append((name, module))
    return layers


@pytest.mark.parametrize("name", TRAINED)
def test_a_trained_method_writes_its_checkpoints_and_attaches_theta_omega_at_every_layer(name, trained_runs):
    """θω = θ + ω(θ' − θ): fed one input, every weighted layer of the denoiser returns for ω the
    interpolation of its ω = 0 and ω = 1 outputs (LoRA, Custom Diffusion's deltas, full weights
    alike); ω = 0 is the pretrained model exactly; the fine-tune changed some layer."""
    from wig.branches import FULL, WEAK
    from wig.models.pipelines import load_pipeline

    method, family, twin, out, prompt = trained_runs(name)
    files = method.checkpoint_files(out)
    assert set(files) == {FULL, WEAK} and all(p.is_file() for p in files.values())
    pipe, base = (load_pipeline(str(twin), device="cpu", dtype="float32") for _ in range(2))
    weights = method.attach(pipe, out, weak=True)
    assert {FULL, WEAK} <= weights.attached(pipe)
    weights.prepare(pipe)
    model = family.denoiser(pipe)
    omega = 0.3
    gen = torch.Generator().manual_seed(0)
    text = family.encode(pipe, [prompt] * 3)
    size = 32 // pipe.vae_scale_factor
    x = torch.randn(1, model.config.in_channels, size, size, generator=gen).expand(3, -1, -1, -1).contiguous()
    t = torch.tensor(500)
    checked, moved = _interpolated_at_every_layer(weights, pipe, family, model, x, t, text, omega, omega)
    assert checked and moved, "no layer saw the fine-tune"
    with pytest.raises(AssertionError):  # the check sees a coefficient that is not the one set
        _interpolated_at_every_layer(weights, pipe, family, model, x, t, text, omega, omega + 0.2)
    # ω = 0 is θ: the denoiser with every coefficient at 0 is the pretrained one, bit for bit
    with torch.no_grad():
        plain = family.predict(base, x[:1], t, text.select(torch.tensor([0])))
        with weights.denoiser(pipe) as scales:
            scales.set({FULL: torch.zeros(1), WEAK: torch.zeros(1)})
            zero = family.predict(pipe, x[:1], t, text.select(torch.tensor([0])))
    torch.testing.assert_close(zero, plain, rtol=1e-5, atol=1e-6)


def _interpolated_at_every_layer(weights, pipe, family, model, x, t, text, omega, expected):
    """Run the denoiser on 3 samples at coefficients 0, 1, ``omega``, every weighted layer fed
    sample 0's input, and check each layer's third output against the ``expected``-interpolation
    of the first two; the layers checked and those the fine-tune moved."""
    from wig.branches import FULL, WEAK

    checked, moved, hooks = [], [], []

    def same_input(module, args, kwargs):  # every sample sees sample 0's input at this layer
        first = args[0][:1].expand_as(args[0]).contiguous()
        return (first, *args[1:]), kwargs

    def check(module, args, output):
        y0, y1, yw = output[0].double(), output[1].double(), output[2].double()
        torch.testing.assert_close(yw, (1 - expected) * y0 + expected * y1, rtol=1e-4, atol=1e-5)
        checked.append(module)
        if not torch.equal(output[0], output[1]):
            moved.append(module)

    with torch.no_grad(), weights.denoiser(pipe) as scales:
        # registered inside the context: the input replaced before the method's hooks, the output
        # read after them
        for _, layer in _weighted_layers(model):
            hooks.append(layer.register_forward_pre_hook(same_input, with_kwargs=True, prepend=True))
            hooks.append(layer.register_forward_hook(check))
        try:
            scales.set({FULL: torch.tensor([0.0, 1.0, omega]), WEAK: torch.zeros(3)})
            family.predict(pipe, x, t, text)
        finally:
            for hook in hooks:
                hook.remove()
    return checked, moved


@pytest.mark.parametrize("name", TRAINED)
def test_a_trained_method_refuses_a_damaged_checkpoint_naming_it(name, trained_runs, tmp_path):
    import shutil

    from wig.branches import FULL
    from wig.models.pipelines import load_pipeline

    method, family, twin, out, _ = trained_runs(name)
    broken = tmp_path / "run"
    shutil.copytree(out, broken)
    damaged = method.checkpoint_files(broken)[FULL]
    damaged.write_bytes(damaged.read_bytes()[: len(damaged.read_bytes()) // 2])  # cut in half
    pipe = load_pipeline(str(twin), device="cpu", dtype="float32")
    with pytest.raises(WigError, match=damaged.name):
        method.attach(pipe, broken, weak=True)
