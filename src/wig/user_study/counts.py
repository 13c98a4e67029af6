"""The votes as arrays, for Table 3's shares (`wig.user_study.analysis`) and the method strengths
(`wig.user_study.strengths`): the answers that count, each (entry, question) as a rater × set ×
option indicator array, and the crossed bootstrap's weights (raters and sets resampled
independently, with replacement)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import polars as pl


def counted(votes: pl.DataFrame) -> pl.DataFrame:
    """The answers the tables count: first showings of the compared sets (no repeat, no gold set)."""
    return votes.filter(~pl.col("attention") & ~pl.col("gold"))


def choice_counts(part: pl.DataFrame, options: Sequence[str]) -> tuple[list, list, np.ndarray]:
    """``part``'s raters, sets and ``counts[r, s, m]`` = 1 where rater r chose option m in set s."""
    raters = sorted(set(part["rater"].to_list()))
    sets = sorted(set(part["set"].to_list()))
    counts = np.zeros((len(raters), len(sets), len(options)))
    r_at, s_at, m_at = ({v: i for i, v in enumerate(x)} for x in (raters, sets, options))
    for r, s, m in part.select("rater", "set", "method").iter_rows():
        counts[r_at[r], s_at[s], m_at[m]] = 1
    return raters, sets, counts


def crossed_weights(n_raters: int, n_sets: int, n_boot: int, rng: np.random.Generator):
    """Per replicate, how often each rater and each set is drawn: (n_boot, raters), (n_boot, sets)."""
    w_raters = rng.multinomial(n_raters, np.full(n_raters, 1 / n_raters), size=n_boot).astype(float)
    w_sets = rng.multinomial(n_sets, np.full(n_sets, 1 / n_sets), size=n_boot).astype(float)
    return w_raters, w_sets
