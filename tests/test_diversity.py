"""Diversity: the mean pairwise DINO distance among the images of one prompt and grid point across
seeds, scored per image so the table's cell is that mean; opt-in, and refused where a job holds one
seed per prompt."""

import itertools

import numpy as np
import polars as pl
import pytest

from wig.evaluation.metrics import aggregate, enabled_metrics, metric_value, score_job
from wig.evaluation.plugins.diversity import mean_pairwise_distance
from wig.workflow.study import Study, StudyError

from test_metric_registry import ENCODER, _job
from test_study import _config

pytestmark = pytest.mark.check


def _pairwise(x: np.ndarray) -> float:
    """Mean over unordered pairs of 1 − cosine, written out pair by pair."""
    pairs = list(itertools.combinations(range(len(x)), 2))
    return float(np.mean([1 - x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j]) for i, j in pairs]))


def test_each_images_score_averages_to_the_groups_mean_pairwise_distance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5))
    groups = np.array([0, 0, 0, 1, 1, 2, 0])
    got = mean_pairwise_distance(x, groups)
    for g in (0, 1):
        np.testing.assert_allclose(got[groups == g].mean(), _pairwise(x[groups == g]), rtol=1e-12)
    assert np.isnan(got[groups == 2]).all()  # alone at its prompt: no pair to measure
    same = mean_pairwise_distance(np.ones((3, 4)), np.zeros(3, dtype=int))
    np.testing.assert_allclose(same, 0.0, atol=1e-12)  # identical images: no diversity


def test_a_job_scores_diversity_per_prompt_and_point_in_each_protocol(tmp_path):
    samples, manifest, files = _job(tmp_path, np.random.default_rng(1))
    scores = score_job(
        samples, "c", files, {"dino": ENCODER}, tmp_path / "s.parquet", metrics=["dino", "dino_diversity"]
    )
    emb = pl.read_parquet(files["dino"])
    for protocol in ("dreammatcher", "standard"):
        rows = scores.filter(pl.col("protocol") == protocol).join(
            emb.filter(pl.col("protocol") == protocol).select("path", "embedding"), on="path"
        )
        for (point, prompt), group in rows.group_by("method", "prompt_index"):
            x = np.stack(group["embedding"].to_numpy()).astype(np.float64)
            np.testing.assert_allclose(
                group["dino_diversity"].to_numpy(), _pairwise(x), rtol=1e-6
            )  # two seeds: one pair
    table = aggregate(scores.with_columns(finetune_seed=pl.lit(0)), n_boot=50)
    assert {"dino_diversity", "dino_diversity_lo", "dino_diversity_hi"} <= set(table.columns)
    standard_cfg = scores.filter((pl.col("protocol") == "standard") & (pl.col("method") == "cfg"))
    cell = table.filter((pl.col("protocol") == "standard") & (pl.col("method") == "cfg"))["dino_diversity"].item()
    assert cell == pytest.approx(metric_value(standard_cfg.with_columns(finetune_seed=pl.lit(0)), "dino_diversity"))


def test_diversity_is_opt_in_and_needs_two_seeds_per_job():
    assert "dino_diversity" not in enabled_metrics({"dino": {}}, render=False)
    config = _config(evaluation__metrics=["dino", "clip_t", "dino_diversity"])
    assert "dino_diversity" in Study.from_config(config).metrics
    one = _config(evaluation__metrics=["dino", "clip_t", "dino_diversity"], sampling__seeds_per_job=1)
    with pytest.raises(StudyError, match=r"evaluation.metrics: dino_diversity compares the seeds of a generation job"):
        Study.from_config(one)
