"""The study a config describes (wig.workflow.study), in plain Python: the same jobs the DAG runs, the same
names its paths use, every config error naming its key — no Snakemake subprocess."""

import copy
import re
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from wig.guidance.grid import canonical
from wig.personalization import make
from wig.workflow.config_schema import read_config
from wig.workflow.model import GenerationJob, StudyError, TrainingRun, class_slug
from wig.workflow.study import Study

pytestmark = pytest.mark.check

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # configs name the sheet and images relative to the workflow


def _config(path=".test/config/tiny.yaml", all_finetunes=False, **changes):
    """A config as the workflow reads it; the demo's with its first fine-tune (db-lora) only unless
    ``all_finetunes`` (the planning tests below are about one method; the demo's list has its own)."""
    config = yaml.safe_load((ROOT / path).read_text())
    if path == ".test/config/tiny.yaml" and not all_finetunes:
        config["personalization"] = config["personalization"][0]
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        target = config
        for part in parents:
            target = target[part]
        target[key] = value
    read_config(config)  # numbers as typed, the defaults filled, as the workflow does
    return config


def _counts(study: Study) -> dict[str, int]:
    return {
        "class_images": len(list(study.class_image_sets())),
        "train": len(list(study.training_runs())),
        "generate": len(list(study.generation_jobs())),
    }


# none, cfg λ×4, pg ω×11, pg λ×3, ag, and for SD cfg++, pg++
@pytest.mark.parametrize("preset, points", [("vico-sd15", 22), ("vico-sd21", 22), ("vico-sana", 20), ("vico-sdxl", 20)])
def test_paper_presets_plan_sixteen_concepts_eleven_classes_and_every_point(preset, points):
    study = Study.from_config(_config(f"config/presets/{preset}.yaml"))
    assert len(study.concepts) == 16 and len(study.classes) == 11
    assert _counts(study) == {"class_images": 11, "train": 16, "generate": 16 * points}
    (model,) = study.models.values()
    assert model.kind == "checkpoint" and study.bases("checkpoint") == [model.name]
    assert list(study.seed_chunks) == ["0_1_2_3_4_5_6_7"]  # 8 seeds, one chunk per job
    assert all(len(p) == 31 for p in study.prompts.values())  # max_prompts: null


def test_the_subjects_preset_plans_104_new_subjects_in_seven_packs():
    """The ±0.02 run as pre-registered (docs/studies.md "The run at ±0.02"): 104 subjects none of which the
    earlier runs used, one LoRA seed each, 16 a job (7 packs by hash), CFG and PG ω 0 / 0.5 at λ 4.5."""
    from wig.synthetic.world import SUBJECTS

    study = Study.from_config(_config("config/presets/synthetic-subjects.yaml"))
    assert len(study.concepts) == study.sheet_size == 104 and not set(study.concepts) & {s.name for s in SUBJECTS}
    (model,) = study.models.values()
    (tune,) = model.finetunes.values()
    assert not model.prior and tune.seeds == (0,) and tune.subjects_per_job == 16
    packs = study.training_packs()
    assert len(packs) == 7 and sorted(r.concept for p in packs for r in p.runs) == sorted(study.concepts)
    assert {(p.name, p.scale, getattr(p, "omega", None)) for p in model.points} == {
        ("cfg", 4.5, None),
        ("pg", 4.5, 0.0),
        ("pg", 4.5, 0.5),
    }
    assert study.metrics == ("scene", "oracle_text", "oracle_subject")


def test_synthetic_preset_shares_the_shipped_base_between_two_trainings():
    study = Study.from_config(_config("config/presets/synthetic.yaml"))
    prior, noprior = study.models["synthetic"], study.models["synthetic-noprior"]
    assert noprior.root == "synthetic" and noprior.kind == "checkpoint" and not noprior.prior and prior.prior
    assert study.bases("checkpoint") == ["synthetic"] and study.world_bases() == ["synthetic"]
    (tune,) = prior.finetunes.values()
    assert tune.seeds == noprior.finetunes[tune.name].seeds == (0, 1)
    # 2 models × 5 subjects × 2 LoRA seeds, the grid's 9 points in one job, the 4 seeds in one;
    # one class-image set per shape
    assert _counts(study) == {"class_images": 3, "train": 20, "generate": 20}
    assert list(prior.point_chunks) == ["points00"] and len(prior.points) == 9
    assert study.cfg_scales == [3.0, 4.5, 6.0]
    assert study.metrics == ("scene", "oracle_text", "oracle_subject") and study.metric_encoders() == ["scene"]
    assert study.trained_encoders() == ["scene"] and study.reference_encoders() == ["scene"]
    learning = study.learning_settings("synthetic", "db-lora")
    assert learning["scale"] == 4.5 and learning["seeds"] == [0, 1] and len(learning["runs"]) == 10
    assert learning["subjects"]["red_blue_circle"] == "sks circle"
    # the base from scratch: a {tiny: synthetic} entry, its stages' configs apart
    scratch = Study.from_config(_config("config/presets/synthetic.yaml", models__synthetic={"tiny": "synthetic"}))
    assert scratch.bases("synthetic") == ["synthetic"] and scratch.world_bases() == ["synthetic"]
    assert scratch.pretrain_config("synthetic", "vae")["seed"] == 0
    assert "unet" in scratch.pretrain_config("synthetic", "model") and "unet" not in scratch.pretrain_config(
        "synthetic", "vae"
    )


def test_only_the_scene_encoder_is_trained_here():
    with pytest.raises(StudyError, match=r"encoders.dino: only the kinds \[.scene.\] are trained here"):
        Study.from_config(_config("config/presets/synthetic.yaml", encoders={"dino": {"train": {"steps": 3}}}))
    tiny = Study.from_config(_config("config/presets/synthetic.yaml", encoders={"scene": {"tiny": True}}))
    assert tiny.trained_encoders() == [] and tiny.metric_encoders() == ["scene"]


def test_demo_plans_each_family_its_own_grid():
    study = Study.from_config(_config())
    assert list(study.models) == ["tiny-sana", "tiny-sd"]  # sorted, whatever the YAML order
    sd, sana = study.models["tiny-sd"], study.models["tiny-sana"]
    assert sd.family == "sd" and sana.family == "sana" and study.bases("tiny") == ["tiny-sana", "tiny-sd"]
    assert len(sd.points) == 10 and not {"cfgpp", "pgpp"} & {p.method for p in sana.points} and len(sana.points) == 7
    assert _counts(study) == {"class_images": 4, "train": 4, "generate": 2 * 10 + 2 * 7}
    assert study.tiny_config("tiny-sd")["unet"]
    # metrics: every one the encoders allow; a study that scores CLIP-I and CLIP-T embeds with CLIP alone
    assert study.metrics == ("dino", "clip_i", "clip_t") and study.metric_encoders() == ["dino", "clip"]
    clip = Study.from_config(_config(evaluation__metrics=["clip_i", "clip_t"]))
    assert clip.metric_encoders() == clip.text_encoders() == clip.reference_encoders() == ["clip"]
    assert list(clip.encoder_ids()) == ["clip"]
    layout = study.grid_layout("tiny-sd", "brown_dog")
    assert layout["rows"][:2] == ["none w1.0_l1.0", "cfg w1.0_l7.5"] and layout["points"][1] == "cfg/w1.0_l7.5"
    assert layout["columns"] == ["s0 p00", "s0 p01", "s1 p00", "s1 p01"]  # seeds × max_prompts 2


def test_seeds_and_points_are_chunked_into_jobs_named_canonically():
    config = _config(
        seeds=[0, 1, 2],
        sampling__seeds_per_job=2,
        sampling__points_per_job=4,
        guidance=[
            {"method": "cfg", "scale": [1.5, 3]},
            {"method": "pg", "scale": 3, "omega": [0.1 * 3, 0.3, 0]},
            {"method": "cfgpp", "scale": 0.6},
        ],
    )
    study = Study.from_config(config)
    assert study.seed_chunks == {"0_1": (0, 1), "2": (2,)}
    sd = study.models["tiny-sd"]
    # 0.1 * 3 and 0.3 are one point, one folder
    assert [p.key for p in sd.points] == [
        "cfg/w1.0_l1.5",
        "cfg/w1.0_l3.0",
        "pg/w0.3_l3.0",
        "pg/w0.0_l3.0",
        "cfgpp/w1.0_l0.6",
    ]
    assert {k: len(v) for k, v in sd.point_chunks.items()} == {"points00": 4, "points01": 1}
    assert list(study.models["tiny-sana"].point_chunks) == ["points00"]  # no cfgpp: 4 points, one job
    jobs = list(study.generation_jobs("tiny-sd", concept="brown_dog"))
    assert jobs[0] == GenerationJob("tiny-sd", "db-lora", "brown_dog", 0, "points00", "0_1")
    assert jobs[-1].wildcards == {
        "model": "tiny-sd",
        "finetune": "db-lora",
        "concept": "brown_dog",
        "fseed": "0",
        "points": "points01",
        "seeds": "2",
    }
    assert study.guidance_of("tiny-sd", "points01") == {
        "cfgpp/w1.0_l0.6": {"method": "cfgpp", "scale": 0.6}  # a job's params: the method's own settings
    }
    assert canonical(0.1 * 3) == "0.3" and study.grid_layout("tiny-sd", "brown_dog")["columns"] == [
        f"s{s} p{i:02d}" for s in (0, 1, 2) for i in (0, 1)
    ]


def test_fine_tune_settings_merge_per_model_and_seeds_are_replicates():
    config = _config()
    config["models"]["tiny-sd-noprior"] = {"base": "tiny-sd", "personalization": {"prior_weight": 0, "seed": [3, 4]}}
    study = Study.from_config(config)
    model = study.models["tiny-sd-noprior"]
    assert model.root == "tiny-sd" and model.kind == "tiny" and model.family == "sd"
    (tune,) = model.finetunes.values()
    assert tune.name == "db-lora" and tune.seeds == (3, 4)
    assert (tune.method.steps, tune.method.prior_weight, tune.method.prior) == (100, 0.0, False)
    assert study.bases("tiny") == ["tiny-sana", "tiny-sd"]  # no build for a model on another's weights
    assert list(study.training_runs("tiny-sd-noprior"))[:2] == [
        TrainingRun("tiny-sd-noprior", "db-lora", "brown_dog", 3),
        TrainingRun("tiny-sd-noprior", "db-lora", "brown_dog", 4),
    ]
    assert [r.seed for r in study.training_runs("tiny-sd-noprior")] == [3, 4, 3, 4]
    assert study.subject_prompts("tiny-sd-noprior", "db-lora", "brown_dog") == {
        "prompt": "a photo of sks dog",
        "class_prompt": None,
    }
    assert study.subject_prompts("tiny-sd", "db-lora", "brown_dog")["class_prompt"] == "a photo of dog"
    # a job's params are the method's settings, which `make` takes back
    assert make(**study.finetune_settings("tiny-sd-noprior", "db-lora")) == tune.method
    dog = study.class_of("brown_dog")
    assert ("tiny-sd", dog) in set(study.class_image_sets())
    assert ("tiny-sd-noprior", dog) not in set(study.class_image_sets())
    assert study.class_image_settings("tiny-sd", dog) == {
        "count": 4,
        "height": 64,
        "prompt": "a photo of dog",
        "scale": 7.5,
        "seed": 0,
        "steps": 10,
        "width": 64,
    }


def test_two_fine_tunes_of_one_model_coexist_under_their_names():
    config = _config(
        personalization=[
            {"method": "db-lora", "steps": 10, "weak_step": 2, "resolution": 32},
            {"method": "db-lora", "name": "db-lora-r8", "rank": 8, "resolution": 64, "seed": [1, 2]},
            {"method": "db-lora", "name": "plain", "prior_weight": 0, "resolution": 128},
        ]
    )
    study = Study.from_config(config)
    sd = study.models["tiny-sd"]
    assert list(sd.finetunes) == ["db-lora", "db-lora-r8", "plain"]
    assert sd.finetunes["db-lora-r8"].method.rank == 8 and sd.finetunes["db-lora-r8"].seeds == (1, 2)
    assert sd.finetunes["db-lora"].method.steps == 10 and sd.finetunes["db-lora-r8"].method.steps == 500
    assert ("tiny-sd", "plain") in study.finetune_pairs() and len(study.finetune_pairs()) == 6
    # one run per (model, fine-tune, concept, seed); each its own generation jobs
    assert len(study.concepts) == 2 and _counts(study)["train"] == 2 * 2 * (1 + 2 + 1)  # models × concepts × runs
    runs = {(r.finetune, r.seed) for r in study.training_runs("tiny-sd")}
    assert runs == {("db-lora", 0), ("db-lora-r8", 1), ("db-lora-r8", 2), ("plain", 0)}
    assert {j.finetune for j in study.generation_jobs("tiny-sd", "db-lora-r8")} == {"db-lora-r8"}
    # one class-image set per (model, class), at the largest resolution of the fine-tunes that use it
    assert study.class_image_settings("tiny-sd", study.class_of("brown_dog"))["height"] == 64


def test_class_nouns_become_unique_valid_folder_names(tmp_path):
    assert class_slug("teddy bear").startswith("teddy_bear-") and class_slug("rc car!").startswith("rc_car-")
    assert class_slug("teddy bear") != class_slug("teddy-bear") and class_slug("犬") != class_slug("猫")
    assert re.fullmatch(r"[0-9a-f]{8}", class_slug("犬")) and class_slug("犬") == class_slug("犬")
    study = Study.from_config(_config("config/presets/vico-sd15.yaml"))
    slug = study.class_of("brown_teddybear")
    assert slug.startswith("teddy_bear-") and study.classes[slug] == "teddy bear"
    # nouns outside [A-Za-z0-9], and two nouns of one readable part: one folder each
    root = tmp_path / "images"
    rows = ["concept,class_noun,prompts"]
    for cid, noun in (("a", "犬"), ("b", "猫"), ("c", "teddy bear"), ("d", "teddy-bear"), ("e", "!!!")):
        (root / cid).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / cid / "0.png")
        rows.append(f"{cid},{noun},p.txt")
    (tmp_path / "p.txt").write_text("a photo of {}\n")
    (tmp_path / "sheet.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    study = Study.from_config(
        _config(dataset__sheet=str(tmp_path / "sheet.csv"), dataset__root=str(root), dataset__concepts=list("abcde"))
    )
    assert len(study.classes) == 5 and sorted(study.classes.values()) == sorted(
        ["犬", "猫", "teddy bear", "teddy-bear", "!!!"]
    )
    assert all(re.fullmatch(r"[A-Za-z0-9_]*-?[0-9a-f]{8}", slug) for slug in study.classes)
    assert all(study.classes[study.class_of(c)] == concept.class_noun for c, concept in study.concepts.items())


def test_a_study_is_frozen_and_its_params_have_sorted_keys():
    study = Study.from_config(_config())
    with pytest.raises(AttributeError):
        study.models["tiny-sd"].family = "sana"
    spec = study.models["tiny-sd"].spec
    assert list(spec) == sorted(spec)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"guidance": [{"method": "pg", "omega": 1.5}]}, "1.5"),
        ({"guidance": [{"method": "cfg", "omega": 0.5}]}, "guidance[0].omega"),
        ({"guidance": [{"method": "cfg", "weak": "lora"}]}, "guidance[0].weak applies to ag only"),
        ({"dataset__concepts": ["brown_dog", "unicorn"]}, "['unicorn'] are not in the sheet"),
        (
            {"dataset__root": "resources/datasets/vico"},
            "has no folder for 2 of 2 concepts (brown_dog, duck_toy); dataset.concepts is unset",
        ),
        ({"dataset__columns": {"class_noun": "noun"}}, "no column 'noun' for the class_noun"),
        (
            {"personalization__weak_step": 100},
            "personalization: weak_step must lie in [1, steps), got 100 with steps=100",
        ),
        ({"personalization__rnak": 8}, "personalization: rnak is no setting of db-lora"),
        (
            {"personalization": {"method": "textual-inversion"}},
            "personalization.method: unknown personalization method",
        ),
        (
            {"personalization": [{"method": "db-lora"}, {"method": "db-lora", "rank": 8}]},
            "personalization[1].name: two",
        ),
        ({"personalization": {"method": "db-lora", "name": "tables"}}, "personalization.name: 'tables' is taken"),
        ({"personalization": {"method": "db-lora", "seed": [1, 1]}}, "personalization.seed: seeds repeat"),
        ({"models__tiny-sd": {"base": "tiny-xl"}}, "models.tiny-sd.base: no model 'tiny-xl'"),
        (
            {"models__tiny-sd": {"base": "tiny-sana"}, "models__tiny-sana": {"base": "tiny-sd"}},
            "models.tiny-sana: base models form a cycle (tiny-sana -> tiny-sd -> tiny-sana)",
        ),
        (
            {"models__tiny-sd": {"tiny": "sd", "personalization": {"weak_step": 200}}},
            "models.tiny-sd.personalization (fine-tune db-lora): weak_step must lie in [1, steps)",
        ),
        (
            {"models__tiny-sd": {"tiny": "sd", "personalization": {"stepz": 9}}},
            "models.tiny-sd.personalization.stepz: no fine-tune's method has this setting",
        ),
        ({"models__tiny-sd": {"tiny": "sd", "family": "sana"}}, "models.tiny-sd: family sana but tiny sd"),
        ({"encoders": {}}, "encoders is empty and dataset.render is not set"),
        ({"evaluation__metrics": ["dino", "imagereward"]}, "evaluation.metrics: unknown metric 'imagereward'"),
        (
            {"personalization": {"method": "given", "weights": "dpo/unet", "seed": [0, 1]}},
            "personalization.seed: a given fine-tune is not trained, it has no seeds to vary",
        ),
        ({"personalization": {"method": "given"}}, "given: weights must name the fine-tune"),
        (
            {"evaluation__metrics": ["clip_t"]},
            "evaluation.metrics: ['clip_t'] measure no subject fidelity; the tables compare subject with text",
        ),
        (
            {"evaluation__metrics": ["dino", "pickscore"]},
            "evaluation.metrics: pickscore reads pickscore embeddings, but encoders.pickscore is not set",
        ),
        (
            {"evaluation__metrics": ["oracle_text"]},
            "oracle_text reads the synthetic world's images, but dataset.render",
        ),
        ({"guidance": [{"method": "cfgpp"}]}, "models.tiny-sana (sana) can run none of the guidance points"),
        (
            {"dataset__render": {"n_images": 4}, "dataset__fetch": {"repo": "x", "commit": "abcdef1", "subdir": "y"}},
            "dataset.fetch and dataset.render both fill dataset.root",
        ),
    ],
)
def test_config_errors_name_their_key(changes, message):
    config = _config()
    for key, value in changes.items():
        *parents, last = key.split("__")
        target = config
        for part in parents:
            target = target[part]
        target[last] = copy.deepcopy(value)
    with pytest.raises(StudyError) as err:
        Study.from_config(config)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_demo_plans_every_fine_tune_where_its_family_allows_and_sag_its_class_prompts():
    study = Study.from_config(_config(all_finetunes=True))
    pairs = study.finetune_pairs()
    assert pairs == [
        ("tiny-sana", "db-lora"),
        ("tiny-sd", "db-lora"),
        ("tiny-sd", "db-lora-ti"),
        ("tiny-sd", "classdiffusion"),
    ]  # TI and ClassDiffusion train the SD family only
    # each method names the subject its own way in the prompts it trains and is evaluated on
    concept = next(iter(study.concepts))
    subjects = {ft: study.concept_prompts("tiny-sd", ft, concept)[0] for _, ft in pairs[1:]}
    assert (
        "sks" in subjects["db-lora"] and "<s0><s1>" in subjects["db-lora-ti"] and "<new1>" in subjects["classdiffusion"]
    )
    # a SAG job gets c₀ per prompt: the prompt with the subject replaced by its class noun
    chunks = study.models["tiny-sd"].point_chunks
    (sag,) = [name for name, points in chunks.items() if any(p.method == "sag" for p in points)]
    texts = study.extra_texts_of("tiny-sd", sag, concept)
    assert len(texts["class_prompt"]) == len(study.prompts[concept])
    assert not any(tok in t for t in texts["class_prompt"] for tok in ("sks", "<s0>", "<new1>"))


@pytest.mark.parametrize(
    "preset, finetunes", [("vico-sd15-table2", ["db-lora-ti"]), ("vico-sd21-table2", ["db-lora-ti", "classdiffusion"])]
)
def test_table2_presets_plan_the_methods_with_sag_and_the_omega_sweep(preset, finetunes):
    # Table 2's rows (none, cfg, sag ×2, ag) and the 11-point ω sweep of Tables 12–13, per fine-tune
    study = Study.from_config(_config(f"config/presets/{preset}.yaml"))
    (model,) = study.models.values()
    assert list(model.finetunes) == finetunes and len(model.points) == 1 + 1 + 2 + 1 + 11
    assert _counts(study) == {
        "class_images": 11 if "db-lora-ti" in finetunes else 0,
        "train": 16 * len(finetunes),
        "generate": 16 * 16 * len(finetunes),
    }


def test_the_workflow_skips_image_edit_guidance_its_families_cannot_run():
    edit = {"method": "ip2p-cfg", "scale": 7.5, "image_scale": 1.5}
    study = Study.from_config(_config(guidance=[{"method": "cfg", "scale": 7.5}, edit]))
    assert [p.method for p in study.models["tiny-sd"].points] == ["cfg"]
    with pytest.raises(StudyError, match=r"models.tiny-\w+ \(\w+\) can run none of the guidance points: ip2p-cfg"):
        Study.from_config(_config(guidance=[edit]))


PARTI = "resources/datasets/partiprompts/concepts.csv"


def _prompt_set(**changes):
    """The demo's models with a given fine-tune over the shipped PartiPrompts subset (no image root)."""
    config = _config(
        personalization={"name": "dpo", "method": "given", "weights": "dpo/unet"},
        encoders={"clip": {"tiny": True}, "pickscore": {"tiny": True}, "dino": {"tiny": True}},
        **changes,
    )
    config["dataset"] = {k: v for k, v in config["dataset"].items() if k not in ("root", "prompts")}
    config["dataset"]["sheet"] = PARTI
    # a given fine-tune has no weak checkpoint: the tiny config's AG against it is refused (below)
    config["guidance"] = [g for g in config["guidance"] if g.get("weak") != "lora"]
    return config


def test_a_point_needing_a_checkpoint_the_fine_tune_lacks_is_refused_naming_both():
    config = _prompt_set()
    config["guidance"].append({"method": "ag", "scale": 7.5, "ag_scale": 2.0, "weak": "lora"})
    with pytest.raises(
        StudyError, match=r"guidance ag/w1.0_l7.5_a2.0_weak needs a run's weak checkpoint: fine-tune dpo"
    ):
        Study.from_config(config)
    config = _config(guidance=[{"method": "dreamblend", "scale": 7.5, "strength": 0.5, "underfit": 2, "overfit": 6}])
    with pytest.raises(StudyError, match=r"needs the checkpoint at step 2: add it to fine-tune db-lora's checkpoints"):
        Study.from_config(config)
    config["personalization"]["checkpoints"] = [2, 6]
    (model, *_) = Study.from_config(config).models.values()
    assert {p.required_adapters().pop() for p in model.points} <= {"step2", "step6"}


def test_dpo_preset_plans_partiprompts_text_metrics_cfg_pg_at_its_omega_and_the_sweep_without_training():
    study = Study.from_config(_config("config/presets/dpo-sd15.yaml"))
    assert list(study.concepts) == ["partiprompts"] and not study.references
    assert len(study.prompts["partiprompts"]) == 120 and study.prompts["partiprompts"][0] == "bond"
    assert study.metrics == ("pickscore", "clip_t") and study.reference_encoders() == []
    (model,) = study.models.values()
    (finetune,) = model.finetunes.values()
    assert not finetune.method.trains and model.kind == "checkpoint"
    points = {(p.method, getattr(p, "omega", None)) for p in model.points}
    assert points == {("cfg", None)} | {("pg", w) for w in (0, 0.2, 0.4, 0.6, 0.8)}
    assert {p.scale for p in model.points} == {7.5}
    assert _counts(study) == {"class_images": 0, "train": 1, "generate": 6}  # the "run" is the given weights
    layout = study.grid_layout("sd15", "partiprompts")
    assert layout["prompts"] == 8 and len(layout["columns"]) == 2 * 8  # grid_prompts: 8, two seeds


def test_style_preset_plans_dreamsim_to_the_style_reference_and_pg_at_omega_zero(tmp_path):
    (tmp_path / "style").mkdir()
    Image.new("RGB", (64, 64), "orange").save(tmp_path / "style/reference.png")
    study = Study.from_config(_config("config/presets/style-lora-sd15.yaml", dataset__root=str(tmp_path)))
    assert list(study.concepts) == ["style"] and study.references
    assert study.metrics == ("dreamsim", "clip_t") and study.reference_encoders() == ["dreamsim"]
    assert study.prompts["style"][0] == "a house by a lake"  # used whole: the LoRA carries the style
    (model,) = study.models.values()
    (finetune,) = model.finetunes.values()
    assert finetune.method.kind == "lora" and not finetune.method.trains
    assert ("pg", 0.0) in {(p.method, getattr(p, "omega", None)) for p in model.points}


def test_a_prompt_set_scores_text_fidelity_alone_and_refuses_what_needs_references():
    study = Study.from_config(_prompt_set())
    # by default every metric its encoders allow, less those that read reference images
    assert study.metrics == ("clip_t", "pickscore") and not study.references
    assert study.grid_layout("tiny-sd", "partiprompts")["prompts"] == len(study.prompts["partiprompts"])
    with pytest.raises(StudyError, match="evaluation.metrics: dino reads the concepts' reference images, but dataset"):
        Study.from_config(_prompt_set(evaluation__metrics=["dino", "clip_t"]))
    trained = _prompt_set()
    trained["personalization"] = {"method": "db-lora"}
    with pytest.raises(StudyError, match=r"fine-tune db-lora \(db-lora\) trains on the concepts' reference images"):
        Study.from_config(trained)


def test_a_trained_fine_tune_needs_each_concept_named_by_a_class_noun(tmp_path):
    (tmp_path / "prompts.txt").write_text("a watercolour of a harbour\n")
    (tmp_path / "sheet.csv").write_text("concept,class_noun,folder,prompts\nstyle,,brown_dog,prompts.txt\n")
    config = _config(dataset__sheet=str(tmp_path / "sheet.csv"), dataset__root="resources/datasets/demo/images")
    with pytest.raises(StudyError, match=r"fine-tune db-lora \(db-lora\) names its subject as .* concept style has no"):
        Study.from_config(config)
    config["personalization"] = {"method": "given", "weights": "style.safetensors", "kind": "lora"}
    config["guidance"] = [g for g in config["guidance"] if g.get("weak") != "lora"]  # no weak checkpoint
    assert Study.from_config(config).prompts["style"] == ("a watercolour of a harbour",)


def test_ip2p_preset_edits_with_ip2p_guidance_only_against_its_sd_base():
    study = Study.from_config(_config("config/presets/ip2p.yaml"))
    (model,) = study.models.values()
    assert model.family == "ip2p" and model.edits and model.kind == "checkpoint"
    (finetune,) = model.finetunes.values()
    assert (finetune.method.name, finetune.method.kind, finetune.method.trains) == ("given", "base", False)
    assert {p.method for p in model.points} == {"ip2p-cfg"} and {p.omega for p in model.points} == {
        1.0,
        0.0,
        0.2,
        0.4,
        0.6,
        0.8,
    }
    assert study.prompts["brown_dog"][0] == "turn it into a watercolour painting"  # instructions, whole
    assert study.metrics == ("dino", "clip_i", "clip_t")


def test_an_image_family_plans_image_edit_guidance_and_needs_images():
    grid = [{"method": "cfg", "scale": 7.5}, {"method": "ip2p-cfg", "scale": 7.5, "omega": [1.0, 0.0]}]
    config = _config(guidance=grid)
    config["models"] = {"sd": {"tiny": "sd"}, "edit": {"tiny": "ip2p"}}
    config["personalization"] = {"method": "given", "kind": "base", "weights": "sd-base"}
    study = Study.from_config(config)
    assert [p.method for p in study.models["sd"].points] == ["cfg"]  # no input image to edit
    assert [p.method for p in study.models["edit"].points] == ["ip2p-cfg", "ip2p-cfg"]
    assert study.models["edit"].edits and not study.models["sd"].edits
    assert study.tiny_config("edit") == study.tiny_config("sd")  # the IP2P twin is built from SD's config
    with pytest.raises(StudyError, match=r"models.edit \(ip2p\) can run none of the guidance points: cfg \(it edits"):
        Study.from_config({**config, "guidance": grid[:1]})
    prompt_set = _prompt_set()
    prompt_set["models"] = {"edit": {"tiny": "ip2p"}}
    prompt_set["guidance"] = grid[1:]
    with pytest.raises(StudyError, match=r"models.edit \(ip2p\) edits each concept's first image, but dataset.root"):
        Study.from_config(prompt_set)


def test_dreambooth_preset_plans_thirty_subjects_with_the_protocols_prompts_and_images():
    study = Study.from_config(_config("config/presets/dreambooth-sd15.yaml"))
    assert len(study.concepts) == 30 and len(study.classes) == 15
    assert {len(p) for p in study.prompts.values()} == {25} and list(study.seed_chunks) == ["0_1_2_3"]
    assert study.prompts["dog8"][0] == "a sks dog in the jungle" and study.fetch["commit"] == "4f887af7"
    assert study.metrics == ("dino", "clip_i", "clip_t")
    with pytest.raises(StudyError, match="dataset.format dreambooth: the table holds the prompts and classes"):
        Study.from_config(_config("config/presets/dreambooth-sd15.yaml", dataset__prompts="p.txt"))


def test_dreamblend_preset_plans_dense_cfg_pg_and_dreamblend_points_on_one_run_per_subject():
    study = Study.from_config(_config("config/presets/dreamblend-sd15.yaml"))
    (model,) = study.models.values()
    (finetune,) = model.finetunes.values()
    assert (finetune.method.steps, finetune.method.weak_step) == (250, 5)  # overfit = full, underfit = weak
    by_method = {}
    for point in model.points:
        by_method.setdefault(point.method, []).append(point)
    assert [p.scale for p in by_method["cfg"]] == [3.0, 5.0, 7.5, 10.0, 12.5]
    assert [p.omega for p in by_method["pg"]] == [0.0, 0.25, 0.5, 0.75]
    assert [p.strength for p in by_method["dreamblend"]] == [0.01, 0.03, 0.1, 0.3, 1.0]
    assert all(p.required_adapters() == {"full", "weak"} for p in by_method["dreamblend"])
    assert study.metrics == ("dino", "clip_i", "clip_t", "dino_diversity") and len(study.concepts) == 30
    assert list(study.seed_chunks) == ["0_1_2_3"]  # diversity compares a job's four seeds


def test_synthetic_dreamblend_preset_is_the_demo_with_dreamblend_beside_cfg_and_pg():
    demo = Study.from_config(_config("config/config.yaml"))
    study = Study.from_config(_config("config/presets/synthetic-dreamblend.yaml"))
    assert (
        study.concepts == demo.concepts and study.metrics == demo.metrics
    )  # the oracle's two sides, the scene encoder
    ((model, m),) = study.models.items()
    assert m.finetunes == demo.models[model].finetunes  # the demo's runs: the weak (step 250) is the underfit
    assert [(p.method, p.scale) for p in m.points][:2] == [("cfg", 4.5), ("pg", 4.5)]
    assert [p.strength for p in m.points if p.method == "dreamblend"] == [10.0, 30.0, 100.0, 300.0]
    assert len(m.point_chunks) == 1  # one generation job per run: the grid's six points


@pytest.mark.parametrize(
    "preset, names, setting, values",
    [
        ("vico-sd15-rank", ["rank8", "rank16", "rank32"], "rank", [8, 16, 32]),
        ("vico-sd21-rank", ["rank8", "rank16", "rank32"], "rank", [8, 16, 32]),
        ("vico-sd15-steps", ["steps600", "steps1000"], "steps", [600, 1000]),
    ],
)
def test_ablation_presets_fine_tune_one_base_several_ways_cfg_against_pg(preset, names, setting, values):
    study = Study.from_config(_config(f"config/presets/{preset}.yaml"))
    (model,) = study.models.values()
    assert list(model.finetunes) == names
    assert [getattr(f.method, setting) for f in model.finetunes.values()] == values
    assert [(p.method, getattr(p, "omega", None), p.scale) for p in model.points] == [
        ("cfg", None, 7.5),
        ("pg", 0.0, 7.5),
    ]
    assert _counts(study) == {"class_images": 11, "train": 16 * len(names), "generate": 16 * 2 * len(names)}


SEARCH = {"method": "pg", "parameter": "scale", "settings": {"omega": 0.0}, "bracket": [1.0, 15.0], "objective": "dino"}


def test_a_search_probes_ordinary_grid_points_and_shares_the_grids_jobs():
    study = Study.from_config(_config(search=[SEARCH]))
    (spec,) = study.searches.values()
    assert spec.name == "pg-scale" and spec.point(3.35).key == "pg/w0.0_l3.35"
    # a probe on the grid is the grid's own job; off the grid its own, named by search and value
    assert study.probe_chunk("tiny-sd", "pg-scale", 7.5) == "pg/w0.0_l7.5"
    assert study.probe_chunk("tiny-sd", "pg-scale", 3.35) == "probe/pg-scale/3.35"
    assert study.guidance_of("tiny-sd", "probe/pg-scale/3.35") == {"pg/w0.0_l3.35": spec.point(3.35).settings()}
    jobs = study.probe_jobs("tiny-sd", "db-lora", "pg-scale", 3.35)
    assert len(jobs) == len(study.concepts) * len(study.seed_chunks) and {j.points for j in jobs} == {
        "probe/pg-scale/3.35"
    }
    assert study.search_settings("pg-scale")["bracket"] == [1.0, 15.0]


def test_the_selection_split_is_seeded_disjoint_from_evaluation_and_per_concept():
    study = Study.from_config(_config(search=[SEARCH]))
    split = study.selection
    assert split == Study.from_config(_config(search=[SEARCH])).selection  # seeded: the same every time
    for concept, chosen in split.items():
        n = len(study.prompts[concept])
        assert 0 < len(chosen) < n and len(chosen) == round(0.5 * n) and len(set(chosen)) == len(chosen)
    other = Study.from_config(_config(search=[SEARCH], selection={"seed": 1})).selection
    assert other != split


@pytest.mark.parametrize(
    "change, message",
    [
        ({"objective": "pickscore"}, "search[0].objective: 'pickscore' is not among the study's metrics"),
        ({"parameter": "weak"}, "search[0].parameter: pg has no float parameter 'weak'"),
        ({"method": "nope"}, "search[0].method:"),
        ({"bracket": None}, "search[0].bracket: give [low, high] for scale"),
        ({"bracket": [5.0, 1.0]}, "search[0]: search bracket [5.0, 1.0]: the low end must be below"),
        ({"settings": {"scale": 3.0}}, "search[0].settings: scale is the searched parameter"),
        ({"text_at_least": {"method": "cfg", "scale": 3.0}}, "search[0].text_at_least: cfg/w1.0_l3.0 is not a point"),
    ],
)
def test_search_errors_name_their_key_before_any_job(change, message):
    entry = {k: v for k, v in (SEARCH | change).items() if v is not None}
    with pytest.raises(StudyError) as err:
        Study.from_config(_config(search=[entry]))
    assert message in str(err.value)


# --- configs as people write them ------------------------------------------------------------------


def _yaml(text: str):
    """A value as PyYAML reads it from a config file (YAML 1.1: ``1e-4`` is a string)."""
    return yaml.safe_load(f"value: {text}")["value"]


def test_numbers_as_people_type_them_mean_what_they_say():
    """``lr: 1e-4`` unquoted (a string to PyYAML), ``steps: 500.0``, ``max_prompts: 2.0``,
    ``points_per_job: 2.0``: the study planned from them is the study planned from the canonical
    spellings, each setting with its type (int steps, float lr)."""
    assert _yaml("1e-4") == "1e-4" and _yaml("500.0") == 500.0  # what PyYAML hands the workflow
    typed = _config(
        personalization__lr=_yaml("1e-4"),
        personalization__steps=_yaml("500.0"),
        personalization__weak_step=_yaml("1.25e+2"),
        dataset__max_prompts=_yaml("2.0"),
        sampling__points_per_job=_yaml("2.0"),
        sampling__steps=_yaml("1E1"),
    )
    canonical = _config(
        personalization__lr=1.0e-4,
        personalization__steps=500,
        personalization__weak_step=125,
        dataset__max_prompts=2,
        sampling__points_per_job=2,
        sampling__steps=10,
    )
    # the schema's keys as their numbers; a method's settings (open to the schema) in its checked object
    assert {k: v for k, v in typed.items() if k != "personalization"} == {
        k: v for k, v in canonical.items() if k != "personalization"
    }
    assert [type(typed["dataset"]["max_prompts"]), type(typed["sampling"]["points_per_job"])] == [int, int]
    study, reference = Study.from_config(typed), Study.from_config(canonical)
    for name, model in study.models.items():
        method = model.finetunes["db-lora"].method
        assert (method.lr, method.steps, method.weak_step) == (1e-4, 500, 125)
        assert [type(method.lr), type(method.steps), type(method.weak_step)] == [float, int, int]
        # what a job's params hold (Snakemake's rerun trigger): the same values, the same types
        settings = reference.models[name].finetunes["db-lora"].method.settings()
        assert method.settings() == settings
        assert {k: type(v) for k, v in method.settings().items()} == {k: type(v) for k, v in settings.items()}
        assert list(model.point_chunks) == list(reference.models[name].point_chunks)
    assert _counts(study) == _counts(reference)
    assert all(len(p) == 2 for p in study.prompts.values())


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"personalization__steps": 2.5}, r"steps must be an integer, got 2\.5"),
        ({"personalization__lr": "fast"}, r"lr must be a number, got 'fast'"),
        ({"dataset__max_prompts": 2.5}, r"dataset\.max_prompts: 2\.5 is not of type 'integer'"),
        ({"sampling__points_per_job": "2.5"}, r"sampling\.points_per_job: 2\.5 is not of type 'integer'"),
        ({"sampling__steps": "1e400"}, r"sampling\.steps: inf is not of type 'integer'"),
    ],
    ids=["steps-2.5", "lr-word", "max-prompts-2.5", "points-per-job-2.5-string", "steps-overflow"],
)
def test_a_number_with_no_integer_meaning_is_refused_in_one_line_naming_the_key(changes, key):
    from wig.errors import WigError

    with pytest.raises(WigError) as err:
        Study.from_config(_config(**changes))
    message = str(err.value)
    assert "\n" not in message and re.search(key, message), message


def test_an_unreadable_photo_is_named_when_the_config_is_read(tmp_path):
    """A zero-byte (or foreign) file among a concept's photos stops the study as its config is read —
    before any job, before any model is built — in one line naming the file."""
    from wig.errors import WigError

    root = tmp_path / "images"
    shutil.copytree(ROOT / "resources/datasets/demo/images", root)
    folder = sorted(p for p in root.iterdir() if p.is_dir())[0]
    (folder / "zz_broken.jpg").write_bytes(b"")
    with pytest.raises(WigError) as err:
        Study.from_config(_config(dataset__root=str(root)))
    assert "\n" not in str(err.value) and f"{folder / 'zz_broken.jpg'}: an empty file (0 bytes)" in str(err.value)
    (folder / "zz_broken.jpg").write_bytes(b"not a picture at all")
    with pytest.raises(WigError, match=r"zz_broken\.jpg: not a readable image"):
        Study.from_config(_config(dataset__root=str(root)))


def test_guidance_values_as_people_type_them_are_the_same_grid_points():
    typed = Study.from_config(_config(guidance=[{"method": "pg", "scale": [_yaml("7.5e0"), 5], "omega": _yaml("0")}]))
    canonical = Study.from_config(_config(guidance=[{"method": "pg", "scale": [7.5, 5.0], "omega": 0.0}]))
    for name, model in typed.models.items():
        assert [p.key for p in model.points] == [p.key for p in canonical.models[name].points]
        assert [p.settings() for p in model.points] == [p.settings() for p in canonical.models[name].points]
    with pytest.raises(Exception, match=r"omega.*'zero'|'zero'.*omega"):
        Study.from_config(_config(guidance=[{"method": "pg", "scale": 7.5, "omega": "zero"}]))
