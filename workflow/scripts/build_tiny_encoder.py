"""Build a tiny random-init DINO or CLIP twin (rule build_tiny_encoder)."""

from wig.atomic import atomic_dir
from wig.evaluation.encoders import build_tiny_encoder
from wig.workflow.jobs import job

with job(snakemake) as log:
    spec = snakemake.params.spec
    with atomic_dir(snakemake.output[0], overwrite=True) as tmp:
        build_tiny_encoder(spec["kind"], tmp, seed=spec.get("seed", 0))
    log.info("built tiny %s encoder", spec["kind"])
