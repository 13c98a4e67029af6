"""All prompts × seeds of one (model, concept, method, grid point, seed chunk) job (rule generate)."""
from wig.generation import generate_samples
from wig.guidance import Guidance
from wig.jobs import job, local_weights
from wig.models import attach_loras, load_pipeline
from wig.training import lora_checkpoints

with job(snakemake) as log:
    p = snakemake.params
    guidance = Guidance(**p.guidance)
    pipe = load_pipeline(local_weights(snakemake, p.model), device=p.runtime["device"], dtype=p.runtime["dtype"])
    checkpoints = lora_checkpoints(snakemake.input.lora)
    attach_loras(pipe, checkpoints["full"], checkpoints["weak"] if guidance.weak == "lora" else None)
    s = p.sampling
    seeds = [int(seed) for seed in snakemake.wildcards.seeds.split("_")]
    manifest = generate_samples(pipe, p.prompts, guidance, seeds, snakemake.output[0], batch_size=s["batch_size"],
                                negative_prompt=s["negative_prompt"], steps=s["steps"], height=s["height"],
                                width=s["width"])
    log.info("%s: %d images, %.2f s/image", guidance, len(manifest), manifest["seconds_per_image"][0])
