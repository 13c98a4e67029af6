"""wig where its users already are (pyproject.toml's core and extras): the wheel a standard builder
makes, installed with the core alone into a fresh venv, runs the README's library example; and the
guider's tests pass on the lowest diffusers the core's range admits as well as on the pinned one.

Both install packages into folders of their own (tier ``install``). The fresh venv sees torch, linked
from this environment with its own dependency closure, and nothing else of it (tools/fresh_venv.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from conftest import ROOT, guider_example

pytestmark = pytest.mark.install

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONSTRAINTS = ROOT / "constraints.txt"
# every distribution an extra brings (as import names), none of which the core may need
EXTRA_MODULES = (
    "snakemake",
    "polars",
    "pyarrow",
    "matplotlib",
    "open_clip",
    "dreamsim",
    "flask",
    "waitress",
    "jsonschema",
)


def _pip(python: Path | str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


def _fresh_venv():
    """tools/fresh_venv.py, loaded by path (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("fresh_venv", ROOT / "tools/fresh_venv.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory) -> Path:
    """A fresh venv holding the built wheel and its core requirements (at constraints.txt's
    versions), no extra, torch linked from here (tools/fresh_venv.py): its python."""
    root = tmp_path_factory.mktemp("core-install")
    fresh = _fresh_venv()
    return fresh.make_venv(root / "venv", fresh.build_wheel(root / "dist"))


def _run(python: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(python), *args], capture_output=True, text=True, env=env | {"HF_HUB_OFFLINE": "1"}, **kw)


def test_the_core_install_has_no_extra_and_imports_the_guider(core_venv, tmp_path):
    probe = (
        "import importlib.util, json, wig.integrations.diffusers, diffusers, transformers, peft; "
        f"print(json.dumps({{m: importlib.util.find_spec(m) is not None for m in {EXTRA_MODULES!r}}}))"
    )
    proc = _run(core_venv, "-c", probe, cwd=tmp_path)  # not from the checkout: the installed wheel
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == dict.fromkeys(EXTRA_MODULES, False)
    wig = core_venv.parent / "wig"
    version = _run(wig, "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"wig {PYPROJECT['project']['version']}"


@pytest.mark.parametrize("command", ["serve-study", "plan"])
def test_a_command_that_needs_an_extra_says_which_in_one_line(core_venv, command):
    extra = "user-study" if command == "serve-study" else "workflow"
    proc = _run(core_venv.parent / "wig", command, "--help")
    assert proc.returncode == 1 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert f"wig {command} needs the '{extra}' extra" in line and f"pip install 'wig[{extra}]'" in line, line
    core = _run(core_venv.parent / "wig", "generate", "--help")  # a core command
    assert core.returncode == 0 and "--omega" in core.stdout


def test_the_readme_library_example_in_the_core_install_draws_what_it_draws_here(
    core_venv, tiny_sdxl, sdxl_lora_path, tmp_path
):
    code = guider_example(tiny_sdxl, sdxl_lora_path.parent)
    save = "\nimport numpy as np\nnp.save(__import__('sys').argv[1], np.asarray(image))\n"
    (tmp_path / "example.py").write_text(code + save)
    there = _run(core_venv, str(tmp_path / "example.py"), str(tmp_path / "there.npy"), cwd=tmp_path)
    assert there.returncode == 0, there.stderr[-3000:]
    here = subprocess.run(
        [sys.executable, str(tmp_path / "example.py"), str(tmp_path / "here.npy")], capture_output=True, text=True
    )
    assert here.returncode == 0, here.stderr[-3000:]
    a, b = np.load(tmp_path / "there.npy"), np.load(tmp_path / "here.npy")
    assert a.shape == b.shape and a.dtype == np.uint8 and np.array_equal(a, b)


def _lowest(name: str) -> str:
    """The lower bound the core's range states for ``name`` (pyproject.toml)."""
    for line in PYPROJECT["project"]["dependencies"]:
        req = Requirement(line)
        if req.name == name:
            (bound,) = [s.version for s in req.specifier if s.operator == ">="]
            return bound
    raise AssertionError(f"{name} is not a core requirement")


def _pins_it_admits(requirements: list[str]) -> list[str]:
    """constraints.txt's pins less those ``requirements`` exclude (e.g. diffusers 0.39 asks for
    huggingface-hub < 2): those are left to pip, the newest release the requirements admit."""
    reqs = [Requirement(r) for r in requirements]
    reqs = [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]
    kept = []
    for line in CONSTRAINTS.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            pin = Requirement(line)
            clash = any(
                r.name.lower().replace("_", "-") == pin.name.lower().replace("_", "-")
                and not r.specifier.contains(str(next(iter(pin.specifier)).version), prereleases=True)
                for r in reqs
            )
            if clash:
                continue
        kept.append(line)
    return kept


def test_the_guider_tests_pass_on_the_lowest_diffusers_the_range_admits(tmp_path):
    """tests/test_diffusers_guider.py, every test, with the lowest diffusers of the core's range in
    front of the pinned one (a --target folder; diffusers' own requirements at constraints.txt's
    versions where it admits them, else at the newest release it admits)."""
    low = _lowest("diffusers")
    assert Version(metadata.version("diffusers")) != Version(low), "the pinned diffusers is the lowest: nothing to test"
    target = tmp_path / "lowest"
    alone = _pip(sys.executable, "install", "--no-deps", "--target", str(tmp_path / "alone"), f"diffusers=={low}")
    assert alone.returncode == 0, alone.stderr[-3000:]
    (dist,) = metadata.distributions(path=[str(tmp_path / "alone")])
    pins = [line for line in _pins_it_admits(dist.requires or []) if not line.startswith("diffusers==")]
    (tmp_path / "constraints.txt").write_text("\n".join(pins) + "\n")
    installed = _pip(
        sys.executable, "install", "--target", str(target), "-c", str(tmp_path / "constraints.txt"), f"diffusers=={low}"
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    env = dict(os.environ, PYTHONPATH=str(target), HF_HUB_OFFLINE="1")
    seen = subprocess.run(
        [sys.executable, "-c", "import diffusers; print(diffusers.__version__)"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert seen.returncode == 0 and Version(seen.stdout.strip()) == Version(low), seen.stderr[-2000:]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--basetemp",
            str(tmp_path / "t"),
            "tests/test_diffusers_guider.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert (
        re.search(r"\b(\d+) passed\b", proc.stdout) and "skipped" not in proc.stdout and "deselected" not in proc.stdout
    )


def test_wig_generate_in_the_core_install_draws_what_it_draws_here(core_venv, tiny_sdxl, sdxl_lora_path, tmp_path):
    """docs/install.md puts `wig generate` in the core: with no extra it samples PG from a LoRA
    file, and the PNG's pixels are this environment's."""
    args = ["generate", "--model", str(tiny_sdxl), "--lora", str(sdxl_lora_path), "--method", "pg", "--omega", "0"]
    args += ["--scale", "5", "--steps", "2", "--height", "64", "--width", "64", "--prompt", "a sks dog", "--quiet"]
    there = _run(core_venv.parent / "wig", *args, "--seed", "0", "--out", str(tmp_path / "there.png"))
    assert there.returncode == 0, there.stderr[-3000:]
    here = subprocess.run(
        [sys.executable, "-m", "wig.cli", *args, "--seed", "0", "--out", str(tmp_path / "here.png")],
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert here.returncode == 0, here.stderr[-3000:]
    from PIL import Image

    a, b = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("there", "here"))
    assert a.shape == (64, 64, 3) and np.array_equal(a, b)
