"""The attention-collapse diagnostic: the concentration measure on maps whose answer is known, the
subject's tokens found in the prompt, and a table per checkpoint from a tiny twin's adapters."""

import numpy as np
import pytest
import torch

from wig.diagnostics.attention_collapse import attention_collapse, collapse_summary, concentration, token_positions
from wig.models.pipelines import load_pipeline
from wig.personalization.lora import attach_loras

from conftest import H, W

pytestmark = pytest.mark.check


def test_uniform_attention_scores_the_regions_share_and_collapsed_attention_one():
    pixels, tokens = 16, 6
    uniform = {"a": torch.full((pixels, tokens), 1.0 / tokens), "b": torch.full((4, tokens), 1.0 / tokens)}
    subject_map = torch.zeros(pixels)
    subject_map[:4] = 1.0  # the subject attends to pixels 0-3
    peaked = torch.full((pixels, tokens), 0.01)
    peaked[:, 1] = subject_map + 0.01
    np.testing.assert_allclose(concentration(uniform, [1], [2, 3], top=0.25), [0.25, 0.25])
    collapsed = peaked.clone()
    collapsed[:, 2] = peaked[:, 1]  # token 2 attends where the subject does
    got = concentration({"a": collapsed}, [1], [2, 3], top=0.25)
    assert got[0] == pytest.approx(4 * 1.01 / (4 * 1.01 + 12 * 0.01))  # nearly all of it in the region
    assert got[1] == pytest.approx(0.25)  # token 3 is spread evenly


def test_the_subjects_tokens_are_found_and_the_rest_measured(tiny_sd):
    pipe = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    own, others = token_positions(pipe.tokenizer, "a photo of sks dog", "sks")
    ids = pipe.tokenizer("a photo of sks dog").input_ids
    assert [ids[p] for p in own] == pipe.tokenizer("sks", add_special_tokens=False).input_ids
    assert sorted(own + others) == list(range(1, len(ids) - 1))
    with pytest.raises(ValueError, match="the subject 'zzq' is not among the tokens"):
        token_positions(pipe.tokenizer, "a photo of sks dog", "zzq")


def test_one_table_row_per_checkpoint_prompt_seed_and_token(tiny_sd, lora_path, weak_lora_path):
    pipe = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    attach_loras(pipe, lora_path, weak_lora_path)
    prompts = ["a photo of sks dog", "a sks dog on the beach"]
    table = attention_collapse(
        pipe, prompts, "sks", {"early": "weak", "late": "full"}, seeds=[0, 1], steps=3, height=H, width=W
    )
    n_tokens = sum(len(token_positions(pipe.tokenizer, p, "sks")[1]) for p in prompts)
    assert len(table) == 2 * 2 * n_tokens
    assert table["concentration"].is_between(0.0, 1.0).all()
    summary = collapse_summary(table)
    assert summary["checkpoint"].to_list() == ["early", "late"] and (summary["n_tokens"] == 2 * n_tokens).all()
    early, late = (table.filter(table["checkpoint"] == c)["concentration"].to_numpy() for c in ("early", "late"))
    assert not np.array_equal(early, late)  # each checkpoint's own maps
    again = attention_collapse(
        pipe, prompts, "sks", {"early": "weak", "late": "full"}, seeds=[0, 1], steps=3, height=H, width=W
    )
    assert again.equals(table)  # seeded: the same table


def test_wig_collapse_reads_a_runs_step_checkpoints(tiny_sd, tmp_path, capsys):
    """`wig collapse` on a run that kept steps 2 and 4: one summary line per checkpoint, the table
    written; a step the run did not keep is refused naming it."""
    import polars as pl

    from wig.cli import main
    from wig.concepts import read_images
    from wig.personalization import Subject, make

    from conftest import ROOT

    pipe = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    method = make("db-lora", steps=4, weak_step=1, lr=1e-2, resolution=32, prior_weight=0.0, checkpoints=[2, 4])
    images = read_images(ROOT / "resources/datasets/demo/images/brown_dog")
    method.train(pipe, Subject(images, "a photo of sks dog"), tmp_path / "run", progress=False)
    common = ["collapse", "--model", str(tiny_sd), "--run", str(tmp_path / "run"), "--prompt", "a sks dog on the beach"]
    common += ["--steps", "2", "--height", str(H), "--width", str(W), "--quiet"]
    argv = [
        *common,
        "--checkpoint",
        "weak",
        "--checkpoint",
        "2",
        "--checkpoint",
        "4",
        "--out",
        str(tmp_path / "c.parquet"),
    ]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["weak", "step", "step"] and "step 4" in lines[2]
    table = pl.read_parquet(tmp_path / "c.parquet")
    assert table["checkpoint"].unique(maintain_order=True).to_list() == ["weak", "step 2", "step 4"]
    assert main([*common, "--checkpoint", "3", "--out", str(tmp_path / "d.parquet")]) == 1
    assert "the run kept no checkpoint at step 3" in capsys.readouterr().err
    assert not (tmp_path / "d.parquet").exists()


def test_cfg_at_a_checkpoint_is_cfg_with_that_checkpoint_as_the_fine_tune(tiny_sd, lora_path, weak_lora_path):
    """The diagnostic samples with the registry's CFG, the checkpoint standing in for the fine-tune:
    the same latents as CFG whose branches name the weak adapter itself, the full one off."""
    from dataclasses import dataclass

    from wig.diagnostics.attention_collapse import _CheckpointAsFineTune
    from wig.guidance import NEGATIVE, PROMPT, Branch, GuidanceMethod, baseline
    from wig.guidance.methods.cfg import cfg_combine
    from wig.personalization.lora import LoraBranchWeights
    from wig.sampling.sampler import Request, sample_latents

    @dataclass(frozen=True)
    class WeakCFG(GuidanceMethod):  # unregistered: CFG written out at the weak adapter
        name = "weak-cfg"
        scale: float = 6.0

        def branches(self):
            return [Branch(NEGATIVE, {"weak": 1.0}), Branch(PROMPT, {"weak": 1.0})]

        def combine(self, outs, step=0, time=None):
            guided = cfg_combine(outs[0], outs[1], self.scale)
            return guided, guided

    pipe = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    attach_loras(pipe, lora_path, weak_lora_path)

    def request():
        return Request(["a photo of sks dog"], [torch.Generator("cpu").manual_seed(3)], steps=3, height=H, width=W)

    weights = LoraBranchWeights()
    ours = sample_latents(pipe, baseline()(scale=6.0), request(), False, _CheckpointAsFineTune(weights, "weak"))
    written = sample_latents(pipe, WeakCFG(), request(), False, weights)
    full = sample_latents(pipe, baseline()(scale=6.0), request(), False, weights)
    assert torch.equal(ours, written) and not torch.equal(ours, full)
