"""The synthetic world's shipped base: the pretrain rules' output, committed so a study starts from
it instead of pretraining for an hour.

``resources/models/synthetic-base/`` is ``results/<model>/model`` exactly as rule pretrain_model
wrote it (a StableDiffusionPipeline folder with its training log); ``synthetic-base.json`` beside
it records the pretraining config of both stages (what `wig.workflow.rule_params.pretrain_config` gives a
``{tiny: synthetic}`` entry: a test keeps the two equal, so editing ``tiny_synthetic.json`` without
rebuilding and reshipping fails), the folder's sha256 (`wig.weights.folder_sha256`; the
presets name it, and resolving the model checks it), where and how long it was made. A study loads it
as any checkpoint: ``{path: resources/models/synthetic-base, family: sd, sha256: …}``.

Rebuild and reship (``tools/ship_synthetic_base.py``)::

    snakemake --cores 2 --configfile config/presets/synthetic.yaml \\
        --config 'models={"synthetic": {"tiny": "synthetic"}}' -- results/synthetic/model
    python tools/ship_synthetic_base.py results/synthetic
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
from pathlib import Path

from wig.weights import folder_sha256

SHIPPED = Path("resources/models/synthetic-base")
RECORD = Path("resources/models/synthetic-base.json")


def _seconds(benchmark: Path) -> float | None:
    if not benchmark.is_file():
        return None
    with open(benchmark, newline="") as fh:
        return float(next(csv.DictReader(fh, delimiter="\t"))["s"])


def ship(
    model_root: str | os.PathLike, pretrain: dict, out: str | os.PathLike = SHIPPED, record: str | os.PathLike = RECORD
) -> dict:
    """Copy ``<model_root>/model`` (rule pretrain_model's output) to ``out`` and write ``record``:
    ``pretrain`` (the config of each stage), ``sha256``, the stages' seconds (their benchmark
    files), the machine and library versions. Returns the record."""
    import diffusers
    import torch

    root, out = Path(model_root), Path(out)
    if not (root / "model/model_index.json").is_file():
        raise FileNotFoundError(f"{root / 'model'}: not a pretrained pipeline folder")
    if out.exists():
        shutil.rmtree(out)
    # Snakemake's marker of a directory output is no part of the model
    shutil.copytree(root / "model", out, ignore=shutil.ignore_patterns(".snakemake_timestamp"))
    entry = {
        "sha256": folder_sha256(out),
        "made_by": "rules pretrain_vae + pretrain_model (wig.synthetic.pretrain)",
        "pretrain": pretrain,
        "seconds": {stage: _seconds(root / f"benchmarks/pretrain_{stage}.tsv") for stage in ("vae", "model")},
        "machine": {
            "platform": platform.platform(),
            "processor": platform.machine(),
            "cpus": os.cpu_count(),
            "device": "cpu",
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
        },
        "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
    }
    Path(record).write_text(json.dumps(entry, indent=2, sort_keys=True) + "\n")
    return entry
