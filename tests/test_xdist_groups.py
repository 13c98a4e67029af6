"""`make test` runs `pytest -n 2 --dist loadgroup`: each `xdist_group` (a study and the scenarios
that read it) must run on one worker, so the study's session fixture is built once. When the pytest
/ xdist pair stops honouring the marks nothing fails by itself — every worker just rebuilds the
study (pytest 9.2 with xdist 3.8 did that: ≈ 400 s twice per CI run). This runs a small suite the
way the Makefile does and checks where its tests ran."""

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

pytestmark = pytest.mark.check

SUITE = """
import json, os, pytest

GROUP = pytest.mark.xdist_group("study")

def _record(what):
    with open(os.environ["WHERE"], "a") as f:
        f.write(json.dumps([what, os.environ["PYTEST_XDIST_WORKER"]]) + "\\n")

@pytest.fixture(scope="session")
def study():
    _record("built")

@GROUP
@pytest.mark.parametrize("i", range(4))
def test_grouped(study, i):
    _record("grouped")

@pytest.mark.parametrize("i", range(4))
def test_free(i):
    _record("free")
"""


def test_an_xdist_group_runs_on_one_worker(tmp_path):
    (tmp_path / "test_suite.py").write_text(SUITE)
    where = tmp_path / "where.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "WHERE": str(where)},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
    rows = [tuple(json.loads(line)) for line in where.read_text().splitlines()]
    # the study was built once, by the worker that ran every test of its group
    assert Counter(what for what, _ in rows) == Counter(built=1, grouped=4, free=4), rows
    assert len({worker for what, worker in rows if what != "free"}) == 1, rows
