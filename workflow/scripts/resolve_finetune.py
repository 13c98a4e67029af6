"""Fetch a given fine-tune's weights into the local hub cache (or take a local path as it is) and
record where they are (rule resolve_finetune)."""

from wig.workflow.jobs import job
from wig.workflow.weights import resolve_finetune, write_record

with job(snakemake, torch=False) as log:
    record = resolve_finetune(snakemake.params.spec)
    write_record(record, snakemake.output[0])
    log.info("%s -> %s (revision %s)", record["source"], record["path"], record["revision"])
