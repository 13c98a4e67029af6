"""A generation job: all prompts of a concept at one or more grid points for a chunk of seeds.

``manifest.parquet`` has one row per image (schema: `manifest_schema`): which file, prompt
and seed, the grid point and its guidance settings, the image's sha256, the point's sampling
wall time per image, and the package versions that made it. A method's companion trajectories
(DreamBlend's reference) are saved beside each image as ``s{seed}_p{i:02d}.{name}.png``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Mapping, Sequence

import polars as pl
import torch

from wig.atomic import atomic_dir
from wig.branches import BranchWeights
from wig.concepts import save_png
from wig.errors import WigError
from wig.guidance import RESULT, GuidanceMethod, point_columns, point_schema
from wig.provenance import versions
from wig.sampling.sampler import SamplingError, sample


def manifest_schema() -> dict:
    """The manifest's columns: the image, its grid point (``point``, as its path spells it, then
    ``method`` and every registered guidance parameter, `wig.guidance.point_schema`), and how it
    was made."""
    return {
        "path": pl.String,  # [{point}/]s{seed}_p{prompt_index:02d}.png, relative to the manifest's folder
        "prompt_index": pl.Int64,
        "prompt": pl.String,
        "seed": pl.Int64,
        "point": pl.String,  # {method}/{point_name} (GuidanceMethod.key)
        **point_schema(),
        "sha256": pl.String,
        "seconds_per_image": pl.Float64,  # the point's sampling wall time / its images
        "versions": pl.String,  # JSON: torch, diffusers, transformers, peft, wig
    }


def generate_samples(
    pipe,
    prompts: Sequence[str],
    points: Mapping[str, GuidanceMethod],
    seeds: Sequence[int],
    out: str | os.PathLike,
    batch_size: int = 8,
    progress: bool = True,
    weights: BranchWeights | None = None,
    extra_texts: Mapping[str, Sequence[str]] | None = None,
    images: Sequence | None = None,
    **sampling,
) -> pl.DataFrame:
    """Write every point × seed × prompt image and ``manifest.parquet`` into ``out``.

    ``points`` maps a grid point's key (``{method}/{name}``) to its guidance. One point's images
    are ``s{seed}_p{i:02d}.png`` in ``out``; several points' go below ``out/{key}/``. Every image
    starts from the latent of ``wig generate --seed <seed>``: the noise depends on the seed
    alone, never on the method, ω or λ, so all methods are compared on the same noise.
    ``weights``: how the attached fine-tune realises each branch (`wig.sampling.sampler.sample`).
    ``extra_texts``: for each text a point's branches name beyond prompt and negative
    (`GuidanceMethod.extra_texts`), one per prompt. ``images``: for a pipeline that edits an image
    (InstructPix2Pix), the input image of each prompt.
    """
    extra_texts = dict(extra_texts or {})
    for name, texts in extra_texts.items():
        if len(texts) != len(prompts):
            raise WigError(f"{out}: extra text {name!r} has {len(texts)} entries for {len(prompts)} prompts")
    if not points:
        raise WigError(f"{out}: a generation job needs at least one grid point")
    if images is not None and len(images) != len(prompts):
        raise WigError(f"{out}: {len(images)} input images for {len(prompts)} prompts")
    jobs = [(seed, i, prompt) for seed in seeds for i, prompt in enumerate(prompts)]
    stamp = json.dumps(versions(), sort_keys=True)
    rows = []
    with atomic_dir(out, overwrite=True) as tmp:
        for key, guidance in points.items():
            folder = tmp if len(points) == 1 else tmp / key
            folder.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            drawn, companions = [], {name: [] for name in guidance.companions}
            for first in range(0, len(jobs), batch_size):
                chunk = jobs[first : first + batch_size]
                generators = [torch.Generator("cpu").manual_seed(seed) for seed, _, _ in chunk]
                texts = {
                    name: [extra_texts[name][i] for _, i, _ in chunk]
                    for name in guidance.extra_texts
                    if name in extra_texts
                }
                try:
                    out = sample(
                        pipe,
                        [p for _, _, p in chunk],
                        guidance,
                        generators,
                        progress=progress,
                        weights=weights,
                        extra_texts=texts,
                        trajectories=True,
                        **({"images": [images[i] for _, i, _ in chunk]} if images is not None else {}),
                        **sampling,
                    )
                except SamplingError as err:
                    raise SamplingError(f"grid point {key}: {err}") from None
                drawn += out[RESULT]
                for name in companions:
                    companions[name] += out[name]
            seconds = (time.perf_counter() - start) / len(jobs)
            for name, pictures in companions.items():  # beside the result, never listed (never scored)
                for (seed, i, _), image in zip(jobs, pictures):
                    save_png(image, folder / f"s{seed}_p{i:02d}.{name}.png")
            for (seed, i, prompt), image in zip(jobs, drawn):
                path = folder / f"s{seed}_p{i:02d}.png"
                rows.append(
                    {
                        "path": path.relative_to(tmp).as_posix(),
                        "prompt_index": i,
                        "prompt": prompt,
                        "seed": seed,
                        "point": key,
                        **point_columns(guidance),
                        "sha256": save_png(image, path),
                        "seconds_per_image": seconds,
                        "versions": stamp,
                    }
                )
        manifest = pl.DataFrame(rows, schema=manifest_schema())
        manifest.write_parquet(tmp / "manifest.parquet")
    return manifest
