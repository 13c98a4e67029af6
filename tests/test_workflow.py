"""The Snakemake workflow on a temporary copy: config checks, a small run, reruns."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _workdir(tmp_path, **overrides):
    """A copy of the workflow whose config is the demo's, shrunk and with ``overrides``."""
    for name in ("Snakefile", "workflow", "config"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    config["sampling"].update(steps=2, height=32, width=32)
    config["prompts"] = config["prompts"][:1]
    config["guidance"] = [{"method": "cfg", "scale": 7.5}, {"method": "pg", "scale": 7.5, "omega": [0.0, 1.0]}]
    config.update(overrides)
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return tmp_path


def _snakemake(workdir, *args):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([*SNAKEMAKE, "--cores", "2", *args], cwd=workdir, capture_output=True, text=True, env=env)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"guidance": [{"method": "pg", "omega": 1.5}]}, "1.5"),
        ({"guidance": [{"method": "magic"}]}, "magic"),
        ({"guidance": [{"method": "cfg", "omega": 0.5}]}, "guidance[0].omega"),
        ({"seeds": []}, "seeds"),
        ({"sampling": {"stepz": 3}}, "stepz"),
    ],
)
def test_config_errors_stop_before_any_job(tmp_path, overrides, message):
    workdir = _workdir(tmp_path, **overrides)
    proc = _snakemake(workdir, "-n")
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert not (workdir / "results").exists()


@pytest.mark.slow
def test_demo_grid_runs_reruns_nothing_and_matches_the_cli(tmp_path):
    workdir = _workdir(tmp_path)
    proc = _snakemake(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = workdir / "results/tiny-sd"
    samples = sorted((model / "samples").rglob("*.png"))
    assert len(samples) == 3 * 2  # (cfg, pg ω=0, pg ω=1) × 2 seeds × 1 prompt
    assert (model / "grid.png").is_file()
    logs = list((workdir / "logs").rglob("*.log"))
    assert len(logs) == 1 + 1 + 6 + 1  # one per job
    # ω = 1 is CFG, bit for bit; ω = 0 is not
    cfg = np.asarray(Image.open(model / "samples/cfg/w1.0_l7.5/seed0/p00.png"))
    assert np.array_equal(cfg, np.asarray(Image.open(model / "samples/pg/w1.0_l7.5/seed0/p00.png")))
    assert not np.array_equal(cfg, np.asarray(Image.open(model / "samples/pg/w0.0_l7.5/seed0/p00.png")))

    again = _snakemake(workdir)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    # the same image from the CLI with the same seed
    from wig.cli import main

    prompt = yaml.safe_load((workdir / "config/config.yaml").read_text())["prompts"][0]
    out = tmp_path / "cli.png"
    rc = main(["generate", "--model", str(model / "model"), "--lora", str(model / "lora/demo"), "--method", "pg",
               "--omega", "0", "--prompt", prompt, "--seed", "1", "--steps", "2", "--height", "32", "--width", "32",
               "--out", str(out), "--quiet"])
    assert rc == 0
    ref = np.asarray(Image.open(model / "samples/pg/w0.0_l7.5/seed1/p00.png"), dtype=np.int16)
    assert np.abs(np.asarray(Image.open(out), dtype=np.int16) - ref).max() <= 1
