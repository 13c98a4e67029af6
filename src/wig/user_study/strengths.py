"""Method strengths from the votes: a Bradley–Terry model with ties (Davidson 1970) for the
study's sets of K images, beside the paper's shares.

A vote picks one of a set's K images or says "undecided". The model gives method i strength
π_i = exp(β_i) (Σ β = 0) and ties a weight ν:

    P(image of i chosen) = π_i / D,   P(undecided) = ν · (Π_j π_j)^(1/K) / D,   D = Σ_j π_j + ν · (Π_j π_j)^(1/K)

— Luce's choice model with Davidson's tie term. For two images it is exactly Davidson's
Bradley–Terry model with ties (a win, a loss or a tie per comparison, the tie weighted by the
geometric mean of the two strengths); for K it keeps each vote one observation, where breaking a
K-way choice into K − 1 pairwise wins would count one look at the screen K − 1 times. P(i beats j
| one of them chosen) = π_i / (π_i + π_j): the win rates the strengths predict.

`fit_strengths` maximises the likelihood of weighted choice counts; `strength_table` adds 95 %
percentile intervals from the bootstrap the shares use (raters and sets resampled independently,
crossed), so strengths and shares carry the same uncertainty.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import polars as pl

from wig.user_study.counts import choice_counts, counted, crossed_weights
from wig.user_study.design import UNDECIDED

TIE = "ties (ν)"  # the strength table's row for Davidson's tie weight


def fit_strengths(counts: np.ndarray) -> tuple[np.ndarray, float]:
    """(β, log ν) maximising the likelihood of ``counts`` — the (weighted) votes for each of K methods,
    then undecided — when every set shows every method once (the study's design). The maximum has a
    closed form: β_i = log n_i − mean_j log n_j, log ν = log n_u − mean_j log n_j; half a vote is
    added to every count (a method never chosen in a bootstrap replicate has a finite strength)."""
    n = np.asarray(counts, dtype=float) + 0.5
    logs = np.log(n)
    centre = logs[..., :-1].mean(axis=-1, keepdims=True)
    return logs[..., :-1] - centre, (logs[..., -1:] - centre)[..., 0]


def probabilities(beta: np.ndarray, log_nu: float) -> np.ndarray:
    """The model's probability of each method's image being chosen, then of undecided (Σ β = 0)."""
    weights = np.append(np.exp(beta), np.exp(log_nu))
    return weights / weights.sum()


def strength_table(
    votes: pl.DataFrame, labels: Mapping[str, Sequence[str]], n_boot: int = 2000, seed: int = 0
) -> pl.DataFrame:
    """Per entry × question × method (and the tie weight): β (log strength, Σ β = 0 over the entry's
    methods) with its 95 % percentile interval from a bootstrap over raters and sets crossed, and the
    votes it rests on. ``votes``: the kept raters' answers; repeats are not counted twice."""
    rows = []
    rng = np.random.default_rng(seed)
    answers = counted(votes)
    for entry, methods in labels.items():
        options = [*methods, UNDECIDED]
        for question in ("subject", "text"):
            part = answers.filter((pl.col("entry") == entry) & (pl.col("question") == question))
            raters, sets, counts = choice_counts(part, options)
            total = counts.sum(axis=(0, 1))
            beta, log_nu = fit_strengths(total)
            if raters:
                w_r, w_s = crossed_weights(len(raters), len(sets), n_boot, rng)
                boot_beta, boot_nu = fit_strengths(np.einsum("br,bs,rsm->bm", w_r, w_s, counts))
                lo = np.quantile(np.column_stack([boot_beta, boot_nu]), 0.025, axis=0, method="inverted_cdf")
                hi = np.quantile(np.column_stack([boot_beta, boot_nu]), 0.975, axis=0, method="inverted_cdf")
            else:
                lo = hi = np.full(len(options), np.nan)
            for i, name in enumerate([*methods, TIE]):
                rows.append(
                    {
                        "entry": entry,
                        "question": question,
                        "method": name,
                        "strength": float(beta[i] if i < len(methods) else log_nu),
                        "lo": float(lo[i]),
                        "hi": float(hi[i]),
                        "votes": int(total[i]),
                        "raters": len(raters),
                        "sets": len(sets),
                    }
                )
    return pl.DataFrame(
        rows,
        schema={
            "entry": pl.String,
            "question": pl.String,
            "method": pl.String,
            "strength": pl.Float64,
            "lo": pl.Float64,
            "hi": pl.Float64,
            "votes": pl.Int64,
            "raters": pl.Int64,
            "sets": pl.Int64,
        },
    )


def strength_figure(strengths: pl.DataFrame, study, out) -> None:
    """Per entry and question, each method's strength β with its 95 % interval (points, bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = list(study.data["entries"].items())
    fig, axes = plt.subplots(len(entries), 2, figsize=(9, 2.6 * len(entries)), squeeze=False, layout="constrained")
    for row, (entry, labels) in enumerate(entries):
        for col, question in enumerate(("subject", "text")):
            ax = axes[row][col]
            part = strengths.filter((pl.col("entry") == entry) & (pl.col("question") == question))
            values = [part.filter(pl.col("method") == m).row(0, named=True) for m in labels]
            beta = np.array([v["strength"] for v in values])
            err = np.array([[v["strength"] - v["lo"], v["hi"] - v["strength"]] for v in values]).T
            ax.errorbar(range(len(labels)), beta, yerr=np.nan_to_num(err), fmt="o", capsize=4, color="#4c72b0")
            ax.axhline(0, color="0.6", lw=0.8)
            ax.set_xticks(range(len(labels)), labels, rotation=20)
            ax.set_title(f"{entry}: {question} fidelity", fontsize=10)
            if col == 0:
                ax.set_ylabel("strength β (log scale, Σβ = 0)")
    fig.savefig(out, dpi=120, format="png")
    plt.close(fig)
