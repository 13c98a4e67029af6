"""Validate and normalise one concept's reference images (rule prepare)."""
from wig.concepts import prepare_concept
from wig.jobs import job

with job(snakemake) as log:
    manifest = prepare_concept(snakemake.params.folder, snakemake.output[0], overwrite=True)
    log.info("%d images from %s", len(manifest), snakemake.params.folder)
