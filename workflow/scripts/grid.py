"""Same-seed image grid of one (model, concept): rows = grid points, columns = seed × prompt (rule grid)."""
from pathlib import Path

import polars as pl

from wig.grids import contact_sheet
from wig.jobs import job

with job(snakemake):
    # manifest order: seed by seed, prompt by prompt
    images = [Path(d) / f for d in snakemake.input for f in pl.read_parquet(Path(d) / "manifest.parquet")["path"]]
    contact_sheet(images, snakemake.params.rows, snakemake.params.columns, snakemake.output[0])
