"""Per-image DINO, CLIP-I, CLIP-T of one generation job (rule score)."""
from pathlib import Path

import polars as pl

from wig.atomic import replace_file, tmp_path
from wig.embeddings import read_embeddings
from wig.jobs import job
from wig.metrics import score_samples

with job(snakemake, torch=False) as log:
    i, ids = snakemake.input, snakemake.params.encoders
    dino_refs = read_embeddings(i.dino_refs, ids["dino"])
    clip_refs = read_embeddings(i.clip_refs, ids["clip"])
    dino_dim, clip_dim = dino_refs.schema["embedding"].size, clip_refs.schema["embedding"].size
    scores = score_samples(
        pl.read_parquet(Path(i.samples) / "manifest.parquet"),
        snakemake.wildcards.concept,
        read_embeddings(i.dino, ids["dino"], dino_dim),
        read_embeddings(i.clip, ids["clip"], clip_dim),
        dino_refs,
        clip_refs,
        read_embeddings(i.texts, ids["clip"], clip_dim),
    )
    out = snakemake.output[0]
    scores.write_parquet(tmp_path(out))
    replace_file(tmp_path(out), out)
    log.info("%d scores", len(scores))
