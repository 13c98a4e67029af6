"""Prior-preservation images of one class noun with the base model (rule class_images)."""

from wig.models.pipelines import load_pipeline
from wig.personalization.training import generate_class_images
from wig.workflow.jobs import job, local_weights

with job(snakemake) as log:
    p = snakemake.params
    s = dict(p.settings)
    pipe = load_pipeline(local_weights(snakemake, p.model), device=p.runtime["device"], dtype=p.runtime["dtype"])
    generate_class_images(pipe, s.pop("prompt"), s.pop("count"), snakemake.output[0], overwrite=True, **s)
    log.info("%s: %d images of %r", snakemake.output[0], p.settings["count"], p.settings["prompt"])
