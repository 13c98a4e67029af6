"""Loading text-to-image pipelines: one path for real checkpoints and tiny twins alike."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from wig.errors import WigError
from wig.gpus import resolve_device
from wig.models.families import family_of


class ModelError(WigError):
    """A model that cannot be found or loaded."""


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is float32 on the CPU and float16 on a GPU."""
    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; choose from auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_pipeline(
    name_or_path: str,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    scheduler: str = "auto",
):
    """``DiffusionPipeline.from_pretrained`` plus the checks and settings wig relies on.

    ``scheduler``: ``"auto"`` is the sampler the paper uses with each family — DDIM for SD,
    the checkpoint's own flow DPM-Solver for SANA; ``"ddim"`` swaps in a DDIMScheduler built
    from the checkpoint's scheduler config; ``"model"`` keeps the checkpoint's own.
    """
    from diffusers import DDIMScheduler, DiffusionPipeline

    device = resolve_device(device) if isinstance(device, str) else device
    dtype = resolve_dtype(dtype, device) if isinstance(dtype, str) else dtype
    path = Path(name_or_path)
    if not path.exists() and (path.is_absolute() or name_or_path.startswith(".") or name_or_path.count("/") != 1):
        raise ModelError(f"model not found: {name_or_path}")
    if path.exists() and not (path / "model_index.json").is_file():
        raise ModelError(f"not a diffusers pipeline folder (no model_index.json): {name_or_path}")
    try:
        pipe = DiffusionPipeline.from_pretrained(name_or_path, dtype=dtype, **_no_safety_checker(path))
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot load model {name_or_path}: {first}") from None
    if scheduler not in ("auto", "ddim", "model"):
        raise ModelError(f"unknown scheduler {scheduler!r}; choose auto, ddim or model")
    if scheduler == "auto":
        scheduler = "ddim" if family_of(pipe).ddim else "model"
    if scheduler == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _no_safety_checker(path: Path) -> dict:
    """Drop SD's safety checker; other pipelines (SANA) have none and warn at the keyword."""
    if path.exists() and "safety_checker" not in json.loads((path / "model_index.json").read_text()):
        return {}
    return {"safety_checker": None}
