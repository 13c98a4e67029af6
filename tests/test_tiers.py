"""Every test file names its tier (`make check` runs the ``check`` tier, `make test` all): read
from the files, and shown refused by pytest itself when a file forgets it."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TIERS

pytestmark = pytest.mark.check

TESTS = Path(__file__).resolve().parent


def _module_tier(path: Path) -> str | None:
    """The tier a file's top-level ``pytestmark = pytest.mark.<tier>`` names, or None."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets):
            value = node.value
            if isinstance(value, ast.Attribute) and value.attr in TIERS:
                return value.attr
    return None


def test_every_test_file_names_one_tier():
    files = sorted(TESTS.glob("test_*.py"))
    assert len(files) > 30
    untiered = [f.name for f in files if _module_tier(f) is None]
    assert not untiered, f"no pytestmark tier in {untiered}"
    tiers = {f.name: _module_tier(f) for f in files}
    assert tiers["test_workflow.py"] == "workflow" and tiers["test_cluster.py"] == "cluster"


def test_the_check_tier_runs_no_snakemake_subprocess():
    """What `make check` promises: none of its files start Snakemake (the workflow tier does)."""
    for f in sorted(TESTS.glob("test_*.py")):
        if _module_tier(f) == "check":
            text = f.read_text()
            for starts_snakemake in ('"-m", "snake' + 'make"', "from test_" + "workflow import"):
                assert starts_snakemake not in text, f.name


def _run(tmp_path, *args):
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )


def test_a_file_without_a_tier_is_refused_and_tier_selects_by_the_closest_mark(tmp_path):
    (tmp_path / "conftest.py").write_text((TESTS / "conftest.py").read_text())
    (tmp_path / "pyproject.toml").write_text(
        "[tool.pytest.ini_options]\nmarkers = [" + ", ".join(f'"{t}: x"' for t in TIERS) + "]\n"
    )
    (tmp_path / "test_tiered.py").write_text(
        "import pytest\npytestmark = pytest.mark.check\n\n"
        "def test_fast():\n    pass\n\n"
        "@pytest.mark.workflow\ndef test_dag():\n    pass\n"
    )
    proc = _run(tmp_path, "--tier=check", "-v")
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "test_fast PASSED" in proc.stdout and "test_dag" not in proc.stdout.split("deselected")[0]
    assert "1 passed, 1 deselected" in proc.stdout
    proc = _run(tmp_path, "--tier=workflow", "-v")
    assert "test_dag PASSED" in proc.stdout and "1 passed, 1 deselected" in proc.stdout

    (tmp_path / "test_untiered.py").write_text("def test_forgot():\n    pass\n")
    proc = _run(tmp_path)
    assert proc.returncode != 0
    assert "test files without a tier" in proc.stderr and "test_untiered.py" in proc.stderr
    assert "passed" not in proc.stdout
