"""All prompts × seeds of one (model, fine-tune, concept, its seed, grid points, seed chunk) job
(rule generate)."""

from wig.branches import WEAK, adapter_step
from wig.concepts import read_images
from wig.guidance import Guidance
from wig.models.pipelines import load_pipeline
from wig.personalization import make
from wig.sampling.generation import generate_samples
from wig.weights import recorded_path
from wig.workflow.jobs import job, local_weights

with job(snakemake) as log:
    p = snakemake.params
    points = {key: Guidance(**settings) for key, settings in p.guidance.items()}
    pipe = load_pipeline(local_weights(snakemake, p.model), device=p.runtime["device"], dtype=p.runtime["dtype"])
    weak = any(WEAK in g.required_adapters() for g in points.values())  # attach it only if a point uses it
    # a trained run's folder, or where a given fine-tune's weights were resolved to
    finetune = snakemake.input.get("run") or recorded_path(snakemake.input.finetune)
    method = make(**p.method)
    weights = method.attach(pipe, finetune, weak=weak)
    # the run's checkpoints at chosen steps that a point names (DreamBlend's underfit/overfit)
    steps = sorted({k for g in points.values() for k in map(adapter_step, g.required_adapters()) if k is not None})
    if steps:
        method.attach_steps(pipe, finetune, steps)
    s = p.sampling
    seeds = [int(seed) for seed in snakemake.wildcards.seeds.split("_")]
    # an image family edits the concept's first reference image, at the sampling size
    edit = snakemake.input.get("edit")
    images = [read_images(edit)[0].resize((s["width"], s["height"]))] * len(p.prompts) if edit else None
    manifest = generate_samples(
        pipe,
        p.prompts,
        points,
        seeds,
        snakemake.output[0],
        batch_size=s["batch_size"],
        negative_prompt=s["negative_prompt"],
        steps=s["steps"],
        height=s["height"],
        width=s["width"],
        weights=weights,
        extra_texts=p.extra_texts,
        images=images,
    )
    for key, guidance in points.items():
        row = manifest.filter(manifest["point"] == key).row(0, named=True)
        log.info("%s: %.2f s/image", guidance, row["seconds_per_image"])
    log.info("%d images", len(manifest))
