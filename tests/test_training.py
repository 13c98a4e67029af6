"""DreamBooth-LoRA training and class images on the tiny twin with a demo concept."""

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
from wig.personalization.lora import lora_checkpoints
from wig.personalization.training import ADAPTER, TrainConfig, denoising_loss, generate_class_images, train_lora
from wig.sampling.pipelines import attach_loras, load_pipeline
from wig.sampling.sampler import sample

from conftest import generators, to_uint8

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


def _config(**kw):
    base = dict(instance_prompt=INSTANCE, class_prompt=CLASS, steps=12, weak_step=4, lr=1e-3, resolution=RES, seed=3)
    return TrainConfig(**(base | kw))


@pytest.fixture(scope="module")
def run(pipe, class_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    train_lora(pipe, read_images(DOG), out, _config(), class_images=read_images(class_dir), progress=False)
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


def test_one_run_writes_full_weak_and_a_log(run):
    files = lora_checkpoints(run)
    assert all(f.is_file() for f in files.values())
    assert files["full"].read_bytes() != files["weak"].read_bytes()
    log = pl.read_parquet(run / "log.parquet")
    assert log.columns == ["step", "loss", "instance_loss", "prior_loss", "lr", "seconds"]
    assert log["step"].to_list() == list(range(1, 13))
    np.testing.assert_allclose(log["loss"], log["instance_loss"] + log["prior_loss"], rtol=1e-6)
    assert (log["lr"] == 1e-3).all() and log["seconds"].is_sorted()


def test_same_seed_gives_identical_safetensors(pipe, class_dir, run, tmp_path):
    again = tmp_path / "again"
    train_lora(pipe, read_images(DOG), again, _config(), class_images=read_images(class_dir), progress=False)
    other = tmp_path / "other"
    train_lora(pipe, read_images(DOG), other, _config(seed=4), class_images=read_images(class_dir), progress=False)
    for name, path in lora_checkpoints(run).items():
        assert lora_checkpoints(again)[name].read_bytes() == path.read_bytes()
        assert lora_checkpoints(other)[name].read_bytes() != path.read_bytes()


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
    for name, path in lora_checkpoints(run).items():
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
    log = train_lora(pipe, images, out, _config(steps=40, weak_step=10, class_prompt=None), progress=False)
    assert log["prior_loss"].null_count() == 40  # plain DreamBooth-LoRA: no class images
    attach_loras(pipe, out / "full")
    after = denoising_loss(pipe, images, INSTANCE, RES)
    assert after < before - 0.01, (before, after)


def test_prior_weight_zero_ignores_class_images(pipe, class_dir, tmp_path):
    log = train_lora(
        pipe,
        read_images(DOG),
        tmp_path / "run",
        _config(prior_weight=0.0),
        class_images=read_images(class_dir),
        progress=False,
    )
    assert log["prior_loss"].null_count() == len(log)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"weak_step": 12}, "weak_step must lie in"),
        ({"steps": 0}, "steps must be"),
        ({"resolution": 30}, "multiple of 8"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
    ],
)
def test_bad_training_settings(kwargs, message):
    with pytest.raises(WigError, match=message):
        _config(**kwargs)


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
        train_lora(pipe, read_images(DOG), tmp_path / "run", _config(class_prompt=None), progress=False)
    assert calls == ["weak", "full"] and list(tmp_path.iterdir()) == []
    # and the pipeline is left as it was: no training adapter behind
    assert ADAPTER not in getattr(pipe.unet, "peft_config", {})


def test_sigkill_then_rerun_leaves_no_corrupt_checkpoint(tiny_sd, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "wig.cli",
        "train-lora",
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
    state = load_file(str(lora_checkpoints(out)["full"]))
    assert state and all(torch.isfinite(v).all() for v in state.values())
