"""DreamBooth-LoRA training and class images on the tiny twin with a demo concept."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

import wig.personalization.training
from wig.concepts import read_images
from wig.errors import WigError
from wig.guidance import Guidance
from wig.models.pipelines import load_pipeline
from wig.personalization import Subject, make
from wig.personalization.lora import attach_loras
from wig.personalization.training import ADAPTER, denoising_loss, generate_class_images
from wig.sampling.sampler import sample

from conftest import generators, to_uint8

pytestmark = pytest.mark.check

ROOT = Path(__file__).resolve().parents[1]
DOG = ROOT / "resources/datasets/demo/images/brown_dog"
RES = 32
INSTANCE, CLASS = "a photo of sks dog", "a photo of dog"


@pytest.fixture(scope="module")
def pipe(tiny_sd):
    return load_pipeline(str(tiny_sd), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def class_dir(pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("class") / "dog"
    generate_class_images(pipe, CLASS, 3, out, seed=5, steps=3, height=RES, width=RES, batch_size=2, progress=False)
    return out


def _method(**kw):
    return make("db-lora", **(dict(steps=12, weak_step=4, lr=1e-3, resolution=RES) | kw))


def _train(pipe, out, class_dir=None, seed=3, **settings):
    """One DreamBooth-LoRA run on the demo dog (with prior preservation when ``class_dir`` is given)."""
    classes = read_images(class_dir) if class_dir is not None else None
    subject = Subject(read_images(DOG), INSTANCE, classes, CLASS if class_dir is not None else None)
    return _method(**settings).train(pipe, subject, out, seed=seed, progress=False)


@pytest.fixture(scope="module")
def run(pipe, class_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    _train(pipe, out, class_dir)
    return out


def test_class_images_start_from_the_generate_latents(pipe, class_dir):
    manifest = pl.read_parquet(class_dir / "manifest.parquet")
    assert manifest["seed"].to_list() == [5, 6, 7] and manifest["path"].to_list() == [
        "0000.png",
        "0001.png",
        "0002.png",
    ]
    # image 1 is what `wig generate --method cfg --seed 6` gives
    ref = sample(pipe, [CLASS], Guidance("cfg", 7.5), generators([6]), steps=3, height=RES, width=RES, progress=False)
    assert np.abs(to_uint8(read_images(class_dir)[1:2]) - to_uint8(ref)).max() <= 1


def test_one_run_writes_full_weak_a_log_and_its_settings(run):
    files = _method().checkpoint_files(run)
    assert all(f.is_file() for f in files.values())
    assert files["full"].read_bytes() != files["weak"].read_bytes()
    log = pl.read_parquet(run / "log.parquet")
    assert log.columns == ["step", "loss", "instance_loss", "prior_loss", "lr", "seconds"]
    assert log["step"].to_list() == list(range(1, 13))
    np.testing.assert_allclose(log["loss"], log["instance_loss"] + log["prior_loss"], rtol=1e-6)
    assert (log["lr"] == 1e-3).all() and log["seconds"].is_sorted()
    config = json.loads((run / "config.json").read_text())
    prompts_and_seed = [config.pop(k) for k in ("instance_prompt", "class_prompt", "seed")]
    assert make(**config) == _method() and prompts_and_seed == [INSTANCE, CLASS, 3]


def test_same_seed_gives_identical_safetensors(pipe, class_dir, run, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    _train(pipe, again, class_dir)
    _train(pipe, other, class_dir, seed=4)
    files = _method().checkpoint_files
    for name, path in files(run).items():
        assert files(again)[name].read_bytes() == path.read_bytes()
        assert files(other)[name].read_bytes() != path.read_bytes()


def test_a_run_attaches_with_its_method_as_its_loras_do_by_hand(tiny_sd, run):
    # the README's library path: method.attach returns the sampler's `weights=`
    by_method = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    weights = _method().attach(by_method, run)
    by_hand = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    attach_loras(by_hand, run / "full", run / "weak")
    for guidance in (Guidance("pg", 7.5, omega=0.0), Guidance("ag", 7.5, weak="lora")):
        kw = dict(steps=3, height=RES, width=RES, progress=False, output_type="np")
        ours = sample(by_method, [INSTANCE], guidance, generators([0]), weights=weights, **kw)
        np.testing.assert_array_equal(ours, sample(by_hand, [INSTANCE], guidance, generators([0]), **kw))
    without_weak = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    _method().attach(without_weak, run, weak=False)
    with pytest.raises(WigError, match="needs the weak"):
        sample(without_weak, [INSTANCE], Guidance("ag", 7.5, weak="lora"), generators([0]), steps=1, progress=False)


def test_checkpoints_load_in_stock_diffusers_and_change_the_image(tiny_sd, run):
    stock = StableDiffusionPipeline.from_pretrained(str(tiny_sd), safety_checker=None)
    stock.set_progress_bar_config(disable=True)

    def image():
        out = stock(
            "a sks dog on the beach", num_inference_steps=3, height=RES, width=RES, generator=generators([0])[0]
        )
        return to_uint8(out.images)

    base = image()
    results = {}
    for name, path in _method().checkpoint_files(run).items():
        stock.load_lora_weights(str(path.parent), adapter_name=name)
        stock.set_adapters([name])
        results[name] = image()
        assert np.abs(results[name] - base).max() > 0
    assert not np.array_equal(results["full"], results["weak"])


def test_training_lowers_the_instance_loss(tiny_sd, tmp_path):
    pipe = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    images = read_images(DOG)
    before = denoising_loss(pipe, images, INSTANCE, RES)
    out = tmp_path / "run"
    log = _train(pipe, out, steps=40, weak_step=10)
    assert log["prior_loss"].null_count() == 40  # plain DreamBooth-LoRA: no class images
    # what ran is recorded: no prior loss, so prior_weight 0 (the setting's default is 1.0)
    assert json.loads((out / "config.json").read_text())["prior_weight"] == 0.0
    attach_loras(pipe, out / "full")
    after = denoising_loss(pipe, images, INSTANCE, RES)
    assert after < before - 0.01, (before, after)


def test_prior_weight_zero_ignores_class_images(pipe, class_dir, tmp_path):
    log = _train(pipe, tmp_path / "run", class_dir, prior_weight=0.0)
    assert json.loads((tmp_path / "run/config.json").read_text())["class_prompt"] is None
    assert log["prior_loss"].null_count() == len(log)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"weak_step": 12}, "weak_step must lie in"),
        ({"steps": 0}, "steps must be"),
        ({"resolution": 30}, "multiple of 8"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"rank": 0}, "rank must be ≥ 1, got 0"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"rank": 2.5}, "rank must be an integer"),
        ({"gradient_checkpointing": "yes"}, "gradient_checkpointing must be true or false"),
        ({"rnak": 4}, "rnak is no setting of db-lora"),
    ],
)
def test_bad_training_settings(kwargs, message):
    with pytest.raises(WigError, match=message):
        _method(**kwargs)


def test_a_failed_run_leaves_no_checkpoint(pipe, monkeypatch, tmp_path):
    calls = []

    def failing_save(pipe, adapter, out):
        calls.append(out.name)
        if out.name == "full":
            raise RuntimeError("disk full")
        return real_save(pipe, adapter, out)

    real_save = wig.personalization.training.save_lora
    monkeypatch.setattr(wig.personalization.training, "save_lora", failing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        _train(pipe, tmp_path / "run")
    assert calls == ["weak", "full"] and list(tmp_path.iterdir()) == []
    # and the pipeline is left as it was: no training adapter behind
    assert ADAPTER not in getattr(pipe.unet, "peft_config", {})


def test_sigkill_then_rerun_leaves_no_corrupt_checkpoint(tiny_sd, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "wig.cli",
        "train",
        "--method",
        "db-lora",
        "--model",
        str(tiny_sd),
        "--instance-dir",
        str(DOG),
        "--instance-prompt",
        INSTANCE,
        "--resolution",
        str(RES),
        "--weak-step",
        "2",
        "--threads",
        "1",
        "--quiet",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen([*cmd, "--steps", "100000"], env=dict(os.environ, HF_HUB_OFFLINE="1"))
    deadline = time.time() + 120
    while not list(tmp_path.glob(".run.tmp*/weak/*.safetensors")) and time.time() < deadline:
        time.sleep(0.2)
    assert list(tmp_path.glob(".run.tmp*/weak/*.safetensors")), "training never reached its weak checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # nothing where the next stage would look
    done = subprocess.run(
        [*cmd, "--steps", "4"], env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the killed run's leftovers are gone
    state = load_file(str(_method().checkpoint_files(out)["full"]))
    assert state and all(torch.isfinite(v).all() for v in state.values())


def test_checkpoints_at_chosen_steps_equal_runs_stopped_there(pipe, class_dir, tmp_path):
    """`checkpoints: [2, 5, 12]` of one 12-step run: each step<k>/ holds byte for byte what a run of
    k steps with the same seed ends with (its full/); the weak and full checkpoints are unchanged."""
    one = tmp_path / "one"
    _train(pipe, one, class_dir, checkpoints=[12, 2, 5])
    method = _method(checkpoints=[12, 2, 5])
    assert method.checkpoints == (2, 5, 12)  # a setting holds the steps in order
    folders = method.checkpoint_steps(one)
    assert sorted(p.name for p in one.iterdir()) == [
        "config.json",
        "full",
        "log.parquet",
        "step12",
        "step2",
        "step5",
        "weak",
    ]
    for k, folder in folders.items():
        stopped = tmp_path / f"stopped{k}"
        # weak_step must lie below steps: a 2-step run keeps its weak checkpoint at step 1
        _train(pipe, stopped, class_dir, steps=k, weak_step=min(4, k - 1))
        assert (folder / "pytorch_lora_weights.safetensors").read_bytes() == (
            stopped / "full/pytorch_lora_weights.safetensors"
        ).read_bytes(), k
    plain = tmp_path / "plain"
    _train(pipe, plain, class_dir)
    for name, path in _method().checkpoint_files(plain).items():
        assert method.checkpoint_files(one)[name].read_bytes() == path.read_bytes(), name


@pytest.mark.parametrize(
    "value, message",
    [
        ([0, 5], "holds 0, outside"),
        ([5, 5], "repeats a value"),
        ([5, 13], "checkpoints must lie in [1, steps]"),
        ("5", "list of integers"),
    ],
)
def test_bad_checkpoint_steps_are_refused(value, message):
    with pytest.raises(WigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _method(checkpoints=value)
