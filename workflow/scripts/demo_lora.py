"""Write the demo's seeded random LoRA (rule demo_lora)."""
from pathlib import Path

from wig.jobs import job
from wig.lora import random_lora
from wig.models import load_pipeline

with job(snakemake) as log:
    settings = snakemake.params.lora
    pipe = load_pipeline(snakemake.params.model, device="cpu", dtype="float32")
    path = random_lora(pipe, Path(snakemake.output[0]).parent, rank=settings["rank"], std=settings["std"],
                       seed=settings["seed"])
    log.info("wrote %s", path)
