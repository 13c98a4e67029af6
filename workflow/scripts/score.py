"""Per-image DINO, CLIP-I, CLIP-T (and the synthetic world's oracle metrics) of one generation job
(rule score)."""

from wig.jobs import job
from wig.metrics import score_job

with job(snakemake, torch=False) as log:
    i, w = snakemake.input, snakemake.wildcards
    files = {k: i[k] for k in ("dino", "clip", "dino_refs", "clip_refs", "texts") if k in i.keys()}
    scores = score_job(
        i.samples,
        w.concept,
        files,
        snakemake.params.encoders,
        snakemake.output[0],
        oracle=snakemake.params.oracle,
        lora_seed=int(w.lseed),
    )
    log.info("%d scores", len(scores))
