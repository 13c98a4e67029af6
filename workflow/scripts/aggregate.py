"""Tables of one model: per-image scores, metrics with CIs, paired comparisons, subject fidelity at
matched text fidelity, and in the synthetic world how well the embedding metrics track the oracle
(rule aggregate)."""

from pathlib import Path

import polars as pl

from wig.atomic import replace_file, tmp_path
from wig.evaluation.markdown import (
    agreement_markdown,
    matched_markdown,
    metrics_markdown,
    paired_markdown,
)
from wig.evaluation.metrics import aggregate, at_matched_text, metric_agreement, paired_vs_cfg
from wig.workflow.jobs import job


def write(frame: pl.DataFrame, path: str, markdown: str) -> None:
    """Parquet and CSV as computed; Markdown as the paper prints it (`wig.evaluation.markdown`)."""
    tmp = tmp_path(path)
    suffix = Path(path).suffix
    if suffix == ".parquet":
        frame.write_parquet(tmp)
    elif suffix == ".csv":
        frame.write_csv(tmp)
    else:
        tmp.write_text(markdown)
    replace_file(tmp, path)


with job(snakemake, torch=False) as log:
    o, p = snakemake.output, snakemake.params
    scores = pl.concat([pl.read_parquet(f) for f in snakemake.input])
    table = aggregate(scores, n_boot=p.n_boot, seed=p.seed)
    paired = paired_vs_cfg(scores, n_boot=p.n_boot, seed=p.seed)
    matched = at_matched_text(table)
    agreement = metric_agreement(scores, table)
    for frame, paths, markdown in (
        (scores, [o.scores], ""),
        (table, [o.table, o.csv, o.md], metrics_markdown(table)),
        (paired, [o.paired, o.paired_csv, o.paired_md], paired_markdown(paired)),
        (matched, [o.matched, o.matched_md], matched_markdown(matched, table)),
        (agreement, [o.agreement, o.agreement_md], agreement_markdown(agreement)),
    ):
        for path in paths:
            write(frame, path, markdown)
    log.info("%d images, %d table rows", len(scores), len(table))
