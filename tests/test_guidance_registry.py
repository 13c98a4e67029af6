"""The guidance registry is the one place a method lives: a method defined here, in a test, runs
through the sampler, gets grid names, manifest columns and table rows without a shipped file
changing (that no shipped module but a method's own names it: tests/test_house.py)."""

from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml

from wig.branches import FULL
from wig.errors import WigError
from wig.evaluation.metrics import aggregate, paired_vs_cfg
from wig.guidance import (
    NEGATIVE,
    PROMPT,
    REGISTRY,
    Branch,
    Guidance,
    GuidanceMethod,
    canonical,
    param,
    point_schema,
    register,
)
from wig.guidance.grid import expand
from wig.guidance.methods.cfg import cfg_combine
from wig.models.pipelines import load_pipeline
from wig.personalization.lora import attach_loras
from wig.sampling.generation import generate_samples
from wig.sampling.sampler import Request, sample_latents
from wig.workflow.config_schema import read_config
from wig.workflow.study import Study, StudyError

from conftest import PROMPTS, STEPS, H, W, generators

pytestmark = pytest.mark.check

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class IntervalGuidance(GuidanceMethod):
    """CFG on the first ``fraction`` of the steps, the conditional prediction after: a
    time-dependent method with a parameter no shipped method has."""

    name = "toy-interval"
    scale: float = param(7.5, "guidance scale λ")
    fraction: float = param(0.5, "share of the steps that are guided", low=0.0, high=1.0)
    steps: float = param(8.0, "the sampler's step count")

    def branches(self):
        return [Branch(NEGATIVE, {FULL: 1.0}), Branch(PROMPT, {FULL: 1.0})]

    def combine(self, outs, step=0, time=None):
        guided = cfg_combine(outs[0], outs[1], self.scale) if step < self.fraction * self.steps else outs[1]
        return guided, guided

    @property
    def point_name(self) -> str:
        return f"f{canonical(self.fraction)}_l{canonical(self.scale)}"


@dataclass(frozen=True)
class OtherText(GuidanceMethod):
    """The conditional prediction for a named extra text instead of the prompt."""

    name = "toy-other-text"
    extra_texts = ("other",)

    def branches(self):
        return [Branch("other", {FULL: 1.0})]

    def combine(self, outs, step=0, time=None):
        return outs[0], outs[0]

    @property
    def point_name(self) -> str:
        return "other"


@dataclass(frozen=True)
class ClassText(OtherText):
    """The conditional prediction for the concept's class prompt (the prompt with the subject
    replaced by its class noun, `wig.concepts.TEXTS`)."""

    name = "toy-class-text"
    extra_texts = ("class_prompt",)

    def branches(self):
        return [Branch("class_prompt", {FULL: 1.0})]


TOYS = (IntervalGuidance, OtherText, ClassText)


@pytest.fixture
def toys():
    for cls in TOYS:
        register(cls)
    yield
    for cls in TOYS:
        REGISTRY.pop(cls.name)


@pytest.fixture(scope="module")
def base(tiny_sd):
    pipe = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents(pipe, guidance, prompts=PROMPTS, **extra):
    request = Request(prompts=list(prompts), generators=generators(), steps=STEPS, height=H, width=W, **extra)
    return sample_latents(pipe, guidance, request, progress=False)


def test_a_method_defined_in_a_test_runs_through_the_sampler(toys, base):
    # its formula from separate runs: all steps guided is CFG, none guided is the prompt alone
    cfg, cond = _latents(base, Guidance("cfg", 5.0)), _latents(base, Guidance("none"))
    assert torch.equal(_latents(base, Guidance("toy-interval", 5.0, fraction=1.0, steps=STEPS)), cfg)
    # (a two-branch batch against a one-branch one: equal up to batched-kernel rounding)
    torch.testing.assert_close(
        _latents(base, Guidance("toy-interval", 5.0, fraction=0.0, steps=STEPS)), cond, rtol=1e-5, atol=1e-5
    )
    half = _latents(base, Guidance("toy-interval", 5.0, fraction=0.5, steps=STEPS))
    assert (half - cfg).abs().max() > 1e-3 and (half - cond).abs().max() > 1e-3
    # a named extra text reaches its branch: the same as sampling that text as the prompt
    others = ["a red car", "a blue house"]
    via_extra = _latents(base, Guidance("toy-other-text"), extra_texts={"other": others})
    assert torch.equal(via_extra, _latents(base, Guidance("none"), prompts=others))
    with pytest.raises(WigError, match="needs the extra text 'other'"):
        _latents(base, Guidance("toy-other-text"))


def test_a_method_defined_in_a_test_gets_grid_names_manifest_columns_and_table_rows(toys, tiny_sd, lora_path, tmp_path):
    points = expand([{"method": "cfg", "scale": 5.0}, {"method": "toy-interval", "scale": 5.0, "fraction": [0.25, 1]}])
    assert [p.key for p in points] == ["cfg/w1.0_l5.0", "toy-interval/f0.25_l5.0", "toy-interval/f1.0_l5.0"]
    with pytest.raises(WigError, match=r"guidance\[0\]\.fraction applies to toy-interval only, not pg"):
        expand([{"method": "pg", "fraction": 0.5}])
    pipe = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    attach_loras(pipe, lora_path)
    manifest = generate_samples(
        pipe,
        PROMPTS[:1],
        {p.key: p for p in points},
        [0, 1],
        tmp_path / "job",
        steps=2,
        height=H,
        width=W,
        progress=False,
    )
    assert {"fraction", "steps", "omega", "scale"} <= set(manifest.columns)
    toy = manifest.filter(pl.col("method") == "toy-interval")
    assert (
        sorted(toy["fraction"].unique()) == [0.25, 1.0]
        and (manifest.filter(pl.col("method") == "cfg")["fraction"] == 0.5).all()
    )
    scores = manifest.select("prompt_index", "seed", *point_schema()).with_columns(
        concept=pl.lit("c"),
        finetune_seed=pl.lit(0),
        protocol=pl.lit("dreammatcher"),
        dino=pl.Series(range(6), dtype=pl.Float64) / 10,
        clip_i=pl.lit(0.5),
        clip_t=pl.lit(0.2),
    )
    table = aggregate(scores, n_boot=100)
    assert table.filter(pl.col("method") == "toy-interval")["fraction"].to_list() == [0.25, 1.0]
    paired = paired_vs_cfg(scores, n_boot=100)
    assert paired["method"].to_list() == ["toy-interval", "toy-interval"]


def test_a_concept_text_reaches_its_branch_through_the_study_and_the_generation_job(
    toys, tiny_sd, lora_path, tmp_path, monkeypatch
):
    monkeypatch.chdir(ROOT)  # the demo config names its sheet relative to the workflow
    config = yaml.safe_load((ROOT / ".test/config/tiny.yaml").read_text())
    config["guidance"] = [{"method": "toy-class-text"}, {"method": "cfg"}]
    read_config(config)
    study = Study.from_config(config)
    chunk = next(k for k, pts in study.models["tiny-sd"].point_chunks.items() if pts[0].method == "toy-class-text")
    texts = study.extra_texts_of("tiny-sd", chunk, "brown_dog")
    prompts = study.concept_prompts("tiny-sd", "db-lora", "brown_dog")
    assert texts == {"class_prompt": [p.replace("sks dog", "dog") for p in prompts]} and len(prompts) == 2
    cfg_chunk = next(k for k, pts in study.models["tiny-sd"].point_chunks.items() if pts[0].method == "cfg")
    assert study.extra_texts_of("tiny-sd", cfg_chunk, "brown_dog") == {}  # what a point does not name, a job lacks
    # the job samples each prompt's class text where the branch names it: the prompt-only method
    # given those texts as prompts makes the same images
    pipe = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    attach_loras(pipe, lora_path)
    kw = dict(steps=2, height=H, width=W, progress=False)
    ours = generate_samples(
        pipe, prompts, {"t": Guidance("toy-class-text")}, [0], tmp_path / "a", extra_texts=texts, **kw
    )
    ref = generate_samples(pipe, texts["class_prompt"], {"n": Guidance("none")}, [0], tmp_path / "b", **kw)
    assert ours["sha256"].to_list() == ref["sha256"].to_list()
    with pytest.raises(WigError, match="extra text 'class_prompt' has 1 entries for 2 prompts"):
        generate_samples(
            pipe,
            prompts,
            {"t": Guidance("toy-class-text")},
            [0],
            tmp_path / "c",
            extra_texts={"class_prompt": ["x"]},
            **kw,
        )
    # a text no concept makes stops the study, naming it
    config["guidance"] = [{"method": "toy-other-text"}]
    with pytest.raises(
        StudyError, match="toy-other-text conditions a branch on the text 'other', which no concept text"
    ):
        Study.from_config(config)


def test_wig_generate_takes_the_texts_a_method_names(toys, tiny_sd, lora_path, tmp_path, capsys):
    from wig.cli import main

    def generate(out, *args):
        common = ["--model", str(tiny_sd), "--lora", str(lora_path), "--seed", "0", "--steps", "2"]
        return main(["generate", *common, "--height", str(H), "--width", str(W), "--quiet", "--out", str(out), *args])

    assert (
        generate(tmp_path / "a.png", "--method", "toy-other-text", "--prompt", "x", "--extra-text", "other=a red car")
        == 0
    )
    assert generate(tmp_path / "b.png", "--method", "none", "--prompt", "a red car") == 0
    assert (tmp_path / "a.png").read_bytes().split(b"IDAT")[1] == (tmp_path / "b.png").read_bytes().split(b"IDAT")[1]
    capsys.readouterr()
    assert generate(tmp_path / "c.png", "--method", "toy-other-text", "--prompt", "x") == 1
    assert "--method toy-other-text needs --extra-text other=TEXT" in capsys.readouterr().err
    assert generate(tmp_path / "c.png", "--method", "cfg", "--prompt", "x", "--extra-text", "other=y") == 1
    assert "--extra-text other: --method cfg uses no text 'other'" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


def test_a_setting_named_like_a_command_flag_gets_its_own_flag(toys):
    from wig.cli import build_parser
    from wig.cli.commands.generate import chosen_guidance as _guidance

    # toy-interval's `steps` would collide with the sampler's --steps: it is --setting-steps
    argv = ["generate", "--model", "m", "--method", "toy-interval", "--prompt", "p", "--seed", "0", "--out", "o.png"]
    args = build_parser().parse_args([*argv, "--steps", "3", "--setting-steps", "9", "--fraction", "0.25"])
    assert args.steps == 3 and _guidance(args) == Guidance("toy-interval", fraction=0.25, steps=9.0)
