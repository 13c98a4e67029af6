"""How many images a contrast needs: the half-width of its 95 % CI projected to a larger design,
from a pilot run's paired differences.

The tables' CIs (`wig.evaluation.metrics`) resample subjects, then within each drawn subject its
LoRA seeds, prompts and sampling seeds (the pigeonhole bootstrap of a crossed design, which is
conservative: each resampled axis carries the cell noise once more). Resampling a pilot with
larger counts does not project that CI — draws with replacement from 8 seeds hold 8 seeds'
information —, so the projection fits the design's variance components instead: within each
subject, an additive model of LoRA-seed, prompt and sampling-seed effects plus cell noise
(balanced-ANOVA moments, pooled over subjects; interactions fall into the noise), and the spread
of the subject means beyond what that noise explains. It then simulates runs of the target size
from the fitted model and computes *the tables' own bootstrap* on each: the projected half-width is
the CI a run of that size would show, if the pilot's components hold. An axis that cannot shrink a
component — more sampling seeds against the spread between subjects — leaves it in the projection,
so a design that cannot reach a target says which axis it needs.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from wig.errors import WigError
from wig.evaluation.metrics import difference_cube, paired_with_reference, point_keys, reference_points

AXES = ("subjects", "finetune_seeds", "prompts", "seeds")


def paired_cube(scores: pl.DataFrame, metric: str, point: dict, protocol: str | None = None) -> np.ndarray:
    """(subjects, LoRA seeds, prompts, seeds) cube of ``metric`` differences between ``point``
    (a table row's point columns, e.g. PG ω 0 at λ 4.5) and its baseline (CFG at its λ) on the same
    noise."""
    keys = point_keys()
    if protocol is not None:
        scores = scores.filter(pl.col("protocol") == protocol)
    elif scores["protocol"].n_unique() > 1:
        raise WigError(f"scores hold protocols {scores['protocol'].unique().to_list()}: name one")
    points = scores.select(keys).unique(maintain_order=True)
    refs = reference_points(points)
    unknown = set(point) - set(keys)
    if unknown:
        raise WigError(f"{sorted(unknown)} are no grid point columns ({', '.join(keys)})")
    match = [p for p in refs if all(p[keys.index(k)] == v for k, v in point.items())]
    if len(match) != 1:
        raise WigError(f"{len(match)} grid points match {point} in the scores: name one")
    return difference_cube(paired_with_reference(scores, match[0], refs[match[0]]), metric)


def components(cube: np.ndarray) -> dict[str, float]:
    """Variance components of a (subjects, LoRA seeds, prompts, seeds) cube, each subject complete:
    ``subjects`` (of the subject means, net of the noise in them), ``finetune_seeds``,
    ``prompts``, ``seeds`` (main effects within a subject) and ``noise`` (the rest), plus ``mean``.
    An axis of one level has no component (0: its spread is in ``noise``)."""
    if np.isnan(cube).any():
        raise WigError("the variance components need every subject's full LoRA seed × prompt × seed design")
    n_c, n_f, n_p, n_s = cube.shape
    means = cube.mean(axis=(1, 2, 3))
    centred = cube - means[:, None, None, None]
    marginals = [centred.mean(axis=(2, 3)), centred.mean(axis=(1, 3)), centred.mean(axis=(1, 2))]  # (C, k) each
    fitted = marginals[0][:, :, None, None] + marginals[1][:, None, :, None] + marginals[2][:, None, None, :]
    dof = n_c * (n_f * n_p * n_s - n_f - n_p - n_s + 2)
    noise = float(((centred - fitted) ** 2).sum() / dof) if dof > 0 else 0.0
    out = {"mean": float(means.mean())}
    for name, marginal, k in zip(AXES[1:], marginals, (n_f, n_p, n_s)):
        if k < 2:
            out[name] = 0.0
            continue
        spread = float((marginal**2).sum() / (n_c * (k - 1)))
        out[name] = max(0.0, spread - noise * k / (n_f * n_p * n_s))
    within = out["finetune_seeds"] / n_f + out["prompts"] / n_p + out["seeds"] / n_s + noise / (n_f * n_p * n_s)
    out["subjects"] = max(0.0, float(means.var(ddof=1)) - within) if n_c > 1 else 0.0
    out["noise"] = noise
    return out


def projected_half_width(
    pilot: np.ndarray | dict[str, float],
    counts: tuple[int, int, int, int],
    n_boot: int = 1000,
    runs: int = 20,
    seed: int = 0,
) -> float:
    """The mean half-width of the tables' 95 % bootstrap CI over ``runs`` simulated runs of
    ``counts`` (subjects, LoRA seeds, prompts, seeds), drawn from the pilot's components (normal
    effects): a pilot ``cube``'s fitted ones, or stated ones (`components`' keys) — how a run is
    sized before its pilot's scores are at hand, from the numbers an earlier report kept."""
    from wig.evaluation.metrics import _bootstrap

    comp = components(pilot) if isinstance(pilot, np.ndarray) else _checked_components(pilot)
    rng = np.random.default_rng(seed)
    k_c, k_f, k_p, k_s = counts
    widths = []
    for _ in range(runs):
        sim = rng.normal(comp["mean"], np.sqrt(comp["subjects"]), size=(k_c, 1, 1, 1))
        for axis, (name, k) in enumerate(zip(AXES[1:], (k_f, k_p, k_s))):
            shape = [k_c, 1, 1, 1]
            shape[axis + 1] = k
            sim = sim + rng.normal(0.0, np.sqrt(comp[name]), size=shape)
        sim = sim + rng.normal(0.0, np.sqrt(comp["noise"]), size=(k_c, k_f, k_p, k_s))
        lo, hi = _bootstrap(sim, n_boot, rng)
        widths.append((hi - lo) / 2)
    return float(np.mean(widths))


def _checked_components(comp: dict[str, float]) -> dict[str, float]:
    needed = {"mean", "subjects", *AXES[1:], "noise"}
    missing, unknown = needed - set(comp), set(comp) - needed
    if missing or unknown:
        raise WigError(
            f"variance components: missing {sorted(missing)}, unknown {sorted(unknown)}; give {sorted(needed)}"
        )
    negative = [k for k, v in comp.items() if k != "mean" and v < 0]
    if negative:
        raise WigError(f"variance components cannot be negative: {negative}")
    return comp


def plan(
    cube: np.ndarray,
    target: float = 0.01,
    grow: str = "seeds",
    limit: int = 4096,
    n_boot: int = 1000,
    runs: int = 20,
    seed: int = 0,
    start: tuple[int, int, int] | None = None,
) -> pl.DataFrame:
    """The projected half-width of a design — ``start`` (subjects, LoRA seeds, prompts; default
    the pilot's) with the pilot's seeds —, then grown along ``grow`` (one of `AXES`), doubling its
    count until the half-width is ≤ ``target`` or the count passes ``limit``; one row per design
    tried, ``enough`` where the target holds."""
    if grow not in AXES:
        raise WigError(f"grow: one of {', '.join(AXES)}, got {grow!r}")
    rows, counts = [], [*(start or cube.shape[:3]), cube.shape[3]]
    axis = AXES.index(grow)
    while True:
        width = projected_half_width(cube, tuple(counts), n_boot=n_boot, runs=runs, seed=seed)
        rows.append(dict(zip(AXES, counts)) | {"half_width": width, "enough": width <= target})
        if width <= target or counts[axis] * 2 > limit:
            break
        counts[axis] *= 2
    return pl.DataFrame(rows)
