"""Same-seed image grid of one (model, fine-tune, concept): rows = grid points, columns = seed × prompt (its first
`evaluation.grid_prompts`) (rule grid)."""

from pathlib import Path

import polars as pl

from wig.evaluation.contact_sheet import contact_sheet
from wig.workflow.jobs import job

with job(snakemake):
    layout = snakemake.params.layout
    # a job may hold several points and seeds: order its images by grid point, then seed, prompt
    frames = [pl.read_parquet(Path(d) / "manifest.parquet").with_columns(folder=pl.lit(d)) for d in snakemake.input]
    rank = {key: i for i, key in enumerate(layout["points"])}
    manifest = (
        pl.concat(frames)
        .with_columns(rank=pl.col("point").replace_strict(rank, return_dtype=pl.Int64))
        .filter(pl.col("prompt_index") < layout["prompts"])
        .sort("rank", "seed", "prompt_index")
    )
    images = [Path(d) / f for d, f in zip(manifest["folder"], manifest["path"])]
    contact_sheet(images, layout["rows"], layout["columns"], snakemake.output[0])
