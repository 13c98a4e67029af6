"""Many subjects in one generation job (`wig.sampling.generation.generate_sets` with
`wig.personalization.lora.RoutedLoraWeights`): each sample goes through its own subject's LoRA at
its branch's scale, so a job of K subjects writes, per subject, the folder and manifest that
subject's own job writes — the same images up to float summation order (≤ 1 uint8 level) — whoever
shares its batches."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from wig.errors import WigError
from wig.guidance import Guidance
from wig.models.pipelines import load_pipeline
from wig.personalization import make
from wig.personalization.lora import random_lora
from wig.sampling.generation import SampleSet, generate_samples, generate_sets

pytestmark = pytest.mark.check

RES = 32
POINTS = {
    "cfg/l4.5": Guidance("cfg", 4.5),
    "pg/w0.0_l4.5": Guidance("pg", 4.5, omega=0.0),
    "pg/w0.4_l4.5": Guidance("pg", 4.5, omega=0.4),
    "ag/l4.5": Guidance("ag", 4.5, ag_scale=2.0, weak="lora"),  # the weak checkpoint, routed too
}
PROMPTS = {
    "dog": ["a sks dog on the beach", "a sks dog in the snow"],
    "toy": ["a sks toy on a table"],
    "cat": ["a sks cat", "a sks cat in a box", "a red sks cat"],
}


@pytest.fixture(scope="module")
def runs(tiny_sd, tmp_path_factory):
    """Three db-lora run folders: random full and weak LoRAs that change the images visibly."""
    pipe = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    root = tmp_path_factory.mktemp("runs")
    for k, name in enumerate(PROMPTS):
        random_lora(pipe, root / name / "full", std=0.3, seed=10 + k)
        random_lora(pipe, root / name / "weak", std=0.2, seed=20 + k)
    return root


def _images(folder: Path) -> dict[str, np.ndarray]:
    manifest = pl.read_parquet(folder / "manifest.parquet")
    return {p: np.asarray(Image.open(folder / p), dtype=np.int16) for p in manifest["path"]}


def test_subjects_in_one_job_are_their_own_jobs(tiny_sd, runs, tmp_path):
    kw = dict(steps=3, height=RES, width=RES, progress=False)
    for name, prompts in PROMPTS.items():  # each subject's own job
        pipe = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
        weights = make("db-lora").attach(pipe, runs / name)
        generate_samples(pipe, prompts, POINTS, [0, 1], tmp_path / "alone" / name, batch_size=3, weights=weights, **kw)
    pipe = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    weights = make("db-lora").attach_many(pipe, [runs / n for n in PROMPTS])
    sets = [SampleSet(prompts, tmp_path / "together" / name) for name, prompts in PROMPTS.items()]
    # batches of 5 straddle the subjects: every batch holds two or three of them
    manifests = generate_sets(pipe, sets, POINTS, [0, 1], batch_size=5, weights=weights, **kw)
    for (name, prompts), manifest in zip(PROMPTS.items(), manifests):
        alone = pl.read_parquet(tmp_path / "alone" / name / "manifest.parquet")
        same = ["path", "prompt_index", "prompt", "seed", "point", "method", "scale", "omega"]
        assert manifest.select(same).equals(alone.select(same)) and len(manifest) == len(prompts) * 2 * len(POINTS)
        got, want = _images(tmp_path / "together" / name), _images(tmp_path / "alone" / name)
        assert got.keys() == want.keys()
        assert max(int(np.abs(got[p] - want[p]).max()) for p in want) <= 1, name
    # the subjects' LoRAs differ, and ω reaches each subject's own: the test could fail
    dog, toy = _images(tmp_path / "together/dog"), _images(tmp_path / "together/toy")
    first = "cfg/l4.5/s0_p00.png"
    assert np.abs(dog[first] - toy[first]).max() > 8
    assert np.abs(dog[first] - dog["pg/w0.0_l4.5/s0_p00.png"]).max() > 8


def test_routing_is_refused_where_it_cannot_hold(tiny_sd, runs, tmp_path):
    pipe = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    sets = [SampleSet(["a sks dog"], tmp_path / "a"), SampleSet(["a sks toy"], tmp_path / "b")]
    kw = dict(steps=2, height=RES, width=RES, progress=False)
    with pytest.raises(WigError, match="route samples"):
        generate_sets(pipe, sets, {"cfg/l4.5": Guidance("cfg", 4.5)}, [0], **kw)
    with pytest.raises(WigError, match="generates one subject per job"):
        make("db-lora-ti").attach_many(pipe, [runs / "dog", runs / "toy"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_routed_adapters_refuse_bad_routes_and_leave_the_model_as_it_was(tiny_sd, runs):
    """Each refusal is one line naming what is wrong; closing the context leaves PEFT's switch and
    the adapters' trainability as they were."""
    from wig.personalization.lora import LoraError, RoutedLora

    pipe = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    weights = make("db-lora").attach_many(pipe, [runs / "dog", runs / "toy"])
    with pytest.raises(LoraError, match=r"subjects are 0…1, got \[0, 2\]"):
        weights.route([0, 2])
    with pytest.raises(LoraError, match="route\\(\\) the samples"):
        weights.denoiser(pipe)
    routed = RoutedLora(pipe.unet, {"full": ["full_s0", "full_s1"]})
    with pytest.raises(LoraError, match=r"\['weak'\] are not routed"):
        routed.set([0, 1], {"weak": torch.ones(2)})
    with pytest.raises(LoraError, match="checkpoint full: 3 coefficients for 2 rows"):
        routed.set([0, 1], {"full": torch.ones(3)})
    with pytest.raises(LoraError, match="no LoRA layer holds"):
        RoutedLora(pipe.unet, {"full": ["full_s0", "nope"]})
    before = [p.requires_grad for _, p in pipe.unet.named_parameters() if "lora" in _]
    x = torch.randn(2, 4, 4, 4)
    with routed, pytest.raises(LoraError, match="call set\\(\\)"):
        pipe.unet(x, 1, encoder_hidden_states=torch.randn(2, 77, pipe.text_encoder.config.hidden_size))
    assert [p.requires_grad for _, p in pipe.unet.named_parameters() if "lora" in _] == before
    assert all(not layer.disable_adapters for layer in routed.layers)
