"""The Snakemake workflow on a temporary copy: config checks, a small run, targeted reruns."""

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from PIL import Image

from wig.workflow.config_schema import read_config
from wig.workflow.study import Study

from conftest import ROOT, deploy_project, results_of
from conftest import copy_workflow as _workdir
from conftest import edit_config as _edit
from conftest import run_snakemake as _snakemake
from conftest import small_config as _small_config
from conftest import write_config as _write_config
from test_provenance import _scripted_rules, _walk

pytestmark = pytest.mark.workflow

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _planned(workdir, *args, env=None) -> dict[str, int]:
    """Rule -> job count of what a run would do now (from `snakemake -n`)."""
    proc = _snakemake(workdir, "-n", *args, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:")[1].split("total")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


# the study's own errors are unit-tested in test_study.py; here: that schema and study errors both
# stop the workflow at parse time, naming the key
@pytest.mark.parametrize(
    "changes, message",
    [
        ({"guidance": [{"method": "magic"}]}, "magic"),
        ({"seeds": []}, "seeds"),
        ({"sampling__stepz": 3}, "stepz"),
        ({"models__tiny-sd": {"tiny": "sd", "personalization": {"stepz": 9}}}, "stepz"),
        ({"personalization": {"method": "db-lora", "rnak": 8}}, "personalization: rnak is no setting of db-lora"),
        ({"encoders": {"dino": {"tiny": True}}}, "evaluation.metrics: ['dino'] measure no text fidelity"),
        ({"dataset__concepts": ["brown_dog", "unicorn"]}, "config: dataset.concepts ['unicorn'] are not in the sheet"),
        ({"models__tiny-sd": {"base": "tiny-sana"}, "models__tiny-sana": {"base": "tiny-sd"}}, "form a cycle"),
    ],
)
def test_config_errors_stop_before_any_job(tmp_path, changes, message):
    config = _small_config()
    for key, value in changes.items():
        config = _edit(config, **{key: value})
    workdir = _workdir(tmp_path, config)
    proc = _snakemake(workdir, "-n")
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert not (results_of(workdir)).exists()


def test_a_config_typed_as_people_type_it_plans_the_canonical_study(tmp_path):
    """``lr: 1e-3`` unquoted (a string to PyYAML), ``steps: 6.0``, ``max_prompts: 1.0`` in the config
    file: Snakemake plans the jobs the canonical spellings plan."""
    config = _small_config()
    canonical = _planned(_workdir(tmp_path / "canonical", config))
    workdir = _workdir(tmp_path / "typed", config)
    text = (workdir / "config/config.yaml").read_text()
    typed = re.sub(r"(?m)^(  lr: )0\.001$", r"\g<1>1e-3", text)
    typed = re.sub(r"(?m)^(  steps: )6$", r"\g<1>6.0", typed, count=1)
    typed = re.sub(r"(?m)^(  max_prompts: )1$", r"\g<1>1.0", typed)
    assert typed.count("1e-3") == 1 and typed.count("6.0") == 1 and typed.count("max_prompts: 1.0") == 1
    (workdir / "config/config.yaml").write_text(typed)
    assert _planned(workdir) == canonical


def test_an_empty_photo_stops_planning_in_one_line_naming_it(tmp_path):
    config = _small_config()
    workdir = _workdir(tmp_path, _edit(config, dataset__root="photos"))
    shutil.copytree(ROOT / "resources/datasets/demo/images", workdir / "photos")
    (workdir / "photos/brown_dog/zz.jpg").write_bytes(b"")
    proc = _snakemake(workdir, "-n")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out
    assert "photos/brown_dog/zz.jpg: an empty file (0 bytes), not an image" in out, out[-2000:]
    assert "Traceback" not in out and not (results_of(workdir)).exists()
    assert len([line for line in out.splitlines() if line.strip()]) <= 4, out


def test_more_gpu_jobs_than_device_ids_stop_before_any_job(tmp_path):
    config = _small_config()
    config["runtime"]["gpus"] = [0, 1]
    workdir = _workdir(tmp_path, config)
    proc = _snakemake(workdir, "-n", "--resources", "gpu=3")
    assert proc.returncode != 0
    assert "--resources gpu=3 lets 3 GPU jobs run at once but there are only 2 device ids" in proc.stdout + proc.stderr
    assert _snakemake(workdir, "-n", "--resources", "gpu=2").returncode == 0


# none, cfg λ×4, pg ω×11, pg λ×3, ag, and for SD cfg++, pg++
PAPER_POINTS = {
    "vico-sd15": 1 + 4 + 11 + 3 + 1 + 1 + 1,
    "vico-sd21": 1 + 4 + 11 + 3 + 1 + 1 + 1,
    "vico-sana": 1 + 4 + 11 + 3 + 1,
    "vico-sdxl": 1 + 4 + 11 + 3 + 1,
}


# the presets that carry the paper's user study draw its sets in one job (votes not yet named: no table)
USER_STUDY_JOBS = {"vico-sana": {"user_study": 1}}


@pytest.mark.parametrize("preset", list(PAPER_POINTS))
def test_presets_build_the_full_paper_dag_without_weights(tmp_path, preset):
    points = PAPER_POINTS[preset]
    workdir = _workdir(tmp_path, _small_config())
    proc = _snakemake(workdir, "-n", "--configfile", f"config/presets/{preset}.yaml")
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (proc.stdout + proc.stderr).split("Job stats:")[1].split("total")[0]
    counts = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}
    assert counts == {
        "fetch_dataset": 1,
        "prepare": 16,
        "class_images": 11,
        "train": 16,  # 11 class nouns in ViCo
        "generate": 16 * points,
        "grid": 16,
        "embed_references": 16 * 2,
        "embed_texts": 16,
        "embed_samples": 16 * points * 2,
        "score": 16 * points,
        "aggregate": 1,
        "plots": 1,
        "finetune_table": 1,
        "all": 1,
        "resolve_model": 1,
        "resolve_encoder": 2,
        **USER_STUDY_JOBS.get(preset, {}),
    }  # 8 seeds in one chunk per job; no tiny models or encoders: the preset names real ones, resolved
    # once on the submit host
    assert "tiny-s" not in proc.stdout  # the preset replaced the demo config, not merged into it


def test_a_preset_with_a_typo_fails_naming_the_key(tmp_path):
    workdir = _workdir(tmp_path, _small_config())
    preset = (workdir / "config/presets/vico-sd15.yaml").read_text().replace("personalization:", "personalisation:")
    (workdir / "typo.yaml").write_text(preset)
    proc = _snakemake(workdir, "-n", "--configfile", "typo.yaml")
    out = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode != 0
    # a few lines (the key, where, the nearest valid key), never the schema or the config dumped
    assert len(out) <= 4, out
    assert "unknown key 'personalisation' at the top level (did you mean 'personalization'?)" in "\n".join(out)


def test_fetch_rule_clones_the_pinned_commit(tmp_path):
    origin = tmp_path / "origin"
    shutil.copytree(ROOT / "resources/datasets/demo/images/brown_dog", origin / "inputs/brown_dog")
    git = ["git", "-C", str(origin), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(origin)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "images"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    (origin / "inputs/brown_dog/00.jpg").unlink()  # a later commit the pin must not see
    subprocess.run([*git, "commit", "-qam", "drop one"], check=True)
    config = _edit(
        _small_config(),
        dataset__root="data/vico",
        dataset__fetch={"repo": str(origin), "commit": commit[:10], "subdir": "inputs"},
    )
    (tmp_path / "work").mkdir()
    workdir = _workdir(tmp_path / "work", config)
    proc = _snakemake(workdir, "results/small/concepts/brown_dog")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list((workdir / "data/vico/brown_dog").glob("*.jpg"))) == 5
    assert len(pl.read_parquet(results_of(workdir) / "concepts/brown_dog/manifest.parquet")) == 5


def test_the_synthetic_world_renders_its_dataset_through_the_dag(tmp_path):
    config = _edit(
        _small_config(),
        dataset__sheet="resources/datasets/synthetic/concepts.csv",
        dataset__root="data/synthetic",
        dataset__render={"n_images": 4},
        dataset__concepts=["yellow_magenta_triangle", "red_blue_circle"],
    )
    workdir = _workdir(tmp_path, config)
    planned = _planned(workdir)
    assert planned["render_dataset"] == 1 and planned["prepare"] == 2 and "fetch_dataset" not in planned
    proc = _snakemake(workdir, "results/small/concepts/yellow_magenta_triangle")
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = pl.read_parquet(results_of(workdir) / "concepts/yellow_magenta_triangle/manifest.parquet")
    assert len(manifest) == 4 and len(list((workdir / "data/synthetic").glob("*/*.png"))) == 4 * 5
    assert _planned(workdir)["generate"] == 2 * 2 * 3  # models × concepts × points
    # a generation job's scores carry the oracle's pixel metrics beside the encoders'
    score = "results/small/tiny-sd/db-lora/scores/yellow_magenta_triangle/ft0/cfg/w1.0_l7.5/seeds0_1.parquet"
    proc = _snakemake(workdir, score)
    assert proc.returncode == 0, proc.stderr[-2000:]
    scores = pl.read_parquet(workdir / score)
    assert len(scores) == 2 * 1 * 2  # seeds × prompts (max_prompts 1) × protocols
    for name in ("oracle_text", "oracle_subject"):
        assert scores[name].is_between(0.0, 1.0).all()
    _write_config(workdir, _edit(config, dataset__fetch={"repo": "x", "commit": "abcdef1", "subdir": "y"}))
    bad = _snakemake(workdir, "-n")
    assert bad.returncode != 0 and "dataset.fetch and dataset.render both fill dataset.root" in bad.stdout + bad.stderr


def _check_gpu_slots(logs, n_jobs, ids):
    """Every GPU job held one id (the one it saw), no two jobs held an id at once, every id was used."""
    held = {}
    for log in logs.rglob("*.log"):
        text = log.read_text()
        got = re.search(r"CUDA_VISIBLE_DEVICES (\S+)\n.*gpu (\S+) acquired at ([\d.]+)", text)
        if got:
            assert got[1] == got[2], log
            released = re.search(rf"gpu {got[2]} released at ([\d.]+)", text)
            held.setdefault(got[2], []).append((float(got[3]), float(released[1])))
    assert sum(map(len, held.values())) == n_jobs and set(held) == ids, held
    for spans in held.values():
        spans.sort()
        assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), spans


# --- the small study, run once; each scenario below reads it or plans against it ---------------
# (one xdist group: `make test` runs with --dist loadgroup, so the study runs once, on one worker)

SMALL = pytest.mark.xdist_group("small-study")
RUN = "results/small/tiny-sd/db-lora/runs/brown_dog/ft0"  # (model, fine-tune, concept, seed)
SAMPLES = "db-lora/samples/brown_dog/ft0"  # below results/<study>/<model>/


@pytest.fixture
def study(small_study):
    """The small study with its own config back in place after a scenario that edits it."""
    workdir, config, _ = small_study
    yield workdir, config
    _write_config(workdir, config)


@SMALL
def test_small_study_writes_runs_samples_tables_and_one_log_per_job(study):
    workdir, _ = study
    _check_gpu_slots(results_of(workdir) / "logs", n_jobs=25, ids={"0", "1", "2"})  # 11 per model, 3 shared embeddings
    model, run = results_of(workdir) / "tiny-sd", workdir / RUN
    assert (run / "full/pytorch_lora_weights.safetensors").is_file()
    assert (run / "weak/pytorch_lora_weights.safetensors").is_file()
    assert len(pl.read_parquet(run / "log.parquet")) == 6
    assert json.loads((run / "config.json").read_text())["method"] == "db-lora"
    (dogs,) = model.glob("class_images/dog-*")  # the noun's slug and hash (wig.workflow.study.class_slug)
    assert len(list(dogs.glob("*.png"))) == 2
    assert (model / "db-lora/grids/brown_dog.png").is_file()
    jobs = sorted(p.relative_to(model / SAMPLES).as_posix() for p in (model / SAMPLES).glob("*/*/seeds*"))
    assert jobs == ["cfg/w1.0_l7.5/seeds0_1", "pg/w0.0_l7.5/seeds0_1", "pg/w1.0_l7.5/seeds0_1"]
    manifest = pl.read_parquet(model / SAMPLES / "cfg/w1.0_l7.5/seeds0_1/manifest.parquet")
    # the identifier reaches generation: the sheet's first live prompt, filled with "sks dog"
    assert manifest["prompt"].to_list() == ["a sks dog in the jungle"] * 2 and manifest["seed"].to_list() == [0, 1]
    # one log per job; per model: model, class images, training, 3 generations, grid, 3 × 2 sample
    # embeddings, 3 scores, aggregate; shared: prepare, 2 encoders, 2 reference + 1 text
    # embeddings, plots, the fine-tune table
    assert (
        len(list((results_of(workdir) / "logs").rglob("*.log")))
        == 2 * (1 + 1 + 1 + 3 + 1 + 6 + 3 + 1) + 1 + 2 + 3 + 1 + 1
    )
    # every image through each encoder once per protocol: 2 images × 2 protocols per job
    for log in (results_of(workdir) / "logs/tiny-sd/db-lora/embed_samples").rglob("*.log"):
        assert "4 rows, 4 images through the encoder" in log.read_text()
    for name in ("omega_ablation", "lambda_ablation", "pareto", "method_fronts"):
        assert (results_of(workdir) / f"plots/{name}.svg").is_file()


@SMALL
def test_a_second_study_in_the_same_project_keeps_the_first_ones_figures_and_tables(study):
    """Two studies run one after the other in one checkout: each writes under results/<study>/, so
    the second has figures, tables and a fine-tune table of its own and the first's are the same
    bytes (they used to share results/plots/ and results/tables/finetunes.*)."""
    workdir, config = study
    first = results_of(workdir)
    kept = sorted({*first.glob("plots/*"), *first.glob("tables/*"), *first.glob("*/*/tables/*")})
    assert len([p for p in kept if p.parent.name == "plots"]) == 8 and (first / "tables/finetunes.parquet") in kept
    before = {p: p.read_bytes() for p in kept}
    # kept cheap: one model, one seed, no class images, three training steps
    second = _edit(config, study="small-b", seeds=[0], personalization__prior_weight=0.0, personalization__steps=3)
    second["models"] = {"tiny-sd": config["models"]["tiny-sd"]}
    second["guidance"] = [{"method": "cfg", "scale": 7.5}, {"method": "pg", "scale": 7.5, "omega": 0.0}]
    (workdir / "second.yaml").write_text(yaml.safe_dump(second))
    proc = _snakemake(workdir, "--configfile", "second.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    other = workdir / "results/small-b"
    assert {p.name for p in other.glob("plots/*")} == {p.name for p in kept if p.parent.name == "plots"}
    assert pl.read_parquet(other / "tables/finetunes.parquet")["model"].unique().to_list() == ["tiny-sd"]
    assert set(pl.read_parquet(other / "tiny-sd/db-lora/tables/metrics.parquet")["method"]) == {"cfg", "pg"}
    assert {p: p.read_bytes() for p in kept} == before
    assert _planned(workdir) == {}  # the first study: still complete


@SMALL
def test_small_study_pg_at_omega_one_is_cfg_bit_for_bit_in_both_families(study):
    workdir, _ = study
    for m in ("tiny-sd", "tiny-sana"):
        samples = results_of(workdir) / m / SAMPLES
        cfg = pl.read_parquet(samples / "cfg/w1.0_l7.5/seeds0_1/manifest.parquet")["sha256"]
        assert pl.read_parquet(samples / "pg/w1.0_l7.5/seeds0_1/manifest.parquet")["sha256"].equals(cfg)
        assert not pl.read_parquet(samples / "pg/w0.0_l7.5/seeds0_1/manifest.parquet")["sha256"].equals(cfg)
        table = pl.read_parquet(results_of(workdir) / m / "db-lora/tables/metrics.parquet")
        assert table["method"].unique().sort().to_list() == ["cfg", "pg"]


@SMALL
def test_small_study_dino_equals_the_mean_cosine_recomputed_from_the_embeddings(study):
    workdir, _ = study
    tune = results_of(workdir) / "tiny-sd/db-lora"
    table = pl.read_parquet(tune / "tables/metrics.parquet")
    row = table.filter((pl.col("method") == "cfg") & (pl.col("protocol") == "dreammatcher")).row(0, named=True)

    def unit(frame):
        m = np.stack(frame.filter(pl.col("protocol") == "dreammatcher")["embedding"].to_numpy()).astype(np.float64)
        return m / np.linalg.norm(m, axis=1, keepdims=True)

    refs = unit(pl.read_parquet(results_of(workdir) / "embeddings/dino/references/brown_dog.parquet"))
    gens = unit(pl.read_parquet(tune / "embeddings/dino/brown_dog/ft0/cfg/w1.0_l7.5/seeds0_1.parquet"))
    assert abs(row["dino"] - (gens @ refs.T).mean()) < 1e-6 and row["n_images"] == 2


@SMALL
def test_small_study_is_complete_and_key_order_is_no_change(study, tmp_path):
    workdir, config = study
    again = _snakemake(workdir)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=True))
    assert _planned(workdir) == {}
    # --forcerun deletes a rule's outputs before its jobs run: killed in between, the run is gone
    # and -n sees nothing to do; --summary says missing, the same --forcerun remakes it (docs/cluster.md)
    run, aside = workdir / RUN, tmp_path / "run-aside"
    os.rename(run, aside)
    try:
        assert _planned(workdir) == {}
        summary = _snakemake(workdir, "--summary").stdout
        assert re.search(rf"^{re.escape(RUN)}\s.*\bmissing\b", summary, re.M), summary[-2000:]
        assert _planned(workdir, "--forcerun", "train")["train"] == 2
    finally:
        os.rename(aside, run)
    assert _planned(workdir) == {}


@SMALL
def test_small_study_sample_is_what_the_cli_makes_with_the_trained_lora(study, tmp_path):
    from wig.cli import main

    workdir, _ = study
    out = tmp_path / "cli.png"
    args = ["--model", str(results_of(workdir) / "tiny-sd/model"), "--lora", str(workdir / RUN / "full")]
    args += ["--method", "pg", "--omega", "0", "--prompt", "a sks dog in the jungle", "--seed", "1"]
    assert (
        main(["generate", *args, "--steps", "2", "--height", "32", "--width", "32", "--out", str(out), "--quiet"]) == 0
    )
    ref = Image.open(results_of(workdir) / "tiny-sd" / SAMPLES / "pg/w0.0_l7.5/seeds0_1/s1_p00.png")
    assert np.abs(np.asarray(Image.open(out), dtype=np.int16) - np.asarray(ref, dtype=np.int16)).max() <= 1


@SMALL
def test_small_study_config_changes_rerun_exactly_the_jobs_they_touch(study):
    workdir, config = study
    # per model ×2 where both models are hit
    downstream = {"embed_samples": 12, "score": 6, "aggregate": 2, "plots": 1, "finetune_table": 1, "all": 1}
    _write_config(workdir, _edit(config, personalization__steps=8))
    assert _planned(workdir) == {"train": 2, "generate": 6, "grid": 2, **downstream}
    _write_config(workdir, _edit(config, class_images__count=3))
    assert _planned(workdir) == {"class_images": 2, "train": 2, "generate": 6, "grid": 2, **downstream}
    _write_config(workdir, _edit(config, evaluation__clip_t_text="raw"))
    assert _planned(workdir) == {
        "embed_texts": 1,
        "score": 6,
        "aggregate": 2,
        "plots": 1,
        "finetune_table": 1,
        "all": 1,
    }
    _write_config(workdir, _edit(config, encoders__dino={"tiny": True, "seed": 1}))
    assert _planned(workdir) == {
        "build_tiny_encoder": 1,
        "embed_references": 1,
        "embed_samples": 6,
        "score": 6,
        "aggregate": 2,
        "plots": 1,
        "finetune_table": 1,
        "all": 1,
    }
    _write_config(workdir, _edit(config, **{"models__tiny-sana": {"tiny": "sana", "seed": 1}}))  # one model
    assert _planned(workdir) == {
        "build_tiny_model": 1,
        "class_images": 1,
        "train": 1,
        "generate": 3,
        "grid": 1,
        "embed_samples": 6,
        "score": 3,
        "aggregate": 1,
        "plots": 1,
        "finetune_table": 1,
        "all": 1,
    }
    one_job = {
        "generate": 2,
        "embed_samples": 4,
        "score": 2,
        "grid": 2,
        "aggregate": 2,
        "plots": 1,
        "finetune_table": 1,
        "all": 1,
    }
    guidance = config["guidance"][:1] + [{"method": "pg", "scale": 7.5, "omega": [0.0, 0.5, 1.0]}]
    _write_config(workdir, _edit(config, guidance=guidance))  # a new ω: one job per model
    assert _planned(workdir) == one_job
    _write_config(workdir, _edit(config, seeds=[0, 1, 2]))  # a new seed: a new chunk per point
    assert _planned(workdir) == {**one_job, "generate": 6, "embed_samples": 12, "score": 6}
    # a second fine-tune beside the first: its own runs, samples, tables and grids; nothing of the
    # first reruns but the figures that draw both
    second = {"method": "db-lora", "name": "db-lora-r8", "steps": 6, "weak_step": 2, "rank": 8, "resolution": 32}
    _write_config(workdir, _edit(config, personalization=[config["personalization"], second]))
    assert _planned(workdir) == {
        "train": 2,
        "generate": 6,
        "grid": 2,
        "embed_samples": 12,
        "score": 6,
        "aggregate": 2,
        "plots": 1,
        "finetune_table": 1,
        "all": 1,
    }


@SMALL
def test_small_study_code_changes_rerun_exactly_the_jobs_whose_scripts_reach_them(study, tmp_path):
    # a real change of library code (seen through the code hashes in params) plans exactly the jobs
    # whose scripts reach the module — what --forcerun of those rules plans — and nothing else
    workdir, _ = study
    scripted = _scripted_rules(".test/config/tiny.yaml")
    plans = {}
    # (the guidance methods are a package: editing one method's module, PG's, is a guidance change)
    modules = {
        "concepts": "concepts.py",
        "embeddings": "evaluation/embeddings.py",
        "guidance": "guidance/methods/pg.py",
        "cli": "cli/commands/generate.py",
    }
    for module, file in modules.items():
        src = tmp_path / "src" / module
        shutil.copytree(ROOT / "src/wig", src / "wig")
        edited = src / "wig" / file
        edited.write_text(edited.read_text() + "\n# an edit\n")
        plans[module] = _planned(workdir, env={"PYTHONPATH": str(src)})
        reaching = sorted(
            name
            for name, rule in scripted.items()
            if (ROOT / "src/wig" / file).resolve() in _walk(Path(rule["script"]))
        )
        assert plans[module] == (_planned(workdir, "--forcerun", *reaching) if reaching else {}), module
    assert {"prepare", "class_images", "train", "generate", "embed_references", "embed_samples"} <= set(
        plans["concepts"]
    ) and "build_tiny_model" not in plans["concepts"]
    # the tiny encoders' builder runs wig.evaluation.encoders, which writes the embedding schema: never generation
    rescored = {"embed_samples": 12, "score": 6, "aggregate": 2, "plots": 1, "finetune_table": 1, "all": 1}
    assert plans["embeddings"] == {"build_tiny_encoder": 2, "embed_references": 2, "embed_texts": 1, **rescored}
    assert plans["guidance"] == {"generate": 6, "grid": 2, **rescored}  # never training or class images
    assert plans["cli"] == {}  # no script reaches the command line


@SMALL
def test_small_study_report_holds_grids_figures_and_tables(study):
    workdir, _ = study
    report = _snakemake(workdir, "--report", "report.html")
    assert report.returncode == 0, report.stderr[-2000:]
    html = (workdir / "report.html").read_text()
    assert all(k in html for k in ("Image grids", "Figures", "metrics.csv", "Pareto front"))
    # every grid, figure and table the study wrote is in the report, byte for byte (embedded base64)
    results = results_of(workdir)
    made = [
        *results.glob("*/*/grids/*.png"),
        *results.glob("plots/*.png"),
        *results.glob("*/*/tables/metrics.csv"),
        *results.glob("*/*/tables/paired_vs_cfg.csv"),
        results / "tables/finetunes.csv",
    ]
    assert len(list(results.glob("*/*/grids/*.png"))) == 2
    plots = {"lambda_ablation", "omega_ablation", "pareto", "method_fronts"}
    assert {f.stem for f in results.glob("plots/*.png")} == plots
    missing = [str(f.relative_to(workdir)) for f in made if base64.b64encode(f.read_bytes()).decode() not in html]
    assert missing == []
    # the description names what this config ran, not a fixed list (no AG, no CFG++ here)
    assert "Guidance methods: cfg, pg." in html and "Metrics: DINO, CLIP-I, CLIP-T." in html
    assert "tiny-sana (sana, a tiny random-init twin)" in html and "db-lora (db-lora)" in html
    assert "PG) against CFG, AutoGuidance and CFG++" not in html  # the fixed list it used to print
    # the Markdown tables read like the paper: a CFG row shows no ω, values with their CI in brackets
    lines = (results_of(workdir) / "tiny-sd/db-lora/tables/metrics.md").read_text().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]
    (cfg,) = [r for r in rows if r["method"] == "cfg"]
    assert cfg["omega"] == "" and re.fullmatch(r"-?\d\.\d{3} \[-?\d\.\d{3}, -?\d\.\d{3}\]", cfg["dino (standard)"])
    assert [r["omega"] for r in rows if r["method"] == "pg"] == ["0", "1"] and "protocol" not in header


def _synthetic_smoke_config():
    """config/presets/synthetic.yaml cut to minutes: .test/config/synthetic-smoke.yaml."""
    return yaml.safe_load((ROOT / ".test/config/synthetic-smoke.yaml").read_text())


EXPECTED = ROOT / ".test/expected/synthetic-smoke.json"


def _smoke_numbers(results) -> dict[str, dict[str, float]]:
    """The smoke run's numbers a newcomer compares with: ``untrained`` (the shipped base alone:
    base accuracy, the base without a LoRA in rule learning) and ``trained`` (everything downstream
    of a LoRA: learning, the oracle metrics of every grid point)."""
    untrained, trained = {}, {}
    accuracy = pl.read_parquet(results / "synthetic/tables/base_accuracy.parquet")
    for row in accuracy.iter_rows(named=True):
        for attribute in ("background", "colour", "shape"):
            untrained[f"base_accuracy λ{row['scale']:g} {attribute}"] = row[attribute]
    for model in ("synthetic", "synthetic-noprior"):
        tables = results / model / "db-lora/tables"
        for row in pl.read_parquet(tables / "learning.parquet").iter_rows(named=True):
            (untrained if row["arm"].startswith("base") else trained)[f"{model} learning {row['arm']}"] = row["subject"]
        for row in pl.read_parquet(tables / "metrics.parquet").iter_rows(named=True):
            point = f"{row['method']} ω{row['omega']:g} λ{row['scale']:g}"
            for metric in ("oracle_subject", "oracle_text"):
                trained[f"{model} {point} {metric}"] = row[metric]
    return {"untrained": untrained, "trained": trained}


def _check_smoke_numbers(results):
    """The numbers equal the recorded ones (.test/expected/synthetic-smoke.json; README
    "Reproducibility"): what the shipped base computes alone exactly, what passes through a LoRA's
    training within the recorded tolerance. ``WIG_RECORD_SMOKE=1`` rewrites the file from this run
    (for a deliberate change; the diff is then reviewed like code)."""
    got = _smoke_numbers(results)
    if os.environ.get("WIG_RECORD_SMOKE") == "1":
        record = {**got, "tolerance": {"untrained": 0.0, "trained": 0.02}}
        EXPECTED.parent.mkdir(parents=True, exist_ok=True)
        EXPECTED.write_text(json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    expected = json.loads(EXPECTED.read_text())
    for part in ("untrained", "trained"):
        assert set(got[part]) == set(expected[part]), part
        tolerance = expected["tolerance"][part]
        off = {k: (v, expected[part][k]) for k, v in got[part].items() if abs(v - expected[part][k]) > tolerance}
        assert not off, f"{part} numbers beyond ±{tolerance}: {off}"


def test_synthetic_preset_smoke_runs_end_to_end_in_a_deployed_project(tmp_path):
    """The smoke study in a project of its own that uses this checkout's workflow as a Snakemake
    module (docs/workflow.md "Deploy"; no rules, scripts or resources/ copied), its results under a
    root of its own: the shipped base and concept sheet are found in the workflow."""
    config = _synthetic_smoke_config() | {"results": "out/studies"}
    workdir = deploy_project(tmp_path / "project", config)
    assert not (workdir / "resources").exists() and not (workdir / "workflow/rules").exists()
    proc = _snakemake(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = results_of(workdir)
    assert results == workdir / "out/studies/synthetic-smoke" and not (workdir / "results").exists()
    assert sorted(p.name for p in workdir.iterdir()) == [".snakemake", "config", "data", "out", "profiles", "workflow"]
    # the shipped base, resolved once with its digest checked and shared: no pretraining, no copy
    assert (
        json.loads((results / "synthetic/weights.json").read_text())["sha256"]
        == config["models"]["synthetic"]["sha256"]
    )
    assert not (results / "synthetic/model").exists() and not (results / "synthetic-noprior/class_images").exists()
    # the shipped base on a small sample at the preset's λ: what the study's conclusions rest on
    accuracy = pl.read_parquet(results / "synthetic/tables/base_accuracy.parquet")
    assert accuracy["scale"].to_list() == [3.0, 4.5, 6.0] and (accuracy["n_images"] == 16).all()
    for attribute in ("background", "colour", "shape"):
        assert (accuracy[attribute] >= 0.9).all(), accuracy
    runs = results / "synthetic/db-lora/runs/yellow_magenta_triangle"
    assert (runs / "ft0/full/pytorch_lora_weights.safetensors").read_bytes() != (
        runs / "ft1/full/pytorch_lora_weights.safetensors"
    ).read_bytes()
    assert (results / "encoders/scene/model.safetensors").is_file()
    for model in ("synthetic", "synthetic-noprior"):
        tables = results / model / "db-lora/tables"
        table = pl.read_parquet(tables / "metrics.parquet")
        assert table["protocol"].unique().to_list() == ["dreammatcher"] and "dino" not in table.columns
        assert (table["n_finetune_seeds"] == 2).all() and (table["n_images"] == 2 * 2).all()  # ft seeds × prompts
        assert table["oracle_text"].is_between(0.0, 1.0).all() and table["oracle_subject"].is_between(0.0, 1.0).all()
        assert table["scene"].is_between(-1.0, 1.0).all()
        paired = pl.read_parquet(tables / "paired_vs_cfg.parquet")
        assert {"d_oracle_text", "d_oracle_subject", "d_scene"} <= set(paired.columns)
        matched = pl.read_parquet(tables / "matched_text.parquet")
        assert set(matched["method"]) == {"pg", "cfgpp"} and set(matched["cfg_scale"]) == {3.0, 4.5, 6.0}
        agreement = pl.read_parquet(tables / "metric_agreement.parquet")
        assert agreement["metric"].to_list() == ["scene"] and agreement["n_points"].to_list() == [len(table)]
        learning = pl.read_parquet(tables / "learning.parquet")
        assert learning["arm"].to_list() == ["fine-tune, unguided", "fine-tune, CFG", "base, CFG"]
        assert learning["n_images"].to_list() == [2 * 3, 2 * 3, 3]  # LoRA seeds × training captions; the base once
    _check_smoke_numbers(results)
    # every torch job ran with the kernels capped (runtime.cpu_kernels: avx2, docs/studies.md "Reproducibility")
    train_logs = list((results_of(workdir) / "logs/synthetic/db-lora/train").rglob("*.log"))
    assert train_logs and all("cpu kernels AVX2" in log.read_text() for log in train_logs)
    _check_user_study(workdir, config)
    # same seeds → the same tables: sampled, scored and bootstrapped again, they are the same bytes
    # (the targets keep the rerun to this model's jobs: the other model's tables are not compared)
    names = ("metrics.parquet", "paired_vs_cfg.parquet", "metric_agreement.parquet", "learning.parquet")
    before = {f: (results / "synthetic/db-lora/tables" / f).read_bytes() for f in names}
    targets = [(results / "synthetic/db-lora/tables" / f).relative_to(workdir).as_posix() for f in names]
    proc = _snakemake(workdir, "--forcerun", "generate", "learning", "--", *targets)
    assert proc.returncode == 0 and "rule generate:" in proc.stdout + proc.stderr, proc.stderr[-2000:]
    assert all((results / "synthetic/db-lora/tables" / f).read_bytes() == b for f, b in before.items())


def _check_user_study(workdir, config):
    """The smoke run's user study: each set's images are the study's own samples of each method
    (same noise: the same seed and prompt), its references the concept's; hand-made votes in the
    database give rule user_study_table the shares counted by hand, and the report shows them."""
    from wig.guidance import make
    from wig.user_study.design import UNDECIDED, UserStudy
    from wig.user_study.server import default_db
    from wig.user_study.votes import VoteStore

    results = results_of(workdir)
    study = UserStudy.load(results / "user_study/sets")
    assert len(study.sets) == 2 * 2 + 1 and study.data["entries"] == {
        "synthetic/db-lora": ["CFG", "PG"],
        "synthetic-noprior/db-lora": ["CFG", "CFG++", "PG"],
    }
    specs = {f"{m['model']}/db-lora": m["methods"] for m in config["user_study"]["models"]}
    manifests = {
        p: pl.read_parquet(p)
        for p in results.glob("*/db-lora/samples/yellow_magenta_triangle/ft0/*/*/manifest.parquet")
    }
    pixels = lambda path: np.asarray(Image.open(path).convert("RGB"))  # noqa: E731
    for s in study.sets.values():
        model = s["entry"].split("/")[0]
        for image_id, label in s["images"].items():
            key = make(**specs[s["entry"]][label]).key
            (path,) = [
                p.parent / row["path"]
                for p, m in manifests.items()
                if p.relative_to(results).parts[0] == model
                for row in m.iter_rows(named=True)
                if (row["point"], row["seed"], row["prompt_index"])
                == (key, s["source"]["seed"], s["source"]["prompt_index"])
            ]
            assert np.array_equal(pixels(study.image_files[image_id]), pixels(path))
        refs = sorted((results / "concepts/yellow_magenta_triangle").glob("*.png"))[:3]
        assert [pixels(study.image_files[i]).tobytes() for i in s["references"]] == [pixels(p).tobytes() for p in refs]

    # three raters: 1 and 2 pick PG for subject fidelity, 3 CFG; all undecided on text; repeats alike
    store = VoteStore(default_db(results / "user_study/sets"), study.sha256)
    for rater, _ in store.add_raters(3):
        for set_id, images in study.plan(rater):
            label = "CFG" if rater == 3 else "PG"
            chosen = next(i for i in images if study.sets[set_id]["images"][i] == label)
            store.record(rater, set_id, "subject", chosen)
            store.record(rater, set_id, "text", UNDECIDED)
    votes = (results / "user_study/sets.votes.sqlite").relative_to(workdir).as_posix()
    with_votes = _edit(config, user_study__votes=votes)
    (workdir / "votes.yaml").write_text(yaml.safe_dump(with_votes))
    proc = _snakemake(workdir, "--configfile", "votes.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = re.findall(r"^(?:local)?rule (\w+):", proc.stdout + proc.stderr, flags=re.M)
    assert set(ran) == {"user_study_table", "all"}, ran  # naming the votes redraws nothing
    table = pl.read_parquet(results / "user_study/tables/table3.parquet")
    share = {(r["entry"], r["question"], r["option"]): r["share"] for r in table.iter_rows(named=True)}
    for entry in specs:
        assert share[(entry, "subject", "PG")] == pytest.approx(2 / 3)
        assert share[(entry, "subject", "CFG")] == pytest.approx(1 / 3)
        assert share[(entry, "text", UNDECIDED)] == 1.0
    assert share[("synthetic-noprior/db-lora", "subject", "CFG++")] == 0.0
    assert "| subject fidelity | 33.3 [" in (results / "user_study/tables/table3.md").read_text()
    proc = _snakemake(workdir, "--configfile", "votes.yaml", "--report", "report.html")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "table3.png" in (workdir / "report.html").read_text(errors="replace")


@pytest.mark.xdist_group("table2-study")
def test_table2_study_trains_every_method_and_guides_with_sag_through_the_dag(tmp_path):
    """.test/config/table2.yaml: db-lora, db-lora-ti and classdiffusion on the tiny SD twin, each
    with cfg, pg ω = 0, sag and dreamblend; every stage runs and the tables hold every method."""
    config = yaml.safe_load((ROOT / ".test/config/table2.yaml").read_text())
    workdir = _workdir(tmp_path, config)
    proc = _snakemake(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = results_of(workdir) / "tiny-sd"
    run_files = {
        "db-lora": ["pytorch_lora_weights.safetensors"],
        "db-lora-ti": ["pytorch_lora_weights.safetensors", "learned_embeds.safetensors"],
        "classdiffusion": ["pytorch_custom_diffusion_weights.safetensors", "learned_embeds.safetensors"],
    }
    subject = {"db-lora": "sks dog", "db-lora-ti": "<s0><s1> dog", "classdiffusion": "<new1> dog"}
    for finetune, files in run_files.items():
        for checkpoint in ("full", "weak"):
            for name in files:
                assert (model / finetune / "runs/brown_dog/ft0" / checkpoint / name).is_file(), (finetune, name)
        scores = pl.read_parquet(model / finetune / "tables/scores.parquet")
        assert set(scores["method"]) == {"cfg", "pg", "sag", "dreamblend"}, finetune
        # each method names the subject its own way in the prompts it is sampled with
        manifests = sorted((model / finetune / "samples/brown_dog/ft0").glob("*/seeds*/manifest.parquet"))
        assert len(manifests) == 2  # 4 points, 3 per job
        for manifest in manifests:
            assert all(subject[finetune] in p for p in pl.read_parquet(manifest)["prompt"]), finetune
        # DreamBlend's reference beside each of its images, never scored; diversity per image
        blend = pl.read_parquet(manifests[1]).filter(pl.col("method") == "dreamblend")
        assert len(blend) == 2 and all(
            (manifests[1].parent / p.replace(".png", ".reference.png")).is_file() for p in blend["path"]
        )
        assert not any(".reference." in p for p in scores["path"])
        assert scores["dino_diversity"].null_count() == 0 and scores["dino_diversity"].is_between(0.0, 2.0).all()
        paired = pl.read_parquet(model / finetune / "tables/paired_vs_cfg.parquet")
        assert "sag" in set(paired["method"]), finetune
        # PickScore, a plug-in text metric: scored per image, in the tables, from texts and images only
        assert scores["pickscore"].null_count() == 0 and scores["pickscore"].abs().max() > 0
        assert "pickscore" in pl.read_parquet(model / finetune / "tables/metrics.parquet").columns
        # DreamSim, a plug-in distance to the references: in [0, 2], in the tables
        assert scores["dreamsim"].null_count() == 0 and scores["dreamsim"].is_between(0.0, 2.0).all()
        assert "dreamsim" in pl.read_parquet(model / finetune / "tables/metrics.parquet").columns
    embeddings = results_of(workdir) / "embeddings/pickscore"
    assert (embeddings / "texts/brown_dog.parquet").is_file() and not (embeddings / "references").exists()
    assert (results_of(workdir) / "embeddings/dreamsim/references/brown_dog.parquet").is_file()
    # the three fine-tunes side by side, by the settings that tell them apart
    finetunes = pl.read_parquet(results_of(workdir) / "tables/finetunes.parquet")
    assert set(finetunes["finetune"]) == set(run_files) and "finetune_method" in finetunes.columns
    log = pl.read_parquet(model / "classdiffusion/runs/brown_dog/ft0/log.parquet")
    assert "spl" in log.columns and log["spl"].null_count() == 0


def test_packed_training_writes_each_run_as_alone_and_a_dropped_subject_retrains_one_job(tmp_path):
    """``subjects_per_job: 2``: both subjects' runs (two seeds each) train in packs through the DAG;
    a packed run equals the same run trained alone (its losses, its LoRA), its samples are what
    `wig generate` makes with its LoRA; an unreadable image fails its pack alone, naming the subject,
    and leaves none of the pack's runs; mending it retrains that pack, dropping the subject none."""
    from safetensors.torch import load_file

    from wig.cli import main
    from wig.concepts import read_images
    from wig.models.pipelines import load_pipeline
    from wig.personalization import Subject, make
    from wig.workflow.model import class_slug, pack_of

    config = _edit(
        _small_config(),
        jobs__subjects_per_job=2,
        personalization__seed=[0, 1],
        dataset__concepts=["brown_dog", "duck_toy"],
        seeds=[1],  # one sampling seed and CFG + PG ω 0: the pack is what is under test
        guidance=[{"method": "cfg", "scale": 7.5}, {"method": "pg", "scale": 7.5, "omega": 0.0}],
    )
    config["models"].pop("tiny-sana")
    workdir = _workdir(tmp_path / "study", config)
    # a sheet of three subjects (one not selected) makes three packs: brown_dog's and duck_toy's differ
    sheet = workdir / "resources/datasets/demo/concepts.csv"
    sheet.write_text(sheet.read_text() + "brown_dog_copy,brown_dog,dog,yes,../vico/prompts_live_objects.txt\n")
    assert pack_of("brown_dog", 3) != pack_of("duck_toy", 3)
    proc = _snakemake(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = results_of(workdir) / "tiny-sd"
    # the cost, stated as the run starts (wig plan's lines): 4 runs in the packs that hold them
    packs = len(set(re.findall(r"^(?:local)?rule (train_tiny_sd_db_lora_pack\d+):", proc.stdout + proc.stderr, re.M)))
    assert f"wig plan: fine-tuning: 4 runs in {packs} jobs, 24 steps" in proc.stderr
    jobs = re.findall(r"^(?:local)?rule (train\w*):", proc.stdout + proc.stderr, re.M)
    assert jobs and all(j.startswith("train_tiny_sd_db_lora_pack") for j in jobs)
    # CFG and PG run on the full LoRA alone: each pack's runs are generated in one job too
    generated = re.findall(r"^(?:local)?rule (generate\w*):", proc.stdout + proc.stderr, re.M)
    assert set(generated) == {j.replace("train_", "generate_") for j in jobs}
    runs = model / "db-lora/runs"
    assert sorted(str(p.relative_to(runs)) for p in runs.glob("*/ft*")) == [
        "brown_dog/ft0",
        "brown_dog/ft1",
        "duck_toy/ft0",
        "duck_toy/ft1",
    ]
    # the packed run is the run alone (tests/test_batched_training.py says why these tolerances)
    settings = json.loads((runs / "duck_toy/ft1/config.json").read_text())
    method = make(**{k: settings[k] for k in make("db-lora").settings()})
    pipe = load_pipeline(str(model / "model"), device="cpu", dtype="float32")
    images = read_images(results_of(workdir) / "concepts/duck_toy")
    classes = read_images(model / "class_images" / class_slug(settings["class_prompt"].removeprefix("a photo of ")))
    alone = tmp_path / "alone"
    method.train(pipe, Subject(images, settings["instance_prompt"], classes, settings["class_prompt"]), alone, seed=1)
    np.testing.assert_allclose(
        pl.read_parquet(runs / "duck_toy/ft1/log.parquet")["loss"].to_numpy(),
        pl.read_parquet(alone / "log.parquet")["loss"].to_numpy(),
        rtol=1e-5,
    )
    packed, single = (
        load_file(str(r / "full/pytorch_lora_weights.safetensors")) for r in (runs / "duck_toy/ft1", alone)
    )
    assert packed.keys() == single.keys() and all(
        torch.allclose(packed[k], single[k], rtol=0, atol=5e-5) for k in packed
    )
    # a DAG sample is what the CLI makes with the packed run's LoRA
    out = tmp_path / "cli.png"
    args = ["--model", str(model / "model"), "--lora", str(runs / "brown_dog/ft1/full"), "--method", "pg"]
    args += ["--omega", "0", "--prompt", "a sks dog in the jungle", "--seed", "1", "--steps", "2"]
    assert main(["generate", *args, "--height", "32", "--width", "32", "--out", str(out), "--quiet"]) == 0
    ref = Image.open(model / "db-lora/samples/brown_dog/ft1/pg/w0.0_l7.5/seeds1/s1_p00.png")
    assert np.abs(np.asarray(Image.open(out), dtype=np.int16) - np.asarray(ref, dtype=np.int16)).max() <= 1
    # an unreadable image fails its pack with one line naming the subject; nothing of that pack's
    # runs is left, and the other packs' runs are byte for byte what they were
    weights = {r: (r / "full/pytorch_lora_weights.safetensors").read_bytes() for r in runs.glob("*/ft*")}
    image = sorted((results_of(workdir) / "concepts/duck_toy").glob("*.png"))[0]
    image.write_bytes(image.read_bytes()[:64])  # a truncated PNG
    # the prepared folder newer than the runs (Snakemake dates a folder output by its timestamp file)
    for path in (image.parent, image.parent / ".snakemake_timestamp"):
        os.utime(path)
    proc = _snakemake(workdir, "--keep-going")
    assert proc.returncode != 0
    refusals = [line for line in proc.stderr.splitlines() if line.startswith("wig: rule train_")]
    assert len(refusals) == 1 and re.fullmatch(
        rf"wig: rule train_tiny_sd_db_lora_pack\d+: subject duck_toy \(seed \d\): .*{image.name}.*", refusals[0]
    ), refusals
    failed = re.search(r"Error in rule (train_\w+):.*?output: ([^\n]+)", proc.stderr, re.S)
    lost = {Path(path.strip()).relative_to("results/small/tiny-sd/db-lora/runs") for path in failed[2].split(",")}
    assert lost == {Path("duck_toy/ft0"), Path("duck_toy/ft1")}  # its pack: both its seeds, no one else
    for run, data in weights.items():
        rel = run.relative_to(runs)
        if rel in lost:
            assert not run.exists(), rel
        else:
            assert (run / "full/pytorch_lora_weights.safetensors").read_bytes() == data, rel
    # the image mended (prepared again), exactly duck_toy's pack retrains; dropped, nothing does
    shutil.rmtree(results_of(workdir) / "concepts/duck_toy")
    # asked for every run: brown_dog's are up to date, duck_toy's pack alone trains
    planned = _planned(workdir, *(str(r.relative_to(workdir)) for r in weights))
    assert {rule: n for rule, n in planned.items() if rule.startswith("train")} == {failed[1]: 1}, planned
    _write_config(workdir, _edit(config, dataset__concepts=["brown_dog"]))
    planned = _planned(workdir)
    assert not any(rule.startswith("train") for rule in planned), planned


def test_the_sdxl_smoke_study_runs_its_family_through_the_dag(tmp_path):
    """.test/config/sdxl.yaml: the tiny SDXL twin's class images, DreamBooth-LoRA, every guidance
    method that runs without DDIM, scores and tables; a DAG sample is what `wig generate` makes
    with the run's LoRA, and the LoRA loads in stock StableDiffusionXLPipeline."""
    from diffusers import StableDiffusionXLPipeline

    from wig.cli import main

    config = yaml.safe_load((ROOT / ".test/config/sdxl.yaml").read_text())
    workdir = _workdir(tmp_path / "study", config)
    proc = _snakemake(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = results_of(workdir) / "tiny-sdxl"
    run = model / "db-lora/runs/brown_dog/ft0"
    scores = pl.read_parquet(model / "db-lora/tables/scores.parquet")
    assert sorted(scores["method"].unique()) == ["ag", "cfg", "dreamblend", "pg", "sag"]
    assert scores["dino"].null_count() == 0 and len(scores) == 6 * 2  # 6 points × 2 seeds × 1 prompt
    out = tmp_path / "cli.png"
    args = [
        "--model",
        str(model / "model"),
        "--lora",
        str(run / "full"),
        "--method",
        "pg",
        "--omega",
        "0",
        "--scale",
        "5",
    ]
    args += ["--prompt", "a sks dog in the jungle", "--seed", "1", "--steps", "3", "--height", "32", "--width", "32"]
    assert main(["generate", *args, "--out", str(out), "--quiet"]) == 0
    ref = Image.open(model / "db-lora/samples/brown_dog/ft0/pg/w0.0_l5.0/seeds0_1/s1_p00.png")
    assert np.abs(np.asarray(Image.open(out), dtype=np.int16) - np.asarray(ref, dtype=np.int16)).max() <= 1
    stock = StableDiffusionXLPipeline.from_pretrained(str(model / "model"))
    stock.set_progress_bar_config(disable=True)

    def image():
        gen = torch.Generator("cpu").manual_seed(0)
        out = stock("a sks dog", num_inference_steps=2, height=32, width=32, generator=gen, output_type="np")
        return out.images

    base = image()
    stock.load_lora_weights(str(run / "full"))
    assert np.abs(image() - base).max() > 0


@pytest.mark.parametrize("name", ["sdxl", "small", "synthetic-smoke", "table2", "tiny"])
def test_the_test_configs_run_by_hand_as_their_headers_say(name):
    # the command a config's header tells a newcomer to run, as written there, plans the study that
    # config describes: one generation, embedding and scoring job per (fine-tune run, point chunk,
    # seed chunk) of its Study, in the checkout
    path = ROOT / f".test/config/{name}.yaml"
    header = "\n".join(line.lstrip("# ") for line in path.read_text().splitlines() if line.startswith("#"))
    (command,) = re.findall(rf"snakemake [^\n]*--configfile \.test/config/{re.escape(name)}\.yaml", header)
    argv = shlex.split(command)
    proc = subprocess.run(
        [*SNAKEMAKE, *argv[1:], "-n"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (proc.stdout + proc.stderr).split("Job stats:")[1].split("total")[0]
    counts = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}
    config = yaml.safe_load(path.read_text())
    read_config(config)
    cwd = os.getcwd()
    os.chdir(ROOT)  # the config names its dataset relative to the workflow
    try:
        study = Study.from_config(config)
    finally:
        os.chdir(cwd)
    jobs = len(list(study.generation_jobs()))
    assert jobs > 0 and counts["generate"] == counts["score"] == jobs, counts
    trained = [r for r in study.training_runs() if study.models[r.model].finetunes[r.finetune].method.trains]
    assert counts.get("train", 0) == len(trained)


# --- a prompt-set study: a given full fine-tune over PartiPrompts, run once; read by the given-
# fine-tune test and grown by the search test (one xdist group, one worker) ---------------------

PROMPT_SET = pytest.mark.xdist_group("prompt-set-study")
PROMPT_SET_SEARCH = {"method": "pg", "parameter": "scale", "settings": {"omega": 0.0}, "bracket": [1.0, 9.0]}


@pytest.fixture(scope="session")
def prompt_set_study(tmp_path_factory):
    """The dpo-sd15 layout on tiny twins: a `given` fine-tune (a tiny "Diffusion-DPO" UNet: the
    twin's with every tensor moved) over the shipped PartiPrompts subset — a prompt set, no
    reference images — with a cfg + pg (ω 0, 0.4; λ 4) grid and a golden-section λ search of PG
    ω 0 on the selection prompts, after one complete run: (workdir, config)."""
    import torch
    from diffusers import UNet2DConditionModel

    from wig.models.families.sd import build_tiny_sd

    config = yaml.safe_load((ROOT / ".test/config/table2.yaml").read_text())
    config["dataset"] = {"sheet": "resources/datasets/partiprompts/concepts.csv", "max_prompts": 3}
    config["personalization"] = [{"name": "dpo", "method": "given", "weights": "dpo-sd/unet"}]
    config["seeds"] = [0]
    config["guidance"] = [{"method": "cfg", "scale": 7.5}, {"method": "pg", "scale": 4.0, "omega": [0.0, 0.4]}]
    config["encoders"] = {"clip": {"tiny": True}, "pickscore": {"tiny": True}}
    config["evaluation"] |= {"metrics": ["pickscore", "clip_t"], "protocols": ["standard"], "grid_prompts": 2}
    config["search"] = [PROMPT_SET_SEARCH | {"objective": "clip_t", "tolerance": 3.0, "resolution": 0.5}]
    root = tmp_path_factory.mktemp("prompt-set-study")
    workdir = _workdir(root / "work", config)
    build_tiny_sd(root / "twin")
    unet = UNet2DConditionModel.from_pretrained(root / "twin", subfolder="unet")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for tensor in unet.state_dict().values():
            tensor += 0.05 * (tensor.std() if tensor.numel() > 1 else 1.0) * torch.randn(tensor.shape, generator=gen)
    unet.save_pretrained(workdir / "dpo-sd/unet")

    planned = _planned(workdir)
    assert "resolve_finetune" in planned and not {"train", "class_images", "prepare", "embed_references"} & set(planned)
    proc = _snakemake(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, config


@PROMPT_SET
def test_a_given_full_finetune_over_a_prompt_set_runs_through_the_dag_without_training(prompt_set_study):
    """The given fine-tune is resolved, not trained; its cfg images are CFG with that UNet as the
    pipeline's denoiser, bit for bit; the tables and figures are text fidelity alone."""
    import torch
    from diffusers import UNet2DConditionModel

    from wig.guidance import Guidance
    from wig.models.pipelines import load_pipeline
    from wig.sampling.sampler import sample

    workdir, config = prompt_set_study
    results = results_of(workdir) / "tiny-sd/dpo"
    assert not (results / "runs").exists()
    assert json.loads((results / "weights.json").read_text())["path"] == str((workdir / "dpo-sd/unet").resolve())
    scores = pl.read_parquet(results / "tables/scores.parquet")
    assert {"pickscore", "clip_t"} <= set(scores.columns) and not {"dino", "clip_i"} & set(scores.columns)
    assert set(scores["method"]) == {"cfg", "pg"} and set(scores["concept"]) == {"partiprompts"}
    pg = scores.filter(pl.col("method") == "pg").select("omega", "scale").unique().sort("omega")
    assert pg.rows() == [(0.0, 4.0), (0.4, 4.0)]  # the grid's points, not the search's probes
    assert pl.read_parquet(results / "tables/matched_text.parquet").is_empty()  # no subject fidelity to match
    assert not pl.read_parquet(results / "tables/paired_vs_cfg.parquet").is_empty()
    assert (results_of(workdir) / "plots/pareto.png").is_file() and (
        results_of(workdir) / "plots/omega_ablation.png"
    ).is_file()
    (manifest_path,) = (results / "samples/partiprompts/ft0").glob("*/seeds*/manifest.parquet")
    manifest = pl.read_parquet(manifest_path).filter(pl.col("method") == "cfg")
    assert manifest["prompt"].unique(maintain_order=True).to_list() == ["bond", "element", "life"]  # used whole
    grid = Image.open(results / "grids/partiprompts.png")
    assert grid.width == 160 + 2 * len(config["seeds"]) * config["sampling"]["width"]  # two prompts per seed
    pipe = load_pipeline(str(results_of(workdir) / "tiny-sd/model"), device="cpu", dtype="float32")
    pipe.unet = UNet2DConditionModel.from_pretrained(workdir / "dpo-sd/unet")
    row = manifest.row(0, named=True)
    s = config["sampling"]
    (ref,) = sample(
        pipe,
        [row["prompt"]],
        Guidance("cfg", 7.5),
        [torch.Generator("cpu").manual_seed(row["seed"])],
        steps=s["steps"],
        height=s["height"],
        width=s["width"],
        progress=False,
    )
    got = np.asarray(Image.open(manifest_path.parent / row["path"]))
    assert np.array_equal(got, np.asarray(ref))


@pytest.mark.xdist_group("ip2p-study")
def test_an_instruct_pix2pix_study_edits_each_concepts_first_image_through_the_dag(tmp_path):
    """The ip2p preset's layout on tiny twins: the IP2P twin is the model (θ'), a tiny SD twin the
    `given` base (θ, conv_in padded); the concept's first image, resized to the sampling size, is
    edited per instruction. ω = 1 is the stock StableDiffusionInstructPix2PixPipeline (uint8 ≤ 1),
    ω = 0 differs, and the paired table compares ω = 0 with ω = 1 (IP2P's own baseline)."""
    import torch
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from wig.concepts import read_images
    from wig.models.families.sd import build_tiny_sd

    config = yaml.safe_load((ROOT / ".test/config/table2.yaml").read_text())
    config["models"] = {"tiny-ip2p": {"tiny": "ip2p", "seed": 0}}
    config["dataset"] = {
        "sheet": "resources/datasets/ip2p/concepts.csv",
        "root": "resources/datasets/demo/images",
        "max_prompts": 2,
    }
    config["personalization"] = {"name": "sd-base", "method": "given", "kind": "base", "weights": "sd-base"}
    config["guidance"] = [{"method": "ip2p-cfg", "scale": 7.5, "image_scale": 1.5, "omega": [1.0, 0.0]}]
    config["seeds"] = [0]
    config["encoders"] = {"clip": {"tiny": True}}
    config["evaluation"] |= {"metrics": ["clip_i", "clip_t"]}
    (tmp_path / "work").mkdir()
    workdir = _workdir(tmp_path / "work", config)
    build_tiny_sd(workdir / "sd-base")

    planned = _planned(workdir)
    assert planned["prepare"] == 1 and planned["resolve_finetune"] == 1 and "train" not in planned
    proc = _snakemake(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = results_of(workdir) / "tiny-ip2p/sd-base"
    (manifest_path,) = (results / "samples/brown_dog/ft0").glob("*/seeds*/manifest.parquet")
    manifest = pl.read_parquet(manifest_path)
    assert manifest["prompt"].unique(maintain_order=True).to_list() == [
        "turn it into a watercolour painting",
        "make it snow",
    ]
    s = config["sampling"]
    source = read_images(results_of(workdir) / "concepts/brown_dog")[0].resize((s["width"], s["height"]))
    stock = StableDiffusionInstructPix2PixPipeline.from_pretrained(results_of(workdir) / "tiny-ip2p/model")
    stock.set_progress_bar_config(disable=True)
    stock.safety_checker = None
    row = manifest.filter((pl.col("omega") == 1.0) & (pl.col("prompt_index") == 0)).row(0, named=True)
    (ref,) = stock(
        row["prompt"],
        image=source,
        num_inference_steps=s["steps"],
        guidance_scale=7.5,
        image_guidance_scale=1.5,
        generator=torch.Generator("cpu").manual_seed(row["seed"]),
    ).images
    ours = {
        w: np.asarray(Image.open(manifest_path.parent / r["path"]), dtype=np.int16)
        for w, r in ((r["omega"], r) for r in manifest.filter(pl.col("prompt_index") == 0).iter_rows(named=True))
    }
    assert np.abs(ours[1.0] - np.asarray(ref, dtype=np.int16)).max() <= 1
    assert np.abs(ours[0.0] - ours[1.0]).max() > 0
    paired = pl.read_parquet(results / "tables/paired_vs_cfg.parquet")
    assert paired.select("method", "omega").rows() == [("ip2p-cfg", 0.0)] * len(paired)
    assert set(pl.read_parquet(results / "tables/scores.parquet")["method"]) == {"ip2p-cfg"}


@PROMPT_SET
def test_a_golden_section_search_grows_the_dag_one_cached_probe_at_a_time(prompt_set_study):
    """The λ search of PG (ω = 0) on the given fine-tune: its probes are ordinary generation jobs
    (the grid's own where the value is on the grid), it chooses on the selection prompts and reports
    the held-out ones; a tighter tolerance reruns only the new probes. (An objective outside the
    study's metrics is refused at parse time: test_study's search errors, and the config-error test
    for parse-time errors stopping the workflow.)"""
    from wig.guidance import canonical
    from wig.workflow.search import SearchSettings, replay

    workdir, config = prompt_set_study
    results = results_of(workdir) / "tiny-sd/dpo"
    trace = pl.read_parquet(results / "search/pg-scale/trace.parquet")
    settings = SearchSettings(1.0, 9.0, 3.0, 0.5, 20)
    known = dict(zip(trace["value"], trace["objective"]))
    assert (
        replay(settings, known).next is None
        and len(trace) == len(list((results / "search/pg-scale").glob("step*.json"))) - 1
    )
    probes = results / "samples/partiprompts/ft0/probe/pg-scale"
    # the first probe, λ 4, is the grid's own pg point: not generated again, its job is the grid's
    assert trace["value"][0] == 4.0
    assert sorted(p.name for p in probes.iterdir()) == sorted(canonical(v) for v in trace["value"] if v != 4.0)
    chosen = pl.read_parquet(results / "search/pg-scale/chosen.parquet")
    assert chosen.select("role", "split").rows() == [("chosen", "selection"), ("chosen", "evaluation")]
    n = config["dataset"]["max_prompts"]
    validated = yaml.safe_load(yaml.safe_dump(config))
    read_config(validated)  # the schema's defaults: `selection`
    cwd = os.getcwd()
    os.chdir(workdir)  # the config names its dataset relative to the workflow
    try:
        (selected,) = Study.from_config(validated).selection.values()
    finally:
        os.chdir(cwd)
    assert 0 < len(selected) < n  # the two splits: never the same (prompt, seed) image
    assert chosen["n_images"].to_list() == [len(selected), n - len(selected)]
    assert (results / "search/pg-scale/trace.png").is_file()

    before = {p.name: p.stat().st_mtime_ns for p in probes.iterdir()}
    _write_config(workdir, _edit(config, search=[config["search"][0] | {"tolerance": 1.0}]))
    proc = _snakemake(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    longer = pl.read_parquet(results / "search/pg-scale/trace.parquet")
    assert longer["value"].to_list()[: len(trace)] == trace["value"].to_list() and len(longer) > len(trace)
    # the DAG grew probe by probe (its job stats list only what was known at the start): count the jobs run
    generated = len(re.findall(r"^(?:local)?rule generate:$", proc.stdout + proc.stderr, re.M))
    assert generated == len(set(longer["value"]) - set(trace["value"]))  # the new probes only
    assert all(probes.joinpath(name).stat().st_mtime_ns == t for name, t in before.items())


def test_a_non_utf8_prompt_file_stops_planning_naming_the_file_and_line(tmp_path):
    config = _edit(_small_config(), dataset__sheet="sheet.csv")
    workdir = _workdir(tmp_path, config)
    (workdir / "sheet.csv").write_text(
        "concept,folder,class_noun,live,prompts\nbrown_dog,brown_dog,dog,yes,latin1.txt\n"
    )
    (workdir / "latin1.txt").write_bytes("a {} on the beach\na {} in a caf\u00e9\n".encode("latin-1"))
    proc = _snakemake(workdir, "-n")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out
    assert "latin1.txt:2: prompt list is not UTF-8 (byte 0xe9 at offset" in out, out[-2000:]
    assert "UnicodeDecodeError" not in out


def test_a_broken_given_finetune_stops_the_run_before_any_generation_job(tmp_path):
    """A given full fine-tune with a tensor stored as int32: planning cannot
    see tensors, so rule resolve_finetune checks them against the base (headers first) and the run
    stops there with one line naming the tensor; no generation job starts, no weights record."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file, save_file

    from wig.models.families.sd import build_tiny_sd

    config = _small_config()
    config["models"] = {"tiny-sd": config["models"]["tiny-sd"]}
    config["personalization"] = [{"name": "dpo", "method": "given", "weights": "dpo-sd/unet"}]
    (tmp_path / "work").mkdir()
    workdir = _workdir(tmp_path / "work", config)
    build_tiny_sd(tmp_path / "twin")
    UNet2DConditionModel.from_pretrained(tmp_path / "twin", subfolder="unet").save_pretrained(workdir / "dpo-sd/unet")
    weights = workdir / "dpo-sd/unet/diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    name = sorted(k for k in state if k.endswith("attn2.to_v.weight"))[0]
    state[name] = state[name].round().to(torch.int32)
    save_file(state, weights)
    proc = _snakemake(workdir)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    refusals = [line for line in out.splitlines() if line.startswith("wig: rule resolve_finetune:")]
    assert len(refusals) == 1 and f"tensor {name} is stored as int32" in refusals[0], out[-3000:]
    assert "Traceback" not in out
    assert not re.search(r"^(?:local)?rule generate:$", out, re.M)
    assert not (results_of(workdir) / "tiny-sd/dpo/weights.json").exists()
    assert not (results_of(workdir) / "tiny-sd/dpo/samples").exists()
    log = (results_of(workdir) / "logs/tiny-sd/dpo/resolve_finetune.log").read_text()
    assert f"refused: {workdir / 'dpo-sd/unet/diffusion_pytorch_model.safetensors'}: tensor {name}" in log
