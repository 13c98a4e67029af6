"""Per-image scores of one generation job, one column per enabled metric (rule score)."""

from wig.evaluation.metrics import score_job
from wig.workflow.jobs import job

with job(snakemake, torch=False) as log:
    i, w = snakemake.input, snakemake.wildcards
    files = {k: i[k] for k in i.keys() if k != "samples"}
    scores = score_job(
        i.samples,
        w.concept,
        files,
        snakemake.params.encoders,
        snakemake.output[0],
        metrics=snakemake.params.metrics,
        finetune_seed=int(w.fseed),
    )
    log.info("%d scores", len(scores))
