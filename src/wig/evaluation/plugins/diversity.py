"""Diversity, DreamBlend's third axis beside subject and text fidelity (Ram et al. 2024): the mean
pairwise DINO distance (1 − cosine) among the images of one prompt and concept at one grid point,
across sampling seeds. Scored per image as its mean distance to the other seeds' images of its
prompt, so the table's cell (the mean over concepts of the mean over prompts) is the mean pairwise
distance; the pairs are those of one generation job (a seed chunk: the presets keep all seeds in
one). An image without another seed of its prompt scores NaN. Opt-in (``evaluation.metrics``):
it needs several seeds per prompt, which not every study samples. It reads DINO's embeddings in
each protocol, as DINO does; the nested bootstrap resamples its per-image values (a U-statistic's
pairs are not independent, so its interval is approximate).
"""

from __future__ import annotations

import numpy as np

from wig.evaluation.base import Metric, register_metric
from wig.evaluation.plugins.dino import Dino


def mean_pairwise_distance(generated: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per image: the mean cosine distance to the other images of its group (NaN if alone)."""
    x = np.asarray(generated, dtype=np.float64)
    groups = np.asarray(groups)
    if groups.shape != (len(x),):
        raise ValueError(f"one group id per image: {groups.shape} ids for {len(x)} images")
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    out = np.full(len(x), np.nan)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        if len(idx) < 2:
            continue
        distance = 1.0 - x[idx] @ x[idx].T
        out[idx] = distance.sum(axis=1) / (len(idx) - 1)  # the diagonal is 0
    return out


register_metric(
    Metric(
        "dino_diversity",
        "diversity (DINO)",
        "diversity",
        "samples",
        mean_pairwise_distance,
        encoder=Dino.kind,
        default=False,
        order=90,
    )
)
