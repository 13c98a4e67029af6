"""Per-image DINO, CLIP-I, CLIP-T of one generation job (rule score)."""
from wig.jobs import job
from wig.metrics import score_job

with job(snakemake, torch=False) as log:
    i = snakemake.input
    files = {k: i[k] for k in ("dino", "clip", "dino_refs", "clip_refs", "texts")}
    scores = score_job(i.samples, snakemake.wildcards.concept, files, snakemake.params.encoders, snakemake.output[0],
                       oracle=snakemake.params.oracle)
    log.info("%d scores", len(scores))
