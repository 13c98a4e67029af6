"""Metrics: exact against hand-computed references; tables, CIs and paired comparisons."""

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from wig.errors import WigError
from wig.evaluation.base import subject_fidelity, text_fidelity
from wig.evaluation.metrics import (
    _bootstrap,
    _cube,
    aggregate,
    at_matched_text,
    paired_vs_cfg,
    point_keys,
    reference_points,
    to_markdown,
)
from wig.evaluation.plots import pareto_front

from conftest import point_row

pytestmark = pytest.mark.check

METRICS = ("dino", "clip_i", "clip_t")  # the encoder metrics of wig.evaluation.metrics.REGISTRY


def _hand_cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)


def test_fidelities_equal_a_hand_computed_all_pairs_mean():
    rng = np.random.default_rng(0)
    refs, gens, texts = rng.normal(size=(4, 7)), rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
    expected = [sum(_hand_cos(g, r) for r in refs) / len(refs) for g in gens]
    np.testing.assert_allclose(subject_fidelity(refs, gens), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(text_fidelity(gens, texts), [_hand_cos(g, t) for g, t in zip(gens, texts)], atol=1e-12)
    # a prompt's score (mean over its images) is DreamMatcher's mean of the refs × images cosine matrix
    all_pairs = np.mean([[_hand_cos(r, g) for g in gens] for r in refs])
    assert abs(subject_fidelity(refs, gens).mean() - all_pairs) < 1e-12
    assert np.allclose(subject_fidelity(gens[:1], gens[:1]), 1.0)


def _scores(seed=0, concepts=("a", "b", "c"), prompts=4, seeds=(0, 1), finetune_seeds=(0,)):
    rng = np.random.default_rng(seed)
    points = [("cfg", 1.0, 7.5), ("pg", 0.0, 7.5), ("pg", 0.5, 7.5), ("cfgpp", 1.0, 0.6)]
    rows = []
    for method, omega, scale in points:
        for c in concepts:
            for p in range(prompts):
                for ls in finetune_seeds:
                    for s in seeds:
                        rows.append(
                            {
                                "concept": c,
                                "finetune_seed": ls,
                                "prompt_index": p,
                                "seed": s,
                                **point_row(method, omega=omega, scale=scale),
                                "protocol": "dreammatcher",
                                **{m: float(rng.normal()) for m in METRICS},
                            }
                        )
    return pl.DataFrame(rows)


def test_aggregate_equals_the_mean_of_per_image_scores():
    scores = _scores()
    table = aggregate(scores, n_boot=200)
    assert len(table) == 4 and (table["n_images"] == 24).all() and (table["n_concepts"] == 3).all()
    for row in table.iter_rows(named=True):
        mine = scores.filter(pl.all_horizontal([pl.col(k) == row[k] for k in point_keys()]))
        for metric in METRICS:
            assert abs(row[metric] - mine[metric].mean()) < 1e-12  # balanced design: plain mean
            assert row[f"{metric}_lo"] < row[metric] < row[f"{metric}_hi"]


def test_aggregate_is_mean_over_concepts_of_mean_over_prompts_when_unbalanced():
    scores = _scores().filter(~((pl.col("concept") == "c") & (pl.col("prompt_index") >= 2)))
    row = aggregate(scores, n_boot=100).filter((pl.col("method") == "cfg")).row(0, named=True)
    frame = scores.filter(pl.col("method") == "cfg")
    per_concept = [
        frame.filter(pl.col("concept") == c).group_by("prompt_index").agg(pl.col("dino").mean())["dino"].mean()
        for c in ("a", "b", "c")
    ]
    assert abs(row["dino"] - np.mean(per_concept)) < 1e-12


def test_bootstrap_resamples_subjects_then_lora_seeds_prompts_and_sampling_seeds():
    # cubes are (concepts, fine-tune seeds, prompts, sampling seeds)
    assert _bootstrap(np.full((1, 2, 5, 2), 0.3), 200, np.random.default_rng(0)) == pytest.approx((0.3, 0.3))
    # two concepts far apart: the CI spans both
    lo, hi = _bootstrap(np.stack([np.zeros((1, 5, 1)), np.ones((1, 5, 1))]), 2000, np.random.default_rng(0))
    assert lo == 0.0 and hi == 1.0
    ragged = np.array([[[[1.0], [3.0], [np.nan]]], [[[2.0], [2.0], [2.0]]]])  # concept 0 has 2 prompts
    lo, hi = _bootstrap(ragged, 2000, np.random.default_rng(1))
    assert 1.0 <= lo <= hi <= 3.0 and not np.isnan([lo, hi]).any()
    # each axis alone carries the spread when the others are constant: LoRA seeds, prompts, seeds
    for axis in (1, 2, 3):
        shape = [1, 1, 1, 1]
        shape[axis] = 4
        cube = np.array([0.0, 0.0, 1.0, 1.0]).reshape(shape)
        lo, hi = _bootstrap(cube, 4000, np.random.default_rng(2))
        assert lo == pytest.approx(0.0) and hi == pytest.approx(1.0), axis
    # resampled among a concept's own: a concept with one LoRA seed never draws the padding
    padded = np.full((2, 2, 1, 1), np.nan)
    padded[0, :, 0, 0] = [0.0, 1.0]
    padded[1, 0, 0, 0] = 0.5
    lo, hi = _bootstrap(padded, 2000, np.random.default_rng(3))
    assert 0.0 <= lo < hi <= 1.0
    frame = pl.DataFrame(
        {
            "concept": ["x"] * 8,
            "prompt_index": [1, 0, 0, 1, 1, 0, 0, 1],
            "finetune_seed": [0, 1, 0, 1, 0, 1, 0, 1],
            "seed": [5, 5, 5, 5, 6, 6, 6, 6],
            "v": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
        }
    )
    # fine-tune seeds × prompts × seeds
    assert _cube(frame, "v").tolist() == [[[[3.0, 7.0], [1.0, 5.0]], [[2.0, 6.0], [4.0, 8.0]]]]
    with pytest.raises(WigError, match="every prompt needs every"):
        _cube(frame.head(7), "v")
    with pytest.raises(WigError, match="every prompt needs every"):  # right count, one image twice
        _cube(frame.with_columns(pl.Series("seed", [5, 5, 5, 5, 6, 6, 6, 5])).head(8), "v")


def test_cis_are_over_finetune_seeds_too():
    # two LoRA seeds whose scores differ by a constant: the CI must widen with that spread
    one = _scores(finetune_seeds=(0,))

    def cfg_row(shift):
        two = pl.concat(
            [one, one.with_columns(pl.lit(1, dtype=pl.Int64).alias("finetune_seed"), pl.col("dino") + shift)]
        )
        return aggregate(two, n_boot=1000).filter(pl.col("method") == "cfg").row(0, named=True)

    same, apart = cfg_row(0.0), cfg_row(2.0)
    assert apart["n_finetune_seeds"] == 2 and apart["dino"] == pytest.approx(same["dino"] + 1.0)
    assert apart["dino_hi"] - apart["dino_lo"] > same["dino_hi"] - same["dino_lo"] + 0.5


def test_paired_comparison_against_cfg_on_the_same_noise():
    scores = _scores(seed=1)
    # make pg ω=0 exactly cfg + 0.1 in DINO
    cfg = scores.filter(pl.col("method") == "cfg")
    shifted = cfg.with_columns(pl.lit("pg").alias("method"), pl.lit(0.0).alias("omega"), pl.col("dino") + 0.1)
    scores = pl.concat([scores.filter(~((pl.col("method") == "pg") & (pl.col("omega") == 0.0))), shifted])
    paired = paired_vs_cfg(scores, n_boot=200)
    row = paired.filter((pl.col("method") == "pg") & (pl.col("omega") == 0.0)).row(0, named=True)
    assert row["d_dino"] == pytest.approx(0.1) and row["d_dino_lo"] == pytest.approx(0.1)
    assert set(paired["method"]) == {"pg", "cfgpp"}  # every point but the reference itself
    assert paired.filter(pl.col("method") == "cfgpp")["cfg_scale"].to_list() == [7.5]  # no cfg at 0.6: the first


def test_paired_needs_a_cfg_point():
    with pytest.raises(WigError, match="need a baseline point in the guidance grid: a cfg point"):
        point = point_row("pg", omega=0.0, scale=7.5)
        reference_points(pl.DataFrame({k: [point[k]] for k in point_keys()}))


def test_tables_read_back_with_polars_and_pyarrow(tmp_path):
    table = aggregate(_scores(), n_boot=100)
    table.write_parquet(tmp_path / "t.parquet")
    assert pl.read_parquet(tmp_path / "t.parquet").equals(table)
    arrow = pq.read_table(tmp_path / "t.parquet")
    assert arrow.schema.names == table.columns and arrow.num_rows == len(table)
    md = to_markdown(table)
    assert md.count("\n") == len(table) + 2 and md.startswith("| protocol | method |")


def test_pareto_front():
    points = [(0.1, 0.9), (0.5, 0.5), (0.4, 0.4), (0.9, 0.1), (0.5, 0.5)]
    assert pareto_front(points) == [0, 1, 4, 3]


def test_figures_are_written_as_png_and_svg(tmp_path):
    from wig.evaluation import plots

    table = aggregate(_scores(), n_boot=100)
    figures = {
        "omega": plots.omega_ablation,
        "lambda": plots.lambda_ablation,
        "pareto": plots.pareto,
        "fronts": plots.method_fronts,
    }
    for name, draw in figures.items():
        draw({"m1": table, "m2": table}, tmp_path / name)
        assert (tmp_path / f"{name}.png").stat().st_size > 1000 and (tmp_path / f"{name}.svg").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.{e}" for n in figures for e in ("png", "svg"))


def test_each_methods_front_is_drawn_with_its_points_confidence_intervals(tmp_path, monkeypatch):
    from matplotlib.container import ErrorbarContainer

    from wig.evaluation import plots

    table = aggregate(_scores(), n_boot=100)
    saved = []
    monkeypatch.setattr(plots, "_save", lambda fig, out: saved.append(fig))
    plots.method_fronts({"m1": table}, tmp_path / "fronts")
    (ax,) = saved[0].axes
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    t = table.filter(pl.col("protocol") == table["protocol"][0])
    methods = t["method"].unique(maintain_order=True).to_list()
    assert [c.get_label().split(" (")[0] for c in bars] == methods
    for container, method in zip(bars, methods):
        rows = t.filter(pl.col("method") == method)
        x, y = container.lines[0].get_data()
        np.testing.assert_allclose(x, rows["clip_t"])
        np.testing.assert_allclose(y, rows["dino"])
        # the vertical bars run from each point's dino_lo to dino_hi
        segments = container.lines[2][1].get_segments()
        np.testing.assert_allclose([seg[0][1] for seg in segments], rows["dino_lo"])
        np.testing.assert_allclose([seg[1][1] for seg in segments], rows["dino_hi"])


def test_matched_text_fidelity_interpolates_along_lambda():
    rows = []
    for method, omega, points in (
        ("cfg", 1.0, [(1.0, 0.9, 0.5), (3.0, 0.8, 0.6)]),
        ("pg", 0.0, [(1.0, 0.95, 0.55), (3.0, 0.75, 0.75)]),
    ):
        for scale, text, subject in points:
            rows.append(
                {
                    "protocol": "oracle",
                    **point_row(method, omega=omega, scale=scale),
                    "oracle_text": text,
                    "oracle_subject": subject,
                }
            )
    matched = at_matched_text(pl.DataFrame(rows))
    # CFG λ=1 has text 0.9: PG reaches it a quarter of the way from λ 1 to 3 (0.95 → 0.75)
    first = matched.row(0, named=True)
    assert first["cfg_scale"] == 1.0 and first["scale"] == pytest.approx(1.5)
    assert first["oracle_subject"] == pytest.approx(0.6) and first["d_oracle_subject"] == pytest.approx(0.1)
    second = matched.row(1, named=True)  # text 0.8: three quarters → subject 0.7 against CFG's 0.6
    assert second["scale"] == pytest.approx(2.5) and second["d_oracle_subject"] == pytest.approx(0.1)
    out_of_reach = at_matched_text(
        pl.DataFrame(rows).with_columns(
            pl.when(pl.col("method") == "pg")
            .then(pl.col("oracle_text") - 0.5)
            .otherwise(pl.col("oracle_text"))
            .alias("oracle_text")
        )
    )
    assert out_of_reach["scale"].null_count() == 2


def test_a_prompt_sets_tables_and_figures_are_text_fidelity_alone(tmp_path, monkeypatch):
    """No subject metric (a prompt set): the table and paired rows as usual, the matched-text table
    keeps its columns with no rows, the ablations draw one panel, the Pareto figure says why it
    is empty; a table without even a text metric is refused."""
    from wig.evaluation import plots

    scores = _scores().drop("dino", "clip_i")
    table = aggregate(scores, n_boot=100)
    assert "clip_t" in table.columns and "dino" not in table.columns
    assert not paired_vs_cfg(scores, n_boot=100).is_empty()
    matched = at_matched_text(table)
    assert matched.is_empty() and {"protocol", "method", "omega", "cfg_scale", "clip_t"} <= set(matched.columns)
    panels, subplots = [], plots.plt.subplots
    monkeypatch.setattr(plots.plt, "subplots", lambda *a, **k: panels.append(a[:2]) or subplots(*a, **k))
    for name, draw in (
        ("omega", plots.omega_ablation),
        ("lambda", plots.lambda_ablation),
        ("pareto", plots.pareto),
        ("fronts", plots.method_fronts),
    ):
        draw({"m1": table}, tmp_path / name)
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    assert panels[:2] == [(1, 1), (1, 1)]  # one panel each: text fidelity
    with pytest.raises(WigError, match="no text fidelity metric"):
        at_matched_text(aggregate(_scores().drop("clip_t"), n_boot=100))


def test_the_finetune_table_groups_every_finetunes_rows_by_the_settings_that_differ():
    from wig.evaluation.metrics import finetune_table
    from wig.personalization import make

    table = aggregate(_scores(), n_boot=100)
    settings = {("sd15", f"rank{r}"): make("db-lora", rank=r).settings() for r in (16, 8)}
    settings[("sd21", "rank8")] = make("db-lora", rank=8, resolution=768).settings()
    combined = finetune_table({key: table for key in settings}, settings)
    assert combined.columns[:4] == ["model", "finetune_resolution", "finetune_rank", "finetune"]
    assert combined.select("model", "finetune_rank", "finetune").unique(maintain_order=True).rows() == [
        ("sd15", 8, "rank8"),
        ("sd15", 16, "rank16"),
        ("sd21", 8, "rank8"),
    ]
    assert len(combined) == 3 * len(table) and "finetune_lr" not in combined.columns  # equal everywhere
    one = combined.filter((pl.col("finetune") == "rank16") & (pl.col("method") == "pg"))
    assert (
        one.drop("model", "finetune_resolution", "finetune_rank", "finetune")
        .sort("omega")
        .equals(table.filter(pl.col("method") == "pg").sort("omega"))
    )
