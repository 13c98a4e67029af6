"""`make test` runs `pytest -n 2 --dist loadgroup`: each `xdist_group` (a study and the scenarios
that read it) must run on one worker, so the study's session fixture is built once. When the pytest
/ xdist pair stops honouring the marks nothing fails by itself — every worker just rebuilds the
study (pytest 9.2 with xdist 3.8 did that: ≈ 400 s twice per CI run). This runs a small suite the
way the Makefile does and checks where its tests ran."""

import json
import os
import subprocess
import sys

SUITE = """
import json, os, pytest

GROUP = pytest.mark.xdist_group("study")

@pytest.fixture(scope="session")
def study(tmp_path_factory):
    return os.environ["PYTEST_XDIST_WORKER"]

def _record(name, worker, built_by):
    with open(os.environ["WHERE"], "a") as f:
        f.write(json.dumps([name, worker, built_by]) + "\\n")

@GROUP
@pytest.mark.parametrize("i", range(4))
def test_grouped(study, i):
    _record(f"grouped{i}", os.environ["PYTEST_XDIST_WORKER"], study)

@pytest.mark.parametrize("i", range(4))
def test_free(i):
    _record(f"free{i}", os.environ["PYTEST_XDIST_WORKER"], None)
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
    rows = [json.loads(line) for line in where.read_text().splitlines()]
    grouped = [(worker, built_by) for name, worker, built_by in rows if name.startswith("grouped")]
    assert len(grouped) == 4 and len(rows) == 8
    # one worker ran the group, so one fixture served every test of it
    assert len({worker for worker, _ in grouped}) == 1 and len({built for _, built in grouped}) == 1, grouped
