"""The local GPU allocator: one job per device id, released on every exit path."""

import os
import signal
import subprocess
import sys
import time

import pytest

from wig.gpus import GpuError, check_resources, device_ids, gpu_slot

pytestmark = pytest.mark.check

HOLD = """
import sys, time
from wig.gpus import gpu_slot
with gpu_slot(["0", "1"], lock_dir=sys.argv[1]) as device:
    print(device, flush=True)
    time.sleep(60)
"""


def _holder(lock_dir):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"},
    )
    return proc, proc.stdout.readline().strip()


def test_ids_come_from_config_then_the_shell_and_are_checked_against_resources():
    assert device_ids([0, 2]) == ["0", "2"]
    assert device_ids(None, {"CUDA_VISIBLE_DEVICES": "3, 5"}) == ["3", "5"]
    assert device_ids(None, {}) == []
    check_resources(["0", "1"], 2)
    check_resources([], 4)  # no ids: nothing to spread (CPU, or the one default GPU)
    with pytest.raises(GpuError, match="gpu=3 .* only 2 device ids"):
        check_resources(["0", "1"], 3)


def test_jobs_take_distinct_ids_and_a_sigkilled_or_sigtermed_holder_frees_its_id(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    first, a = _holder(tmp_path)
    second, b = _holder(tmp_path)
    assert {a, b} == {"0", "1"}
    with pytest.raises(GpuError, match="no free GPU among 0,1"):
        with gpu_slot(["0", "1"], lock_dir=tmp_path, timeout=0.5):
            pass
    first.send_signal(signal.SIGKILL)
    first.wait()
    with gpu_slot(["0", "1"], lock_dir=tmp_path, timeout=5) as device:
        assert device == a and os.environ["CUDA_VISIBLE_DEVICES"] == a
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=10) == 128 + signal.SIGTERM  # unwound through the slot's `finally`
    start = time.monotonic()
    with gpu_slot(["0", "1"], lock_dir=tmp_path, timeout=5) as device:
        assert device == "0"
    assert time.monotonic() - start < 1


def test_under_slurm_the_scheduler_choice_stands(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with gpu_slot(["5", "6"], lock_dir=tmp_path) as device:
        assert device is None and os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert not list(tmp_path.iterdir())
