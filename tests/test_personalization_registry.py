"""The personalization registry is the one place a method lives: a method defined here, in a test,
is selected by config, planned by the study, trained by `wig train` and attached for the sampler
without a shipped file changing; its settings are checked like a shipped method's."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from wig.atomic import atomic_dir
from wig.branches import FULL, LORA_WEIGHT_NAME, WEAK
from wig.cli import main
from wig.errors import WigError
from wig.guidance import Guidance
from wig.models.pipelines import load_pipeline
from wig.personalization import REGISTRY, Subject, TrainedMethod, make, register
from wig.personalization.lora import LoraBranchWeights, attach_loras, random_lora
from wig.personalization.training import LOG_SCHEMA
from wig.sampling.sampler import sample
from wig.settings import param
from wig.workflow.config_schema import read_config
from wig.workflow.study import Study, StudyError

from conftest import generators

pytestmark = pytest.mark.check

ROOT = Path(__file__).resolve().parents[1]
DOG = ROOT / "resources/datasets/demo/images/brown_dog"


@dataclass(frozen=True)
class RandomDelta(TrainedMethod):
    """A stand-in fine-tune: seeded random deltas of the denoiser (as LoRA files) instead of
    training — a method with a setting no shipped method has."""

    name = "toy-random-delta"
    std: float = param(0.2, "size of the random delta", above=0.0)

    def train(self, pipe, subject, out, seed=0, progress=True, overwrite=False):
        with atomic_dir(out, overwrite=overwrite) as tmp:
            random_lora(pipe, tmp / FULL, std=self.std, seed=seed)
            random_lora(pipe, tmp / WEAK, std=self.std / 2, seed=seed + 1)
            log = pl.DataFrame(
                [{"step": 1, "loss": 0.0, "instance_loss": 0.0, "prior_loss": None, "lr": 0.0, "seconds": 0.0}],
                schema=LOG_SCHEMA,
            )
            log.write_parquet(tmp / "log.parquet")
        return log

    def checkpoint_files(self, out):
        return {name: Path(out) / name / LORA_WEIGHT_NAME for name in (FULL, WEAK)}

    def attach(self, pipe, out, weak=True):
        files = self.checkpoint_files(out)
        attach_loras(pipe, files[FULL], files[WEAK] if weak else None)
        return LoraBranchWeights()


@pytest.fixture
def toy():
    register(RandomDelta)
    yield RandomDelta
    REGISTRY.pop(RandomDelta.name)


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the demo config names its sheet relative to the workflow


def _config(**changes):
    config = yaml.safe_load((ROOT / ".test/config/tiny.yaml").read_text())
    config["personalization"] = config["personalization"][0]  # the demo's db-lora fine-tune
    config.update(changes)
    read_config(config)
    return config


def test_settings_are_checked_and_registering_twice_is_refused(toy):
    assert make("toy-random-delta", std=0.5).std == 0.5 and make("toy-random-delta").steps == 500
    with pytest.raises(WigError, match="std must be > 0, got 0"):
        make("toy-random-delta", std=0)
    with pytest.raises(WigError, match="rank applies to db-lora/db-lora-ti only, not toy-random-delta"):
        make("toy-random-delta", rank=4)

    @dataclass(frozen=True)
    class Impostor(RandomDelta):
        name = "toy-random-delta"

    with pytest.raises(WigError, match="personalization method 'toy-random-delta' is registered twice"):
        register(Impostor)


def test_config_selects_it_beside_a_shipped_method_and_the_study_plans_both(toy, at_root):
    shipped = _config()["personalization"]
    study = Study.from_config(_config(personalization=[shipped, {"method": "toy-random-delta", "std": 0.3}]))
    assert ("tiny-sd", "toy-random-delta") in study.finetune_pairs()
    assert study.finetune_settings("tiny-sd", "toy-random-delta")["std"] == 0.3
    runs = [r for r in study.training_runs("tiny-sd") if r.finetune == "toy-random-delta"]
    assert [r.wildcards["finetune"] for r in runs] == ["toy-random-delta"] * len(study.concepts)
    with pytest.raises(StudyError, match=r"personalization\[1\]: std must be > 0"):
        Study.from_config(_config(personalization=[shipped, {"method": "toy-random-delta", "std": -1}]))


def test_wig_train_runs_it_and_its_attachment_drives_the_sampler(toy, tiny_sd, tmp_path):
    out = tmp_path / "run"
    args = ["--model", str(tiny_sd), "--instance-dir", str(DOG), "--instance-prompt", "a photo of sks dog"]
    assert main(["train", "--method", "toy-random-delta", "--std", "0.3", *args, "--out", str(out), "--quiet"]) == 0
    method = make("toy-random-delta", std=0.3)
    assert all(path.is_file() for path in method.checkpoint_files(out).values())
    # the same seed, the same delta: the CLI ran the registered method with its flag
    again = tmp_path / "again"
    method.train(load_pipeline(str(tiny_sd), device="cpu"), Subject([], ""), again)
    assert method.checkpoint_files(out)[FULL].read_bytes() == method.checkpoint_files(again)[FULL].read_bytes()

    pipe = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    weights = method.attach(pipe, out)
    kw = dict(steps=2, height=32, width=32, progress=False, output_type="np", weights=weights)
    cfg = sample(pipe, ["a sks dog"], Guidance("cfg", 7.5), generators([0]), **kw)
    np.testing.assert_array_equal(
        sample(pipe, ["a sks dog"], Guidance("pg", 7.5, omega=1.0), generators([0]), **kw), cfg
    )
    assert not np.array_equal(sample(pipe, ["a sks dog"], Guidance("pg", 7.5, omega=0.0), generators([0]), **kw), cfg)


@dataclass(frozen=True)
class NewTokens(RandomDelta):
    """A method that names the subject with tokens of its own, as textual inversion does."""

    name = "toy-new-tokens"

    def identifier(self, identifier):
        return "<s0><s1>"


def test_a_method_that_names_the_subject_its_own_way_gets_its_prompts(at_root):
    register(NewTokens)
    try:
        shipped = _config()["personalization"]
        study = Study.from_config(_config(personalization=[shipped, {"method": "toy-new-tokens"}]))
        ours = study.concept_prompts("tiny-sd", "toy-new-tokens", "brown_dog")
        plain = study.concept_prompts("tiny-sd", "db-lora", "brown_dog")
        assert plain[0] == "a sks dog in the jungle" and ours == [p.replace("sks", "<s0><s1>") for p in plain]
        assert study.subject_prompts("tiny-sd", "toy-new-tokens", "brown_dog")["prompt"] == "a photo of <s0><s1> dog"
        assert study.subject_prompts("tiny-sd", "db-lora", "brown_dog")["prompt"] == "a photo of sks dog"
    finally:
        REGISTRY.pop(NewTokens.name)
