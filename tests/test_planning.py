"""What the DAG plans for a config — job counts per rule, fan-out per model, concept, class and seed
chunk — planned by Snakemake in this process (`conftest.plan`: no subprocess), so the check tier
covers the planning the workflow tier runs."""

import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml

from wig.workflow.config_schema import read_config
from wig.workflow.study import StudyError

from conftest import edit_config as _edit
from conftest import plan
from conftest import small_config as _small_config

pytestmark = pytest.mark.check

ROOT = Path(__file__).resolve().parents[1]


def _validated(config: dict) -> dict:
    """``config`` with the schema's defaults filled in, as the workflow reads it."""
    read_config(config)
    return config


def _planned(config, workdir) -> dict[str, int]:
    return dict(Counter(rule for rule, _ in plan(config, workdir)))


def test_class_nouns_of_any_script_get_their_own_class_images(tmp_path):
    # 犬 and 猫 have no ASCII letters, teddy bear and teddy-bear share their readable part
    config = _small_config()
    root = tmp_path / "work/data"
    rows = ["concept,class_noun,prompts"]
    for cid, noun in (("inu", "犬"), ("neko", "猫"), ("bear1", "teddy bear"), ("bear2", "teddy-bear")):
        shutil.copytree(ROOT / "resources/datasets/demo/images/brown_dog", root / cid)
        rows.append(f"{cid},{noun},prompts.txt")
    (root / "prompts.txt").write_text("a photo of {}\n")
    (root / "sheet.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    config["dataset"].update(sheet="data/sheet.csv", root="data", concepts=["inu", "neko", "bear1", "bear2"])
    planned = _planned(config, tmp_path / "work")
    assert planned["class_images"] == 2 * 4 and planned["train"] == 2 * 4  # models × nouns, concepts


def test_only_the_embeddings_the_enabled_metrics_read_are_planned(tmp_path):
    config = _edit(_small_config(), evaluation__metrics=["clip_i", "clip_t"])
    planned = _planned(config, tmp_path)
    # CLIP alone: its twin, its references (1 concept), texts, and each job's samples; no DINO
    assert planned["build_tiny_encoder"] == 1 and planned["embed_references"] == 1 and planned["embed_texts"] == 1
    assert planned["embed_samples"] == planned["generate"] == planned["score"] == 2 * 3


def test_dag_fans_out_per_model_concept_and_class(tmp_path):
    config = _edit(
        _small_config(), dataset__concepts=["brown_dog", "duck_toy"], seeds=[0, 1, 2], sampling__seeds_per_job=2
    )
    assert _planned(config, tmp_path / "one") == {
        "all": 1,
        "build_tiny_model": 2,
        "prepare": 2,
        "class_images": 2 * 2,
        "train": 2 * 2,
        "generate": 2 * 2 * 3 * 2,  # models × concepts × points × seed chunks ([0, 1], [2])
        "grid": 2 * 2,
        "build_tiny_encoder": 2,
        "embed_references": 2 * 2,
        "embed_texts": 2,  # shared by the models
        "embed_samples": 2 * 24,
        "score": 24,
        "aggregate": 2,
        "plots": 1,
        "finetune_table": 1,
    }
    # a second fine-tune of one base: no second build; its own prior weight and fine-tune seeds
    two = _edit(
        config,
        **{"models__tiny-sd-noprior": {"base": "tiny-sd", "personalization": {"prior_weight": 0.0, "seed": [0, 1]}}},
    )
    planned = _planned(two, tmp_path / "two")
    assert planned["build_tiny_model"] == 2 and planned["class_images"] == 2 * 2  # none for the new model
    assert planned["train"] == 2 * 2 + 2 * 2  # 2 more concepts × its 2 fine-tune seeds
    assert planned["generate"] == 2 * 2 * 3 * 2 + 2 * 2 * 3 * 2
    config = _edit(config, personalization__prior_weight=0.0)
    assert "class_images" not in _planned(config, tmp_path / "noprior")
    # CFG++ needs DDIM: its points are planned for SD only
    config = _edit(
        config,
        guidance=[
            {"method": "cfg"},
            {"method": "cfgpp", "scale": 0.6},
            {"method": "pgpp", "scale": 0.6, "omega": [0.0, 0.5]},
        ],
    )
    # concepts × (SD 4 + SANA 1 points) × chunks
    assert _planned(config, tmp_path / "ddim")["generate"] == 2 * (4 + 1) * 2
    # points in chunks: SD's 4 points in 2 jobs of 3 + 1, SANA's 1; embedding and scoring follow the jobs
    planned = _planned(_edit(config, sampling__points_per_job=3), tmp_path / "chunks")
    assert planned["generate"] == planned["score"] == 2 * (2 + 1) * 2 and planned["embed_samples"] == 2 * 12
    with pytest.raises(Exception, match=r"models.tiny-sana \(sana\) can run none of the guidance points"):
        plan(_edit(config, guidance=[{"method": "cfgpp", "scale": 0.6}]), tmp_path / "none")


def test_synthetic_preset_plans_the_shipped_base_two_fine_tunes_and_their_seeds(tmp_path):
    preset = yaml.safe_load((ROOT / "config/presets/synthetic.yaml").read_text())
    jobs = plan(preset, tmp_path / "shipped")
    cells = 2 * 5 * 2  # models (prior, no prior) × subjects × LoRA seeds, one seed chunk
    assert Counter(rule for rule, _ in jobs) == {
        "render_dataset": 1,
        "prepare": 5,
        "resolve_model": 1,  # the shipped base: resolved (its sha256 checked), not pretrained
        "base_accuracy": 1,
        "class_images": 3,  # the prior model only; one per subject's shape
        "train": cells,
        "train_encoder": 1,  # the learned DINO stand-in
        "embed_references": 5,
        "embed_samples": cells,
        "learning": 2,
        "grid": 2 * 5,
        "aggregate": 2,
        "plots": 1,
        "finetune_table": 1,
        "all": 1,
        # points_per_job: the grid's 9 points (cfg λ×3, pg ω0 λ×3, pg ω 0.25/0.5/0.75) in one job
        "generate": cells,
        "score": cells,
    }
    outputs = {
        "results/{model}/{finetune}/samples/{concept}/ft{fseed}/{points}/seeds{seeds}".format(**w)
        for rule, w in jobs
        if rule == "generate"
    }
    assert "results/synthetic/db-lora/samples/red_blue_circle/ft1/points00/seeds0_1_2_3" in outputs
    # the rule that made the shipped base stays: a {tiny: synthetic} entry pretrains it here
    preset["models"]["synthetic"] = {"tiny": "synthetic"}
    planned = _planned(preset, tmp_path / "rebuilt")
    assert planned["pretrain_vae"] == planned["pretrain_model"] == planned["base_accuracy"] == 1
    assert "resolve_model" not in planned


def test_subjects_per_job_packs_a_subjects_runs_by_its_concept_alone(tmp_path):
    """``subjects_per_job: K``: one train_<pack> job per pack instead of one train job per run; a
    subject's pack is its concept's hash among ⌈sheet concepts × seeds / K⌉, so adding a subject to
    dataset.concepts changes one pack's members and no other's."""
    from wig.workflow.model import pack_of
    from wig.workflow.study import Study

    config = _edit(_small_config(), jobs__subjects_per_job=2, personalization__seed=[0, 1])
    config["models"].pop("tiny-sana")
    jobs = Counter(rule for rule, _ in plan(_edit(config, dataset__concepts=["brown_dog", "duck_toy"]), tmp_path / "a"))
    packs = {r: n for r, n in jobs.items() if r.startswith("train_")}
    assert "train" not in jobs and sum(packs.values()) == len(packs) >= 1
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        one, both = (
            Study.from_config(_validated(_edit(config, dataset__concepts=c)))
            for c in (["brown_dog"], ["brown_dog", "duck_toy"])
        )
    finally:
        os.chdir(cwd)
    assert both.sheet_size == 2 and sorted(p.rule for p in both.training_packs()) == sorted(packs)
    members = {p.rule: {(r.concept, r.seed) for r in p.runs} for p in both.training_packs()}
    assert set().union(*members.values()) == {(c, s) for c in ("brown_dog", "duck_toy") for s in (0, 1)}
    before = {p.rule: {(r.concept, r.seed) for r in p.runs} for p in one.training_packs()}
    changed = [rule for rule in members if members[rule] != before.get(rule)]
    assert changed == [f"train_tiny_sd_db_lora_pack{pack_of('duck_toy', 2)}"]  # the pack duck_toy joined
    # a method that cannot batch its subjects trains one run per job under the same layout
    os.chdir(ROOT)
    try:
        ti = Study.from_config(_validated(_edit(config, personalization__method="db-lora-ti")))
        # the layout is no setting of the method: where it sat before `jobs:`, one line says where it goes
        old = _edit(config, personalization__subjects_per_job=2)
        old.pop("jobs")
        with pytest.raises(StudyError, match=r"personalization.subjects_per_job: .* jobs: \{subjects_per_job: 2\}"):
            Study.from_config(_validated(old))
    finally:
        os.chdir(cwd)
    assert ti.models["tiny-sd"].finetunes["db-lora-ti"].subjects_per_job == 1 and not ti.training_packs()


def test_a_packs_rule_gets_the_resources_a_profile_sets_for_rule_train(tmp_path):
    """profiles/slurm names rule train's partition, GPU and runtime; a pack's rule is named per pack,
    so the workflow gives it train's."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

    from conftest import copy_workflow

    config = _edit(_small_config(), jobs__subjects_per_job=2)
    config["models"].pop("tiny-sana")
    workdir = copy_workflow(tmp_path, config)
    environ = dict(os.environ)
    try:
        with SnakemakeApi(OutputSettings()) as api:
            workflow = api.workflow(
                resource_settings=ResourceSettings(
                    cores=1, overwrite_resources={"train": {"runtime": 240, "mem_mb": 16000}}
                ),
                config_settings=ConfigSettings(),
                storage_settings=StorageSettings(),
                snakefile=workdir / "workflow/Snakefile",
                workdir=workdir,
            )._workflow
            (pack,) = [r for r in workflow.rules if r.name.startswith("train_tiny_sd_db_lora_pack")]
            assert pack.resources["runtime"] == 240 and pack.resources["mem_mb"] == 16000
            assert pack.resources["gpu"] == 1
    finally:
        os.environ.clear()
        os.environ.update(environ)
