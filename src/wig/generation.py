"""A generation job: all prompts of a concept at one (method, grid point) for a chunk of seeds.

``manifest.parquet`` has one row per image (schema in `MANIFEST_SCHEMA`): which file, prompt
and seed, the guidance settings, the image's sha256, the job's sampling wall time per image,
and the package versions that made it.
"""

from __future__ import annotations

import json
import os
import time
from typing import Sequence

import polars as pl
import torch

from wig.atomic import atomic_dir
from wig.concepts import save_png
from wig.guidance import Guidance
from wig.provenance import versions
from wig.sampling import sample

MANIFEST_SCHEMA = {
    "path": pl.String,  # s{seed}_p{prompt_index:02d}.png, relative to the manifest's folder
    "prompt_index": pl.Int64,
    "prompt": pl.String,
    "seed": pl.Int64,
    "method": pl.String,
    "omega": pl.Float64,
    "scale": pl.Float64,
    "ag_scale": pl.Float64,
    "weak": pl.String,
    "sha256": pl.String,
    "seconds_per_image": pl.Float64,  # the job's sampling wall time / images
    "versions": pl.String,  # JSON: torch, diffusers, transformers, peft, wig
}


def generate_samples(
    pipe,
    prompts: Sequence[str],
    guidance: Guidance,
    seeds: Sequence[int],
    out: str | os.PathLike,
    batch_size: int = 8,
    progress: bool = True,
    **sampling,
) -> pl.DataFrame:
    """Write ``s{seed}_p{i:02d}.png`` for every seed × prompt and ``manifest.parquet`` into ``out``.

    Every image starts from the latent of ``wig generate --seed <seed>``: the noise depends on
    the seed alone, never on the method, ω or λ, so all methods are compared on the same noise.
    """
    jobs = [(seed, i, prompt) for seed in seeds for i, prompt in enumerate(prompts)]
    rows = []
    with atomic_dir(out, overwrite=True) as tmp:
        start = time.perf_counter()
        images = []
        for first in range(0, len(jobs), batch_size):
            chunk = jobs[first : first + batch_size]
            generators = [torch.Generator("cpu").manual_seed(seed) for seed, _, _ in chunk]
            images += sample(pipe, [p for _, _, p in chunk], guidance, generators, progress=progress, **sampling)
        seconds = (time.perf_counter() - start) / len(jobs)
        stamp = json.dumps(versions(), sort_keys=True)
        for (seed, i, prompt), image in zip(jobs, images):
            name = f"s{seed}_p{i:02d}.png"
            rows.append({
                "path": name, "prompt_index": i, "prompt": prompt, "seed": seed, "method": guidance.method,
                "omega": guidance.omega, "scale": guidance.scale, "ag_scale": guidance.ag_scale,
                "weak": guidance.weak, "sha256": save_png(image, tmp / name), "seconds_per_image": seconds,
                "versions": stamp,
            })
        manifest = pl.DataFrame(rows, schema=MANIFEST_SCHEMA)
        manifest.write_parquet(tmp / "manifest.parquet")
    return manifest
