"""The synthetic base's oracle accuracy under CFG at the grid's scales (rule base_accuracy)."""

from wig.atomic import replace_file, tmp_path
from wig.evaluation.metrics import to_markdown
from wig.models.pipelines import load_pipeline
from wig.synthetic.base_accuracy import base_accuracy
from wig.workflow.jobs import job, local_weights

with job(snakemake) as log:
    p, o = snakemake.params, snakemake.output
    pipe = load_pipeline(local_weights(snakemake, p.model), device=p.runtime["device"], dtype=p.runtime["dtype"])
    table = base_accuracy(pipe, p.scales, **p.settings)
    log.info("\n%s", to_markdown(table, digits=3))
    table.write_parquet(tmp_path(o.table))
    tmp_path(o.md).write_text(to_markdown(table, digits=3))
    for path in (o.table, o.md):
        replace_file(tmp_path(path), path)
