"""The Markdown tables read like the paper's (wig.evaluation.markdown): a hand-made scores table
over cfg, pg and sag through the study's own table functions."""

import numpy as np
import polars as pl
import pytest

from wig.evaluation.markdown import (
    agreement_markdown,
    finetunes_markdown,
    matched_markdown,
    metrics_markdown,
    paired_markdown,
    results_markdown,
)
from wig.evaluation.metrics import aggregate, at_matched_text, metric_agreement, paired_vs_cfg
from wig.guidance import columns

from conftest import point_row

pytestmark = pytest.mark.check

POINTS = [
    ("cfg", {"scale": 3.0}),
    ("cfg", {"scale": 7.5}),
    ("pg", {"scale": 3.0, "omega": 0.0}),
    ("pg", {"scale": 7.5, "omega": 0.0}),
    ("sag", {"scale": 7.5, "omega": 1.0, "subject_weight": 0.5}),
]


def _scores(protocols=("dreammatcher", "standard"), concepts=("dog", "cat"), seeds=(0, 1), prompts=(0, 1)):
    rng = np.random.default_rng(0)
    rows = []
    for method, values in POINTS:
        for concept in concepts:
            for prompt in prompts:
                for seed in seeds:
                    oracle = float(rng.random())  # a pixel metric: one value per image, whatever the protocol
                    for protocol in protocols:
                        row = {"concept": concept, "path": f"{concept}{prompt}{seed}.png", "prompt_index": prompt}
                        row |= {"seed": seed, **point_row(method, **values), "protocol": protocol}
                        row |= {"finetune_seed": 0, "dino": float(rng.random()), "clip_t": float(rng.random())}
                        rows.append(row | {"oracle_subject": oracle})
    return pl.DataFrame(rows)


def _table(markdown: str) -> tuple[list[str], list[dict[str, str]]]:
    lines = markdown.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert set(lines[1]) <= {"|", "-"}
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]
    return header, rows


def test_a_cfg_row_has_no_pg_or_sag_parameters_and_cis_are_bracketed():
    table = aggregate(_scores(), n_boot=200)
    header, rows = _table(metrics_markdown(table))
    cfg = [r for r in rows if r["method"] == "cfg"]
    assert len(rows) == 5 and len(cfg) == 2  # one row per grid point: the protocols are columns
    own = {"cfg": {"scale"}, "pg": {"scale", "omega"}, "sag": {"scale", "omega", "subject_from", "subject_weight"}}
    for row in rows:
        for name in columns():
            if name in header:
                assert (row[name] != "") == (name in own[row["method"]]), (row["method"], name)
    assert "ag_scale" not in header and "weak" not in header and "image_scale" not in header  # blank everywhere
    for column in header:
        assert any(r[column] for r in rows), column  # no all-blank column
    # embedding metrics per protocol, the pixel metric once; each value with its 95 % CI
    assert "dino (dreammatcher)" in header and "clip_t (standard)" in header and "protocol" not in header
    assert "oracle_subject" in header and not any(h.startswith("oracle_subject (") for h in header)
    assert not any(h.endswith(("_lo", "_hi")) for h in header)
    first = table.filter((pl.col("method") == "cfg") & (pl.col("scale") == 3.0) & (pl.col("protocol") == "standard"))
    value, lo, hi = (first[c].item() for c in ("dino", "dino_lo", "dino_hi"))
    assert cfg[0]["dino (standard)"] == f"{value:.3f} [{lo:.3f}, {hi:.3f}]"
    assert cfg[0]["scale"] == "3"


def test_paired_differences_are_signed_with_their_ci_and_one_protocol_has_no_protocol_column():
    scores = _scores(protocols=("dreammatcher",))
    paired = paired_vs_cfg(scores, n_boot=200)
    header, rows = _table(paired_markdown(paired))
    assert [r["method"] for r in rows] == ["pg", "pg", "sag"] and "protocol" not in header
    assert "d_dino" in header and "d_dino (dreammatcher)" not in header
    assert all(r["d_dino"][0] in "+-" and " [" in r["d_dino"] for r in rows)
    assert rows[0]["cfg_scale"] == "3" and rows[0]["omega"] == "0"
    assert "subject_weight" in header and rows[0]["subject_weight"] == ""  # a pg row: not its parameter


def test_a_single_image_has_no_ci_to_show():
    scores = _scores(protocols=("dreammatcher",), concepts=("dog",), seeds=(0,), prompts=(0,))
    table = aggregate(scores, n_boot=50)
    _, rows = _table(metrics_markdown(table))
    assert all("[" not in r["dino"] for r in rows) and all(r["n_images"] == "1" for r in rows)
    assert table["dino_lo"].to_list() == table["dino"].to_list()  # the Parquet keeps its (degenerate) bounds


def test_empty_tables_say_why_in_one_line():
    scores = _scores(protocols=("dreammatcher",))
    table = aggregate(scores, n_boot=50)
    only_cfg = scores.filter(pl.col("method") == "cfg")
    paired = paired_markdown(paired_vs_cfg(only_cfg, n_boot=50))
    assert paired.count("\n") == 1 and paired.startswith("No grid point besides the CFG baseline")
    # matched text: rows exist in the Parquet, but no λ sweep reaches CFG's text fidelity
    far = table.with_columns(
        pl.when(pl.col("method") == "cfg").then(pl.col("clip_t") + 10.0).otherwise(pl.col("clip_t")).alias("clip_t")
    )
    matched = at_matched_text(far)
    assert len(matched) > 0 and matched["scale"].null_count() == len(matched)
    line = matched_markdown(matched, far)
    assert line.count("\n") == 1 and line.startswith("No method's λ sweep reaches the text fidelity")
    # reached: only the reached comparisons are printed
    reached = at_matched_text(table)
    _, rows = _table(matched_markdown(reached, table))
    assert len(rows) == reached["scale"].is_not_null().sum() and all(r["scale"] for r in rows)
    # a prompt set: no subject fidelity
    text_only = table.drop("dino", "dino_lo", "dino_hi", "oracle_subject", "oracle_subject_lo", "oracle_subject_hi")
    line = matched_markdown(at_matched_text(text_only), text_only)
    assert line.startswith("No reference images (a prompt set)") and line.count("\n") == 1
    # metric agreement without an oracle; one fine-tune
    no_oracle = scores.drop("oracle_subject")
    agreement = agreement_markdown(metric_agreement(no_oracle, aggregate(no_oracle, n_boot=10)))
    assert agreement.startswith("No synthetic-world oracle") and agreement.count("\n") == 1
    one = table.select(pl.lit("tiny-sd").alias("model"), pl.lit("db-lora").alias("finetune"), pl.all())
    assert finetunes_markdown(one) == (
        "One fine-tune (tiny-sd/db-lora): nothing to set side by side; its metrics are "
        "tiny-sd/db-lora/tables/metrics.md in this study's results.\n"
    )
    two = pl.concat([one, one.with_columns(pl.lit("db-lora-ti").alias("finetune"))])
    header, rows = _table(finetunes_markdown(two))
    assert header[:3] == ["model", "finetune", "method"] and len(rows) == 10


@pytest.mark.parametrize("empty", ["", "   "])
def test_an_empty_frame_is_its_reason_alone(empty):
    frame = pl.DataFrame(schema={"method": pl.String, "dino": pl.Float64})
    assert results_markdown(frame, f"Nothing here.{empty}") == "Nothing here.\n"
