"""Glue for Snakemake `script:` jobs: one log file per job, torch threads from `threads:`."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import sys
import time
from pathlib import Path

from wig.gpus import device_ids, gpu_slot


def local_weights(snakemake, default=None):
    """A job's weights: the local path recorded by a resolve rule for real weights, else
    ``default`` (a tiny twin's folder, or the model name)."""
    record = snakemake.input.get("weights")
    if record is None:
        return default
    from wig.weights import recorded_path

    return recorded_path(record)


def where() -> str:
    """Where a job runs: host, SLURM job, the devices it sees (SLURM sets CUDA_VISIBLE_DEVICES
    to the GPUs it allocated)."""
    env = os.environ
    return (
        f"host {platform.node()} slurm_job {env.get('SLURM_JOB_ID', '-')} "
        f"CUDA_VISIBLE_DEVICES {env.get('CUDA_VISIBLE_DEVICES', '-')}"
    )


@contextlib.contextmanager
def job(snakemake, torch: bool = True):
    """Send everything the job prints into its log file and size torch's thread pool.

    File descriptors 1 and 2 are redirected, not just ``sys.stdout``: library loggers bound
    the original stderr at import time, and progress bars and C extensions write there too.
    Torch's thread count is the rule's ``threads:``; unset, torch takes every core and
    parallel jobs oversubscribe a small machine badly. Jobs that never touch torch pass
    ``torch=False`` and skip its import (seconds per job). Bad input (a `WigError`) fails the job
    with one line naming what was refused, in the log and on the run's stderr, and no traceback.
    """
    from wig.errors import WigError

    if torch:
        import torch as _torch

        _torch.set_num_threads(max(1, int(snakemake.threads)))
    log_path = Path(snakemake.log[0])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    refused = None
    with open(log_path, "w", buffering=1) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
        logger = logging.getLogger(f"wig.{snakemake.rule}")
        gpu_job = snakemake.resources.get("gpu", 0) > 0
        ids = device_ids(snakemake.config.get("runtime", {}).get("gpus")) if gpu_job else []
        try:
            with gpu_slot(ids) as device:
                logger.info("%s", where())
                if device is not None:
                    logger.info("gpu %s acquired at %.6f", device, time.time())
                if torch:  # which CPU kernels ran it (wig.kernels: runtime.cpu_kernels caps them)
                    logger.info("cpu kernels %s", _torch.backends.cpu.get_cpu_capability())
                try:
                    yield logger
                finally:
                    if device is not None:
                        logger.info("gpu %s released at %.6f", device, time.time())
        except WigError as err:  # bad input: one line, in the log and on the run's stderr, no traceback
            logging.getLogger("wig").error("refused: %s", err)
            refused = err
        except BaseException:
            logging.getLogger("wig").exception("job failed")
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
    if refused is not None:
        print(f"wig: rule {snakemake.rule}: {refused}", file=sys.stderr, flush=True)
        raise SystemExit(1)
