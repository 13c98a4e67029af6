"""Which GPU a local job uses: one advisory lock per device id.

Snakemake's ``--resources gpu=N`` bounds how many GPU jobs run at once but not which device each
one takes, so every job would land on GPU 0. A GPU job takes the first free id with a
non-blocking ``flock`` on ``.wig/gpu/<id>.lock`` and narrows ``CUDA_VISIBLE_DEVICES`` to it before
CUDA starts. The kernel drops a lock when its holder exits, however it exits (SIGKILL included),
so a dead job never wedges a device. Under SLURM (or any scheduler that already chose the
devices) the allocator stands aside.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from pathlib import Path

from wig.errors import WigError

LOCK_DIR = Path(".wig/gpu")


class GpuError(WigError):
    """Device ids that contradict the run's settings."""


def resolve_device(device: str = "auto"):
    """The torch device a setting names: ``auto`` is the first GPU if there is one, else the CPU;
    a named device must exist on this machine (else one line naming it, not a CUDA traceback)."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise GpuError(f"unknown device {device!r}: auto, cpu, cuda, cuda:N, …") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (resolved.index or 0) >= count:
            raise GpuError(f"device {device}: this machine has {count} CUDA device(s)")
    return resolved


def device_ids(configured: list | None, env: dict | None = None) -> list[str]:
    """The ids jobs may use: ``runtime.gpus`` from the config, else the submitting shell's
    CUDA_VISIBLE_DEVICES, else none (CPU-only, or a single default GPU)."""
    if configured:
        return [str(i) for i in configured]
    visible = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES", "")
    return [i.strip() for i in visible.split(",") if i.strip()]


def check_resources(ids: list[str], gpu_resource: int | None) -> None:
    """More concurrent GPU jobs than device ids would make two jobs share one device."""
    if gpu_resource is not None and len(ids) > 0 and gpu_resource > len(ids):
        raise GpuError(
            f"--resources gpu={gpu_resource} lets {gpu_resource} GPU jobs run at once but there are only "
            f"{len(ids)} device ids ({','.join(ids)}; runtime.gpus or CUDA_VISIBLE_DEVICES): "
            f"lower gpu= or list more ids"
        )


def scheduler_assigned(env: dict | None = None) -> bool:
    """A batch scheduler chose this job's devices (SLURM sets SLURM_JOB_ID in every job)."""
    return "SLURM_JOB_ID" in (os.environ if env is None else env)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def gpu_slot(ids: list[str], lock_dir: str | os.PathLike = LOCK_DIR, poll: float = 0.2, timeout: float = 3600):
    """Hold one free device id for the block, with CUDA_VISIBLE_DEVICES set to it; yields the id
    (None when there is nothing to choose: no ids, or a scheduler already chose)."""
    if not ids or scheduler_assigned():
        yield None
        return
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        for device in ids:
            fd = os.open(lock_dir / f"{device}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            saved = os.environ.get("CUDA_VISIBLE_DEVICES")
            os.environ["CUDA_VISIBLE_DEVICES"] = device
            # SIGTERM (snakemake cancelling the job) unwinds through `finally` like an exception
            previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
            try:
                yield device
            finally:
                signal.signal(signal.SIGTERM, previous)
                if saved is None:
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                else:
                    os.environ["CUDA_VISIBLE_DEVICES"] = saved
                os.close(fd)  # releases the lock
            return
        if time.monotonic() > deadline:
            raise GpuError(f"no free GPU among {','.join(ids)} for {timeout:.0f} s (locks in {lock_dir})")
        time.sleep(poll)
