"""Fetch a real checkpoint into the local hub cache and record its path and revision (rule resolve_model)."""

from wig.weights import resolve_model, write_record
from wig.workflow.jobs import job

with job(snakemake, torch=False) as log:
    record = resolve_model(snakemake.params.spec)
    write_record(record, snakemake.output[0])
    log.info("%s -> %s (revision %s)", record["source"], record["path"], record["revision"])
