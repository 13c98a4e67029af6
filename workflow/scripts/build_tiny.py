"""Build a model's tiny twin (rule build_tiny_model)."""
import json

from wig.jobs import job
from wig.tiny import BUILDERS, default_config

with job(snakemake) as log:
    spec = json.loads(snakemake.params.spec)
    BUILDERS[spec["tiny"]](snakemake.output[0], config=default_config(spec["tiny"]), seed=spec.get("seed"))
    log.info("built tiny %s twin (seed %s) in %s", spec["tiny"], spec.get("seed"), snakemake.output[0])
