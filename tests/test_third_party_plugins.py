"""A stranger's package plugs into wig without touching it: a guidance method (CFG on an interval of
noise levels), a metric (DINO's nearest reference), a personalization method (DreamBooth-LoRA at
rank 8 under its own name) and a model family alias (SD checkpoints that ship a DPM-Solver,
sampled with it) in their own package — docs/plugins.md's example, verbatim — with its own
``pyproject.toml`` and a ``wig.plugins`` entry point, built and installed by pip into a folder. With that folder on the
path, a study's config names them and Snakemake runs them (parsing and every job process: they
load the entry point themselves); the contract suites collect them. Without it, the same config
is refused in one line naming the plug-in.

Everything here runs in subprocesses: the plug-ins never enter this test process's registries.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from conftest import ROOT, copy_workflow, results_of, run_snakemake

pytestmark = pytest.mark.workflow

PACKAGE = "wig_toy_plugins"

DOCS = ROOT / "docs/plugins.md"


def example_files() -> dict[str, str]:
    """The example package of docs/plugins.md: each fenced block after a ``<!-- file: PATH -->``
    line, verbatim (so the page's example is what this file installs and runs)."""
    found = re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)\n```", DOCS.read_text(), flags=re.S)
    return {path: text + "\n" for path, text in found}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The package's source tree, built and installed by pip (offline, no build isolation) into a
    folder of its own: what ``pip install`` leaves, dist-info and entry point included."""
    from wig.models.families import default_config

    source = tmp_path_factory.mktemp("source")
    files = example_files()
    assert {"pyproject.toml", f"{PACKAGE}/__init__.py", f"{PACKAGE}/family.py"} <= set(files)
    for path, text in files.items():
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        (source / path).write_text(text)
    (source / PACKAGE / "tiny_toy_sd_dpm.json").write_text(json.dumps(default_config("sd")))  # SD's layout
    target = tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index", "--quiet"]
    proc = subprocess.run([*pip, "--target", str(target), str(source)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (entry,) = target.glob("wig_toy_plugins-*.dist-info/entry_points.txt")
    assert "[wig.plugins]" in entry.read_text()
    return target


def _env(site: Path | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return env | ({"PYTHONPATH": str(site)} if site is not None else {})


def _config() -> dict:
    return {
        "models": {"toy": {"tiny": "toy-sd-dpm", "seed": 0}},
        "dataset": {
            "sheet": "resources/datasets/demo/concepts.csv",
            "root": "resources/datasets/demo/images",
            "identifier": "sks",
            "max_prompts": 1,
            "concepts": ["brown_dog"],
        },
        "personalization": {
            "method": "db-lora",
            "steps": 4,
            "weak_step": 2,
            "rank": 2,
            "lr": 1e-3,
            "resolution": 32,
            "prior_weight": 0.0,
        },
        "seeds": [0],
        "sampling": {"steps": 3, "height": 32, "width": 32, "seeds_per_job": 1},
        "guidance": [
            {"method": "cfg", "scale": 5.0},
            {"method": "toy-interval", "scale": 5.0, "low": 0.2, "high": 0.7},
        ],
        "encoders": {"dino": {"tiny": True}, "clip": {"tiny": True}},
        "evaluation": {"protocols": ["standard"], "bootstrap": 100},
        "runtime": {"threads": 1},
    }


def test_its_plugins_run_through_the_study_and_reach_the_tables(site, tmp_path):
    workdir = copy_workflow(tmp_path / "study", _config())
    target = "results/study/tables/finetunes.parquet"  # no `study:` in the config: the default name
    proc = run_snakemake(
        workdir, target, "results/study/toy/db-lora/tables/metrics.parquet", env={"PYTHONPATH": str(site)}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the family built the twin (its DPM-Solver kept: not DDIM) and sampled it
    scheduler = json.loads((results_of(workdir) / "toy/model/scheduler/scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DPMSolverMultistepScheduler"
    table = pl.read_parquet(workdir / target)
    assert set(table["family"]) == {"toy-sd-dpm"} and set(table["method"]) == {"cfg", "toy-interval"}
    assert "dino_nearest" in table.columns and table["dino_nearest"].is_finite().all()
    interval = table.filter(pl.col("method") == "toy-interval")
    assert interval["low"].to_list() == [0.2] * len(interval) and interval["high"].to_list() == [0.7] * len(interval)
    # each job process loaded the entry point itself: the method's images are on disk
    assert [p for p in (results_of(workdir) / "toy/db-lora").rglob("*.png") if "toy-interval" in p.parts]


def test_without_the_package_the_same_config_is_refused_in_one_line(site, tmp_path):
    import yaml

    # the study's config with the page's own config example over it (models, fine-tune, grid, encoders)
    (example,) = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.S)
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(_config() | yaml.safe_load(example)))
    wig = [sys.executable, "-m", "wig.cli", "plan", "--configfile", str(config), "--directory", str(ROOT)]
    missing = subprocess.run(wig, capture_output=True, text=True, env=_env(None))
    assert missing.returncode == 1
    (line,) = missing.stderr.strip().splitlines()
    assert "toy-sd-dpm" in line or "toy-interval" in line
    present = subprocess.run(wig, capture_output=True, text=True, env=_env(site))
    assert present.returncode == 0, present.stderr


def test_the_contract_suites_collect_its_plugins(site):
    """The contract suites run over every registered plug-in: with the package installed, its
    method, metric and family are collected — and pass — without a test of their own."""
    tests = str(ROOT / "tests/test_contracts.py")
    select = "toy or dino_nearest"
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", tests, "-k", select]
    proc = subprocess.run(args, capture_output=True, text=True, env=_env(site), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:]
    collected = subprocess.run([*args, "--collect-only"], capture_output=True, text=True, env=_env(site), cwd=ROOT)
    for name in ("toy-interval", "dino_nearest", "toy-db-lora-r8"):
        assert name in collected.stdout, name
    # the family's matrix: its twin loads in the stock pipeline, our CFG equals the stock call's, a
    # LoRA step trains — run for the stranger's family as for wig's
    families = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"]
    test_file = str(ROOT / "tests/test_families.py")
    ran = subprocess.run(
        [*families, test_file, "-k", "toy-sd-dpm"], capture_output=True, text=True, env=_env(site), cwd=ROOT
    )
    assert ran.returncode == 0 and " passed" in ran.stdout, ran.stdout[-3000:]
    plain = subprocess.run(
        [*families, "--collect-only", test_file], capture_output=True, text=True, env=_env(None), cwd=ROOT
    )
    assert "toy-sd-dpm" not in plain.stdout and "[sd]" in plain.stdout


def test_its_code_is_in_the_code_hash_of_every_job_that_loads_it(site, tmp_path):
    """Editing a plug-in reruns what it made: its package's code counts in each scripted rule's
    code hash (`wig.provenance`), as wig's own modules do."""
    import shutil

    script = "from wig.provenance import code_hash; print(code_hash('workflow/scripts/generate.py'))"

    def hash_with(path):
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(path), cwd=ROOT)
        assert run.returncode == 0, run.stderr
        return run.stdout.strip()

    copy = tmp_path / "site"
    shutil.copytree(site, copy)
    before = hash_with(copy)
    assert before != hash_with(None)
    interval = copy / PACKAGE / "interval.py"
    interval.write_text(interval.read_text().replace("guided = e_u", "guided = 1.0 * e_u"))
    assert hash_with(copy) != before
