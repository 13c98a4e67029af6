"""Fetch a given fine-tune's weights into the local hub cache (or take a local path as it is),
check them against the base model, and record where they are (rule resolve_finetune)."""

from wig.workflow.jobs import job, local_weights
from wig.workflow.weights import check_finetune, resolve_finetune, write_record

with job(snakemake, torch=False) as log:
    record = resolve_finetune(snakemake.params.spec)
    base = local_weights(snakemake, snakemake.params.model)
    check_finetune(snakemake.params.spec, record["path"], base)
    write_record(record, snakemake.output[0])
    log.info("%s -> %s (revision %s), checked against %s", record["source"], record["path"], record["revision"], base)
