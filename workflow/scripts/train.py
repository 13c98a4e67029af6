"""One fine-tune run of a (model, fine-tune, concept, seed): full + weak checkpoint and a log, by
the personalization method the fine-tune names (rule train)."""

from wig.concepts import read_images
from wig.models.pipelines import load_pipeline
from wig.personalization import Subject, make
from wig.workflow.jobs import job, local_weights

with job(snakemake) as log:
    p = snakemake.params
    method = make(**p.method)
    classes = read_images(snakemake.input.classes) if "classes" in snakemake.input.keys() else None
    subject = Subject(read_images(snakemake.input.instance), p.subject["prompt"], classes, p.subject["class_prompt"])
    pipe = load_pipeline(local_weights(snakemake, p.model), device=p.runtime["device"], dtype=p.runtime["dtype"])
    result = method.train(pipe, subject, snakemake.output[0], seed=int(snakemake.wildcards.fseed), overwrite=True)
    log.info("%s: %d steps, final loss %.4f", method.name, method.steps, result["loss"][-1])
