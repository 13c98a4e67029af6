"""Fetch a given fine-tune's weights into the local hub cache (or take a local path as it is),
check them against the base model, and record where they are (rule resolve_finetune)."""

from wig.personalization import make
from wig.weights import resolve_finetune, write_record
from wig.workflow.jobs import job, local_weights

with job(snakemake, torch=False) as log:
    p = snakemake.params
    record = resolve_finetune(p.spec)
    base = local_weights(snakemake, p.model)
    make(**p.method).check_files(record["path"], base)
    write_record(record, snakemake.output[0])
    log.info("%s -> %s (revision %s), checked against %s", record["source"], record["path"], record["revision"], base)
