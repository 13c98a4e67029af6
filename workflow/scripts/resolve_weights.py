"""Fetch a real checkpoint or encoder into the local hub cache and record it (rules resolve_*)."""

from wig.jobs import job
from wig.weights import resolve_encoder, resolve_model, write_record

with job(snakemake, torch=False) as log:
    spec = snakemake.params.spec
    record = (resolve_model if snakemake.rule == "resolve_model" else resolve_encoder)(spec)
    write_record(record, snakemake.output[0])
    log.info("%s -> %s (revision %s)", record["source"], record["path"], record["revision"])
