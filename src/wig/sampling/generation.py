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
from contextlib import ExitStack
from dataclasses import dataclass
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
    (manifest,) = generate_sets(
        pipe, [SampleSet(prompts, out, extra_texts, images)], points, seeds, batch_size, progress, weights, **sampling
    )
    return manifest


@dataclass(frozen=True)
class SampleSet:
    """One subject's part of a generation job: its prompts, its output folder, and per prompt the
    extra texts and input images `generate_samples` takes."""

    prompts: Sequence[str]
    out: str | os.PathLike
    extra_texts: Mapping[str, Sequence[str]] | None = None
    images: Sequence | None = None


def generate_sets(
    pipe,
    sets: Sequence[SampleSet],
    points: Mapping[str, GuidanceMethod],
    seeds: Sequence[int],
    batch_size: int = 8,
    progress: bool = True,
    weights: BranchWeights | None = None,
    **sampling,
) -> list[pl.DataFrame]:
    """`generate_samples` for several subjects at once, each set's folder and manifest what
    `generate_samples` writes for it alone: several sets share each batch, so ``weights`` must
    route each sample to its set's fine-tune (``weights.route``: set k is subject k of
    `wig.personalization.lora.RoutedLoraWeights`). The images of a seed are the same whoever
    shares its batch (one generator per image), up to the float summation order of a batched
    forward. The folders appear together, or none does."""
    if not points:
        raise WigError(f"{sets[0].out if sets else 'a generation job'}: a generation job needs at least one grid point")
    route = getattr(weights, "route", None)
    if len(sets) > 1 and route is None:
        raise WigError("several subjects in one generation job need branch weights that route samples (route())")
    for s in sets:
        for name, texts in dict(s.extra_texts or {}).items():
            if len(texts) != len(s.prompts):
                raise WigError(f"{s.out}: extra text {name!r} has {len(texts)} entries for {len(s.prompts)} prompts")
        if s.images is not None and len(s.images) != len(s.prompts):
            raise WigError(f"{s.out}: {len(s.images)} input images for {len(s.prompts)} prompts")
    if len({s.images is None for s in sets}) > 1:
        raise WigError("the subjects of one generation job all give input images or none does")
    # (set, seed, prompt index, prompt): subject by subject, seed by seed, as generate_samples orders them
    jobs = [(k, seed, i, prompt) for k, s in enumerate(sets) for seed in seeds for i, prompt in enumerate(s.prompts)]
    stamp = json.dumps(versions(), sort_keys=True)
    rows: list[list[dict]] = [[] for _ in sets]
    with ExitStack() as stack:
        tmps = [stack.enter_context(atomic_dir(s.out, overwrite=True)) for s in sets]
        for key, guidance in points.items():
            folders = [tmp if len(points) == 1 else tmp / key for tmp in tmps]
            for folder in folders:
                folder.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            drawn, companions = [], {name: [] for name in guidance.companions}
            for first in range(0, len(jobs), batch_size):
                chunk = jobs[first : first + batch_size]
                generators = [torch.Generator("cpu").manual_seed(seed) for _, seed, _, _ in chunk]
                texts = {
                    name: [dict(sets[k].extra_texts or {})[name][i] for k, _, i, _ in chunk]
                    for name in guidance.extra_texts
                    if all(name in dict(s.extra_texts or {}) for s in sets)
                }
                images = [sets[k].images[i] for k, _, i, _ in chunk] if sets[0].images is not None else None
                if route is not None:
                    route([k for k, _, _, _ in chunk])
                try:
                    out = sample(
                        pipe,
                        [p for _, _, _, p in chunk],
                        guidance,
                        generators,
                        progress=progress,
                        weights=weights,
                        extra_texts=texts,
                        trajectories=True,
                        **({"images": images} if images is not None else {}),
                        **sampling,
                    )
                except SamplingError as err:
                    raise SamplingError(f"grid point {key}: {err}") from None
                drawn += out[RESULT]
                for name in companions:
                    companions[name] += out[name]
            seconds = (time.perf_counter() - start) / len(jobs)
            for name, pictures in companions.items():  # beside the result, never listed (never scored)
                for (k, seed, i, _), image in zip(jobs, pictures):
                    save_png(image, folders[k] / f"s{seed}_p{i:02d}.{name}.png")
            for (k, seed, i, prompt), image in zip(jobs, drawn):
                path = folders[k] / f"s{seed}_p{i:02d}.png"
                rows[k].append(
                    {
                        "path": path.relative_to(tmps[k]).as_posix(),
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
        manifests = [pl.DataFrame(r, schema=manifest_schema()) for r in rows]
        for tmp, manifest in zip(tmps, manifests):
            manifest.write_parquet(tmp / "manifest.parquet")
    return manifests
