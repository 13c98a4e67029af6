"""Generate every prompt of one (model, method, grid point, seed) job (rule generate)."""
import torch

from wig.guidance import Guidance
from wig.jobs import job
from wig.models import attach_loras, load_pipeline
from wig.sampling import sample

with job(snakemake) as log:
    p = snakemake.params
    seed = int(snakemake.wildcards.seed)
    guidance = Guidance(**p.guidance)
    pipe = load_pipeline(p.model, device=p.runtime["device"], dtype=p.runtime["dtype"])
    attach_loras(pipe, snakemake.input.lora)
    # every image of the job starts from the latent of `wig generate --seed <seed>`
    images = sample(
        pipe,
        p.prompts,
        guidance,
        generators=[torch.Generator("cpu").manual_seed(seed) for _ in p.prompts],
        negative_prompt=p.sampling["negative_prompt"],
        steps=p.sampling["steps"],
        height=p.sampling["height"],
        width=p.sampling["width"],
    )
    for image, path in zip(images, snakemake.output):
        image.save(path)
    log.info("%s: %d images", guidance, len(images))
