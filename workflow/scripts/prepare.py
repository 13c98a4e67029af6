"""Validate and normalise one concept's reference images (rule prepare)."""

from wig.concepts import prepare_concept
from wig.workflow.jobs import job

with job(snakemake) as log:
    limits = snakemake.params.limits
    manifest = prepare_concept(
        snakemake.params.folder,
        snakemake.output[0],
        overwrite=True,
        max_pixels=limits["max_pixels"],
        max_side=limits["max_side"],
    )
    log.info("%d images from %s", len(manifest), snakemake.params.folder)
