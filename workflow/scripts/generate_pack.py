"""All prompts × seeds of a pack's runs for one (grid points, seeds) chunk, the runs' samples
sharing batches, each through its own run's LoRA (rule generate_<pack>): each run's folder is the
one rule generate would write for it."""

from wig.branches import WEAK
from wig.guidance import Guidance
from wig.models.pipelines import load_pipeline
from wig.personalization import make
from wig.sampling.generation import SampleSet, generate_sets
from wig.workflow.jobs import job, local_weights

with job(snakemake) as log:
    p = snakemake.params
    points = {key: Guidance(**settings) for key, settings in p.guidance.items()}
    pipe = load_pipeline(local_weights(snakemake, p.model), device=p.runtime["device"], dtype=p.runtime["dtype"])
    weak = any(WEAK in g.required_adapters() for g in points.values())  # attach it only if a point uses it
    weights = make(**p.method).attach_many(pipe, list(snakemake.input.runs), weak=weak)
    s = p.sampling
    seeds = [int(seed) for seed in snakemake.wildcards.seeds.split("_")]
    sets = [SampleSet(run["prompts"], out, run["extra_texts"]) for run, out in zip(p.runs, snakemake.output)]
    manifests = generate_sets(
        pipe,
        sets,
        points,
        seeds,
        batch_size=s["batch_size"],
        weights=weights,
        negative_prompt=s["negative_prompt"],
        steps=s["steps"],
        height=s["height"],
        width=s["width"],
    )
    for key, guidance in points.items():
        row = manifests[0].filter(manifests[0]["point"] == key).row(0, named=True)
        log.info("%s: %.2f s/image", guidance, row["seconds_per_image"])
    log.info("%d images of %d runs", sum(len(m) for m in manifests), len(sets))
