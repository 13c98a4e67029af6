"""`wig plan`: what a config costs before it runs — counted from the study, timed at the rates the
last run's own logs and manifests measured."""

import re
from pathlib import Path

import polars as pl
import pytest

from wig.cli import main

from conftest import point_row

pytestmark = pytest.mark.check

ROOT = Path(__file__).resolve().parents[1]


def _plan(capsys, *args) -> list[str]:
    assert main(["plan", *args]) == 0
    return capsys.readouterr().out.splitlines()


def test_the_paper_preset_plans_its_images_steps_and_evaluations(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    lines = _plan(capsys, "--configfile", "config/presets/vico-sd15.yaml", "--results", str(tmp_path))
    # 16 concepts × 31 prompts × 8 seeds × 22 points; 16 runs × 500 steps; 11 nouns × 200 class images;
    # evaluations: 50 steps × (none 1, cfg 2 ×4, pg 2 ×14, ag 3, cfg++ 2, pg++ 2) per image set, + class images × 50 × 2
    per_image_set = 16 * 31 * 8 * 50
    evaluations = per_image_set * (1 + 2 * 4 + 2 * 14 + 3 + 2 + 2) + 2_200 * 50 * 2
    assert lines[:4] == [
        "fine-tuning: 16 runs in 16 jobs, 8,000 steps",
        "class images: 2,200",
        "images: 87,296",
        f"denoiser evaluations: {evaluations:,} (samples × steps × branches)",
    ]
    assert lines[4].startswith("no estimate: nothing measured yet")


def test_the_estimate_is_the_last_runs_own_rates(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    for i, seconds in enumerate((10.0, 30.0, 20.0)):  # 2, 6 and 4 s per step: the median is 4
        run = tmp_path / f"m/db-lora/runs/c{i}/ft0"
        run.mkdir(parents=True)
        pl.DataFrame({"step": [1, 5], "seconds": [1.0, seconds]}).write_parquet(run / "log.parquet")
    # a one-point job's manifest (…/samples/<concept>/ft0/cfg/<point>/<seeds>/): 0.2 s an image of
    # cfg (2 branches) at the config's 2 steps is 50 ms an evaluation
    manifest = tmp_path / "m/db-lora/samples/c0/ft0/cfg/w1.0_l7.5/seeds0_1/manifest.parquet"
    manifest.parent.mkdir(parents=True)
    pl.DataFrame([{**point_row("cfg", scale=7.5), "point": "cfg/w1.0_l7.5", "seconds_per_image": 0.2}]).write_parquet(
        manifest
    )
    lines = _plan(capsys, "--configfile", ".test/config/small.yaml", "--results", str(tmp_path))
    assert lines[0] == "fine-tuning: 2 runs in 2 jobs, 12 steps"
    assert lines[3] == "denoiser evaluations: 64 (samples × steps × branches)"
    assert lines[4] == "fine-tuning ≈ 48 s (4.000 s/step)"  # 12 steps × 4 s
    assert lines[5] == "sampling ≈ 3 s (50.00 ms/evaluation)"  # 64 × 50 ms


def test_packed_jobs_count_once(capsys, monkeypatch, tmp_path):
    import yaml

    config = yaml.safe_load((ROOT / ".test/config/small.yaml").read_text())
    config["personalization"] |= {"seed": [0, 1]}
    config["jobs"] = {"subjects_per_job": 2}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(ROOT)
    lines = _plan(capsys, "--configfile", str(tmp_path / "c.yaml"), "--results", str(tmp_path))
    assert lines[0] == "fine-tuning: 4 runs in 2 jobs, 24 steps"  # one pack per model (one concept, 2 seeds)
    # the last run: a pack of 3 runs (one clock: 30 s for 5 steps each, 2 s a run-step) and a run alone
    # (5 s for 5 steps, 1 s a step); the median of the jobs' rates is 1.5 s a step, not 6 (a pack's
    # clock read as one run's)
    for i, seconds in enumerate((30.0, 30.0, 30.0, 5.0)):
        run = tmp_path / f"m/db-lora/runs/c{i}/ft0"
        run.mkdir(parents=True)
        pl.DataFrame({"step": [1, 5], "seconds": [3.0, seconds]}).write_parquet(run / "log.parquet")
    lines = _plan(capsys, "--configfile", str(tmp_path / "c.yaml"), "--results", str(tmp_path))
    assert lines[4] == "fine-tuning ≈ 36 s (1.500 s/step)"  # 24 steps × 1.5 s


@pytest.mark.parametrize(
    "write, message",
    [
        (None, "c.yaml: .*No such file"),
        (lambda p: p.write_bytes(b"\xff\xfe models: ["), "c.yaml: .*(codec|decode)"),
        (lambda p: p.write_text("models: [unclosed"), "c.yaml: "),
        (lambda p: p.write_text("- a list"), "c.yaml: not a mapping of settings"),
        (
            lambda p: p.write_text((ROOT / ".test/config/small.yaml").read_text().replace("steps: 2", "stepz: 2")),
            "stepz",
        ),
    ],
    ids=["missing", "encoding", "truncated", "list", "unknown-key"],
)
def test_a_bad_config_is_one_line_naming_it(capsys, monkeypatch, tmp_path, write, message):
    monkeypatch.chdir(ROOT)
    config = tmp_path / "c.yaml"
    if write is not None:
        write(config)
    assert main(["plan", "--configfile", str(config), "--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err


def test_an_unreadable_log_or_manifest_is_named(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    log = tmp_path / "m/db-lora/runs/c/ft0/log.parquet"
    log.parent.mkdir(parents=True)
    log.write_bytes(b"PAR1 truncated")
    assert main(["plan", "--configfile", ".test/config/small.yaml", "--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{log}: unreadable" in err
    log.unlink()
    manifest = tmp_path / "m/db-lora/samples/c/ft0/cfg/w1.0_l7.5/seeds0_1/manifest.parquet"
    manifest.parent.mkdir(parents=True)
    pl.DataFrame({"point": ["x"], "path": ["a.png"]}).write_parquet(manifest)  # no method, no seconds
    assert main(["plan", "--configfile", ".test/config/small.yaml", "--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert f"{manifest}: not a generation manifest" in err


def test_plan_runs_from_any_folder_reading_paths_as_snakemake_does(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no workflow here: the schema comes from the package
    config = str(ROOT / ".test/config/small.yaml")
    assert main(["plan", "--configfile", config, "--directory", str(ROOT)]) == 0
    planned = capsys.readouterr().out
    assert "generation" in planned and Path.cwd() == tmp_path
    # its relative paths are the working directory's (Snakemake's --directory), and one line says which
    assert main(["plan", "--configfile", config]) == 1
    assert "cannot read concept sheet resources/datasets/demo/concepts.csv" in capsys.readouterr().err
