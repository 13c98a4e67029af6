"""Metrics are a registry: a metric defined in a test is scored from the embedding files, gets
its column, table rows with CIs and paired differences, without a shipped file changing; a study
scores what its config enables."""

import numpy as np
import polars as pl
import pytest

from wig.errors import WigError
from wig.evaluation.base import Metric, register_metric
from wig.evaluation.embeddings import image_schema
from wig.evaluation.metrics import (
    REGISTRY,
    aggregate,
    enabled_metrics,
    metrics_of,
    paired_vs_cfg,
    score_job,
)
from wig.guidance import Guidance, point_columns

pytestmark = pytest.mark.check

ENCODER = "dino-tiny:s0"


def _max_cosine(generated, references):
    """The toy: each image's best-matching reference, not the mean over them."""
    g = generated / np.linalg.norm(generated, axis=1, keepdims=True)
    r = references / np.linalg.norm(references, axis=1, keepdims=True)
    return (g @ r.T).max(axis=1)


@pytest.fixture
def toy_metric():
    metric = register_metric(Metric("toy_max_dino", "max DINO", "subject", "references", _max_cosine, encoder="dino"))
    yield metric
    REGISTRY.pop(metric.name)


def _job(tmp_path, rng):
    """A sample set of two points × 2 prompts × 2 seeds, with DINO embeddings of its images and of
    three references (two protocols)."""
    samples = tmp_path / "samples"
    samples.mkdir()
    rows = []
    for guidance in (Guidance("cfg", 7.5), Guidance("pg", 7.5, omega=0.0)):
        for p in range(2):
            for s in range(2):
                path = f"{guidance.key}/s{s}_p{p:02d}.png"
                rows.append(
                    {
                        "path": path,
                        "prompt_index": p,
                        "prompt": f"p{p}",
                        "seed": s,
                        "sha256": path,
                        **point_columns(guidance),
                    }
                )
    manifest = pl.DataFrame(rows)
    manifest.write_parquet(samples / "manifest.parquet")

    def embeddings(paths, name):
        frame = pl.DataFrame(
            [
                {
                    "path": p,
                    "sha256": p,
                    "encoder": ENCODER,
                    "protocol": protocol,
                    "embedding": rng.normal(size=8).astype(np.float32),
                }
                for protocol in ("dreammatcher", "standard")
                for p in paths
            ],
            schema=image_schema(8),
        )
        frame.write_parquet(tmp_path / name)
        return tmp_path / name

    files = {
        "dino": embeddings(manifest["path"].to_list(), "dino.parquet"),
        "dino_refs": embeddings(["r0.png", "r1.png", "r2.png"], "refs.parquet"),
    }
    return samples, manifest, files


def test_a_metric_defined_in_a_test_is_scored_and_tabled(toy_metric, tmp_path):
    rng = np.random.default_rng(0)
    samples, manifest, files = _job(tmp_path, rng)
    scores = score_job(
        samples, "c", files, {"dino": ENCODER}, tmp_path / "scores.parquet", metrics=["dino", "toy_max_dino"]
    )
    assert metrics_of(scores) == ("dino", "toy_max_dino") and len(scores) == 8 * 2
    emb = pl.read_parquet(files["dino"]).filter(pl.col("protocol") == "standard")
    refs = np.stack(
        pl.read_parquet(files["dino_refs"]).filter(pl.col("protocol") == "standard")["embedding"].to_numpy()
    )
    got = scores.filter(pl.col("protocol") == "standard").join(emb.select("path", "embedding"), on="path")
    expected = _max_cosine(np.stack(got["embedding"].to_numpy()).astype(np.float64), refs.astype(np.float64))
    np.testing.assert_allclose(got["toy_max_dino"].to_numpy(), expected, rtol=0, atol=1e-6)
    assert (got["toy_max_dino"] >= got["dino"] - 1e-9).all()  # the best reference beats the mean
    table = aggregate(scores.with_columns(finetune_seed=pl.lit(0)), n_boot=100)
    assert {"toy_max_dino", "toy_max_dino_lo", "toy_max_dino_hi"} <= set(table.columns) and len(table) == 4
    paired = paired_vs_cfg(scores.with_columns(finetune_seed=pl.lit(0)), n_boot=100)
    assert "d_toy_max_dino" in paired.columns and paired["method"].unique().to_list() == ["pg"]


def test_a_study_scores_what_its_config_enables(toy_metric):
    assert enabled_metrics({"dino": {}}, render=False) == ["dino", "toy_max_dino"]
    assert enabled_metrics({}, render=True) == ["oracle_text", "oracle_subject"]
    with pytest.raises(WigError, match=r"metrics \['nope'\]"):
        score_job("unused", "c", {}, {}, "unused.parquet", metrics=["nope"])
