"""The user study's folder: its drawn sets with every image copied under an opaque id (rule user_study)."""

from wig.user_study.design import build_study, resolve_images
from wig.workflow.jobs import job

with job(snakemake, torch=False) as log:
    design = snakemake.params.design
    samples = dict(zip(snakemake.params.sample_jobs, snakemake.input.samples))
    references = dict(zip(snakemake.params.concepts, snakemake.input.references))
    build_study(resolve_images(design, samples, references), snakemake.output[0])
    log.info(
        "%d sets (%d attention checks) of %s", len(design["sets"]), len(design["attention"]), list(design["entries"])
    )
