"""The workflow through profiles/slurm on a real single-node SLURM (tools/slurm-local).

Needs root (daemons, apt). Without root it is skipped, unless WIG_REQUIRE_CLUSTER=1 (set by
.ci/run) turns the skip into a failure: CI always runs it.
"""

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
import yaml

from conftest import ROOT, copy_workflow, results_of

pytestmark = pytest.mark.cluster
SLURM_LOCAL = ROOT / "tools/slurm-local"
GPU_RULES = {"class_images", "train", "generate", "embed_references", "embed_texts", "embed_samples"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        if os.environ.get("WIG_REQUIRE_CLUSTER") == "1":
            pytest.fail("the SLURM test cluster needs root (WIG_REQUIRE_CLUSTER=1 forbids skipping)")
        pytest.skip("the SLURM test cluster needs root")
    subprocess.run([SLURM_LOCAL, "install"], check=True, capture_output=True)
    folder = tmp_path_factory.mktemp("slurm")
    # 2 fake GPUs: two GPU jobs side by side on the 2 cores
    subprocess.run([SLURM_LOCAL, "up", folder], check=True, env=dict(os.environ, WIG_SLURM_GPUS="2"))
    yield folder
    subprocess.run([SLURM_LOCAL, "down", folder], check=True)


def _config(small: dict) -> dict:
    """The small study's tiny-SD half: its jobs are the small study's, so its tables are too."""
    config = yaml.safe_load(yaml.safe_dump(small))
    config["models"] = {"tiny-sd": config["models"]["tiny-sd"]}  # SLURM is under test here, not the families
    config["runtime"]["gpus"] = [7, 8, 9]  # wig's local allocator must leave SLURM's choice alone
    return config


def _profile(workdir: Path) -> None:
    """profiles/slurm with its site block edited for this 2-core node (what a user edits)."""
    shutil.copytree(ROOT / "profiles/slurm", workdir / "profiles/slurm")
    path = workdir / "profiles/slurm/config.yaml"
    text = path.read_text()
    for old, new in (
        ("cpus_per_gpu = 4 ", "cpus_per_gpu = 1 "),
        ("gpu_mem_mb = 16000", "gpu_mem_mb = 3000"),
        ("cpu_mem_mb = 2000", "cpu_mem_mb = 1000"),
    ):
        assert old in text
        text = text.replace(old, new)
    path.write_text(text)


CLUSTER_ARGS = [
    "--profile",
    "profiles/slurm",
    "--slurm-init-seconds-before-status-checks",
    "2",
    "--slurm-keep-successful-logs",
    "--latency-wait",
    "5",
]


def _submit(workdir, *args, timeout=400):
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *CLUSTER_ARGS, *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )


def _finished(output: str) -> Counter:
    return Counter(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", output))


def _rule(target: str) -> str:
    """The rule of a plugin log folder's target, 'rule_<rule>/<wildcards>'."""
    return target.split("/")[0].removeprefix("rule_")


def _submitted(output: str) -> Counter:
    """sbatch calls per rule (or group) from the plugin's 'submitted with SLURM jobid' lines."""
    return Counter(re.findall(r"submitted with SLURM jobid \d+ \(log: \S*/slurm_logs/((?:rule|group)_\w+?)/", output))


def _planned(workdir) -> Counter:
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--forceall"],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    table = (proc.stdout + proc.stderr).split("Job stats:")[1].split("total")[0]
    return Counter({m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)})


def _slurm_states(cluster: Path) -> dict[str, str]:
    """SLURM job id -> final state, from the cluster's job completion log."""
    return dict(re.findall(r"JobId=(\d+) .*?JobState=(\w+)", (cluster / "jobcomp.log").read_text()))


def _slurm_jobs_by_target(workdir: Path, states: dict[str, str]) -> dict[str, list[str]]:
    """(rule or group, wildcards) -> the final states of its SLURM jobs, in submission order, from
    the plugin's logs (.snakemake/slurm_logs/rule_<rule>/<wildcards>/<jobid>.log, kept for all)."""
    jobs = {}
    for log in (workdir / ".snakemake/slurm_logs").rglob("*.log"):
        jobs.setdefault(log.parent.relative_to(workdir / ".snakemake/slurm_logs").as_posix(), []).append(log.stem)
    return {target: [states[j] for j in sorted(ids, key=int)] for target, ids in jobs.items()}


def _wait_for(condition, timeout, what):
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _idle() -> bool:
    return not subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip()


@pytest.mark.xdist_group("small-study")  # the local run it is compared with is the small study's
def test_the_workflow_runs_on_slurm_survives_failures_and_kills_and_matches_a_local_run(cluster, small_study, tmp_path):
    _, small, as_built = small_study
    workdir = copy_workflow(tmp_path / "cluster", _config(small))
    _profile(workdir)
    planned = _planned(workdir)
    del planned["all"]  # a local rule: the one job snakemake runs itself

    # 1. a corrupt reference image: its preparation fails on the cluster; the run stops naming the log
    # (cut in its pixel data: a cut header is refused when the config is read, before any job)
    image = workdir / "resources/datasets/demo/images/brown_dog/00.jpg"
    good = image.read_bytes()
    image.write_bytes(good[: len(good) // 2])
    first = _submit(workdir, "--retries", "0")  # the profile's retry would only fail again
    out1 = first.stdout + first.stderr
    assert first.returncode != 0
    assert "Error in rule prepare" in out1 and "logs/prepare/brown_dog.log" in out1  # under results/<study>/
    assert "00.jpg" in (results_of(workdir) / "logs/prepare/brown_dog.log").read_text()
    assert not (results_of(workdir) / "concepts/brown_dog").exists()

    # 2. fixed input; while training runs on the cluster the submitting snakemake is SIGKILLed and
    # its jobs are cancelled (what a dead login session leaves behind, cleaned up with scancel)
    image.write_bytes(good)
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", *CLUSTER_ARGS],
        cwd=workdir,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "slurm_logs/rule_train/" in line and "submitted with SLURM jobid" in line:
            break
    _wait_for((results_of(workdir) / "logs/tiny-sd/db-lora/train/brown_dog/ft0.log").exists, 120, "training to start")
    proc.send_signal(signal.SIGKILL)
    out2 = "".join(lines) + proc.stdout.read()
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    subprocess.run(["scancel", "--user", "root"], check=True)
    _wait_for(_idle, 60, "the cancelled jobs to leave the cluster")
    # only what was missing ran: nothing that finished in run 1 was submitted again
    assert not set(_finished(out1)) & {k.removeprefix("rule_") for k in _submitted(out2)}

    # 3. unlock (the killed run held the lock) and finish with --rerun-incomplete
    assert (
        subprocess.run(
            [sys.executable, "-m", "snakemake", "--unlock", "--cores", "1"], cwd=workdir, capture_output=True
        ).returncode
        == 0
    )
    third = _submit(workdir, "--rerun-incomplete")
    assert third.returncode == 0, (third.stdout + third.stderr)[-3000:]

    # job counts from SLURM itself: every job of the DAG completed in exactly one SLURM job, none was
    # redone after the failure or the kill; prepare failed once, training was cancelled once (and
    # whatever ran beside it); the generation + embedding jobs went in one grouped sbatch
    states = _slurm_states(cluster)
    by_target = _slurm_jobs_by_target(workdir, states)
    assert by_target.pop("group_sample_tiny-sd_db-lora_brown_dog_embed_samples_generate") == ["COMPLETED"]
    assert by_target.pop("rule_prepare/brown_dog") == ["FAILED", "COMPLETED"]
    assert by_target["rule_train/tiny-sd_db-lora_brown_dog_0"] == ["CANCELLED", "COMPLETED"]
    # a job beside training whose rule had finished when scancel reached it: SLURM records CANCELLED,
    # but its outputs and snakemake's metadata were complete, so run 3 rightly kept them (the tables
    # below equal a local run's); that is allowed only with the rule's finish in the job's own log
    finished_when_cancelled = {}  # target -> its one SLURM job id
    for target, history in by_target.items():
        if history == ["CANCELLED"]:
            (log,) = (workdir / ".snakemake/slurm_logs" / target).glob("*.log")
            if _rule(target) in _finished(log.read_text()):
                finished_when_cancelled[target] = log.stem
    expected = {("COMPLETED",), ("CANCELLED", "COMPLETED")}
    odd = {t: s for t, s in by_target.items() if tuple(s) not in expected and t not in finished_when_cancelled}
    assert odd == {}, odd  # the targets whose SLURM history is unexpected, named (the whole dict truncates)
    per_rule = Counter(_rule(target) for target in by_target)
    grouped = Counter(generate=planned["generate"], embed_samples=planned["embed_samples"])
    assert per_rule + Counter({"prepare": 1}) == planned - grouped, per_rule

    # every job's log was written inside a completed SLURM job; GPU rules got a GPU from SLURM
    logs = sorted((results_of(workdir) / "logs").rglob("*.log"))
    assert len(logs) == sum(planned.values())
    for log in logs:
        text = log.read_text()
        where = re.search(r"wig\.(\w+): host \S+ slurm_job (\S+) CUDA_VISIBLE_DEVICES (\S+)", text)
        assert where and (states.get(where[2]) == "COMPLETED" or where[2] in finished_when_cancelled.values()), log
        # SLURM gave the GPU rules a GPU (of 2 fake ones), the CPU rules none; wig's ids did not override it
        assert where[3] in ({"0", "1"} if where[1] in GPU_RULES else {"-"}), (log, where[0])
        assert "acquired" not in text

    # the tables equal a local run's: the small study's, as its one local run built them
    for table in ("scores", "metrics", "paired_vs_cfg"):
        a = pl.read_parquet(results_of(workdir) / f"tiny-sd/db-lora/tables/{table}.parquet")
        b = pl.read_parquet(io.BytesIO(as_built[f"tiny-sd/db-lora/tables/{table}.parquet"]))
        assert not a.is_empty() and a.equals(b), table
