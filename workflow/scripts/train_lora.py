"""DreamBooth-LoRA for one (model, concept): full + weak checkpoint and a log (rule train_lora)."""

from wig.concepts import read_images
from wig.personalization.training import TrainConfig, train_lora
from wig.sampling.pipelines import load_pipeline
from wig.workflow.jobs import job, local_weights

with job(snakemake) as log:
    p = snakemake.params
    config = TrainConfig(**p.settings)
    classes = read_images(snakemake.input.classes) if "classes" in snakemake.input.keys() else None
    pipe = load_pipeline(local_weights(snakemake, p.model), device=p.runtime["device"], dtype=p.runtime["dtype"])
    result = train_lora(
        pipe, read_images(snakemake.input.instance), snakemake.output[0], config, class_images=classes, overwrite=True
    )
    log.info("%d steps, final loss %.4f", config.steps, result["loss"][-1])
