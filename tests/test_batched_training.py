"""Many subjects in one forward (`wig.personalization.training.train_loras`): K subjects trained
together equal K separate runs with the same seeds — per step, in the LoRA tensors and in the
images — whatever their batch mates, and a failure leaves no subject's run."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from wig.concepts import read_images
from wig.errors import WigError
from wig.guidance import Guidance
from wig.models.pipelines import load_pipeline
from wig.personalization import Subject, make
from wig.personalization.lora import attach_loras
from wig.personalization.training import generate_class_images, train_lora, train_loras
from wig.sampling.sampler import sample

from conftest import ROOT, generators, to_uint8

pytestmark = pytest.mark.check

DEMO = ROOT / "resources/datasets/demo/images"
RES, STEPS = 32, 20
SEEDS = {"dog": 3, "duck": 4, "pup": 5, "toy": 6}
# loss per step: float summation order differs between a batch of 1–2 and one of 3–5 samples
LOSS_RTOL = 1e-5
# final LoRA tensors after 20 AdamW steps at lr 1e-3: Adam moves a weight by ≈ lr·m/√v per step, and
# m/√v amplifies a last-bit gradient difference only where the gradient is near 0 (there m/√v is
# ill-conditioned); measured here, the largest difference is 1.0e-5 (1 % of one step) in 1 of 256
# elements. 5e-5 (5 % of one step) leaves room for another CPU's summation order; a subject whose
# data or seed differed moves weights by whole steps (≥ 1e-3), which this still catches
LORA_ATOL = 5e-5


@pytest.fixture(scope="module")
def pipe(tiny_sd):
    return load_pipeline(str(tiny_sd), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def subjects(pipe, tmp_path_factory):
    classes = tmp_path_factory.mktemp("class") / "dog"
    generate_class_images(pipe, "a photo of dog", 2, classes, seed=5, steps=3, height=RES, width=RES, progress=False)
    dog, duck = read_images(DEMO / "brown_dog"), read_images(DEMO / "duck_toy")
    return {
        "dog": Subject(dog, "a photo of sks dog", read_images(classes), "a photo of dog"),  # prior preservation
        "duck": Subject(duck, "a photo of sks toy"),
        "pup": Subject(dog[:2], "a photo of sks puppy"),
        "toy": Subject(duck[1:], "a sks rubber duck"),
    }


def _method():
    return make("db-lora", steps=STEPS, weak_step=5, lr=1e-3, resolution=RES)


@pytest.fixture(scope="module")
def alone(pipe, subjects, tmp_path_factory):
    root = tmp_path_factory.mktemp("alone")
    logs = {
        name: train_lora(pipe, s, root / name, _method(), seed=SEEDS[name], progress=False)
        for name, s in subjects.items()
    }
    return root, logs


def _together(pipe, subjects, names, root):
    outs = [root / name for name in names]
    logs = train_loras(pipe, [subjects[n] for n in names], outs, _method(), [SEEDS[n] for n in names], progress=False)
    return dict(zip(names, logs))


def _lora(run, checkpoint="full"):
    return load_file(str(run / checkpoint / "pytorch_lora_weights.safetensors"))


def _assert_same_run(run, log, ref_run, ref_log):
    np.testing.assert_allclose(log["loss"].to_numpy(), ref_log["loss"].to_numpy(), rtol=LOSS_RTOL)
    for checkpoint in ("weak", "full"):
        got, want = _lora(run, checkpoint), _lora(ref_run, checkpoint)
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=LORA_ATOL)
    assert (run / "config.json").read_text() == (ref_run / "config.json").read_text()


def test_three_subjects_in_one_forward_are_three_separate_runs(pipe, subjects, alone, tmp_path, tiny_sd):
    root, ref = alone
    logs = _together(pipe, subjects, ["dog", "duck", "pup"], tmp_path)
    for name, log in logs.items():
        _assert_same_run(tmp_path / name, log, root / name, ref[name])
        assert log["prior_loss"].null_count() == (0 if name == "dog" else STEPS)
    # the images the LoRAs draw, through the stock loading path
    for name in logs:
        images = []
        for run in (tmp_path / name, root / name):
            tuned = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
            attach_loras(tuned, run / "full")
            kw = dict(steps=4, height=RES, width=RES, progress=False)
            images.append(
                to_uint8(
                    sample(tuned, ["a sks dog on the beach"], Guidance("pg", 7.5, omega=0.0), generators([0]), **kw)
                )
            )
        assert np.abs(images[0] - images[1]).max() <= 1
    # the subjects really differ: the test could fail
    assert not torch.equal(
        _lora(tmp_path / "dog")[next(iter(_lora(tmp_path / "dog")))],
        _lora(tmp_path / "duck")[next(iter(_lora(tmp_path / "duck")))],
    )


def test_a_subjects_lora_does_not_depend_on_its_batch_mates(pipe, subjects, alone, tmp_path):
    root, ref = alone
    first = _together(pipe, subjects, ["duck", "dog"], tmp_path / "a")
    second = _together(pipe, subjects, ["toy", "pup", "duck"], tmp_path / "b")
    _assert_same_run(tmp_path / "a/duck", first["duck"], tmp_path / "b/duck", second["duck"])
    _assert_same_run(tmp_path / "b/toy", second["toy"], root / "toy", ref["toy"])


def test_a_failing_subject_leaves_no_subjects_run(pipe, subjects, tmp_path, monkeypatch):
    from wig.models.families.sd import SD

    calls = []
    real = SD.predict

    def fails_at_step_3(pipe, x, t, text, model=None):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return real(pipe, x, t, text, model)

    monkeypatch.setattr(SD, "predict", staticmethod(fails_at_step_3))
    with pytest.raises(RuntimeError, match="boom"):
        _together(pipe, subjects, ["dog", "duck"], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert not getattr(pipe.unet, "peft_config", {})  # the pipeline is as it was


def test_bad_batches_are_refused(pipe, subjects, tmp_path):
    with pytest.raises(WigError, match="one output folder and one seed per subject"):
        train_loras(pipe, [subjects["dog"], subjects["duck"]], [tmp_path / "a"], _method(), [0, 1])
