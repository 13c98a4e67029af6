"""Fetch a real encoder into the local hub cache and record its path and revision (rule resolve_encoder)."""

from wig.evaluation.encoders import resolve_encoder
from wig.weights import write_record
from wig.workflow.jobs import job

with job(snakemake, torch=False) as log:
    record = resolve_encoder(snakemake.params.spec)
    write_record(record, snakemake.output[0])
    log.info("%s -> %s (revision %s)", record["source"], record["path"], record["revision"])
