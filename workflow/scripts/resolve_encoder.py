"""Fetch a real encoder into the local hub cache and record its path and revision (rule resolve_encoder)."""

from wig.jobs import job
from wig.weights import resolve_encoder, write_record

with job(snakemake, torch=False) as log:
    record = resolve_encoder(snakemake.params.spec)
    write_record(record, snakemake.output[0])
    log.info("%s -> %s (revision %s)", record["source"], record["path"], record["revision"])
