"""Every (model, fine-tune)'s metrics table in one, grouped by the settings that tell the fine-tunes
apart — the ablation studies' table (rule finetune_table)."""

import polars as pl

from wig.atomic import replace_file, tmp_path
from wig.evaluation.markdown import finetunes_markdown
from wig.evaluation.metrics import finetune_table
from wig.workflow.jobs import job

with job(snakemake, torch=False) as log:
    p, o = snakemake.params, snakemake.output
    keys = [tuple(pair) for pair in p.finetunes]
    tables = {key: pl.read_parquet(path) for key, path in zip(keys, snakemake.input)}
    table = finetune_table(tables, {key: p.settings[f"{key[0]}/{key[1]}"] for key in keys}, p.families)
    for path, write in ((o.table, table.write_parquet), (o.csv, table.write_csv)):
        write(tmp_path(path))
        replace_file(tmp_path(path), path)
    tmp_path(o.md).write_text(finetunes_markdown(table))
    replace_file(tmp_path(o.md), o.md)
    log.info("%d fine-tunes, %d rows", len(keys), len(table))
