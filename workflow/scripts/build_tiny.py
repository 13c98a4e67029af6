"""Build a model's tiny twin (rule build_tiny_model)."""

from wig.atomic import atomic_dir
from wig.models.families import build_tiny
from wig.workflow.jobs import job

with job(snakemake) as log:
    spec = snakemake.params.spec
    with atomic_dir(snakemake.output[0], overwrite=True) as tmp:
        build_tiny(spec["tiny"], tmp, config=snakemake.params.config, seed=spec.get("seed"))
    log.info("built tiny %s twin (seed %s)", spec["tiny"], spec.get("seed"))
