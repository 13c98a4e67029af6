"""Assemble all samples of a model into one labelled grid (rule grid)."""
from wig.grids import contact_sheet
from wig.jobs import job

with job(snakemake):
    contact_sheet(snakemake.input, snakemake.params.rows, snakemake.params.columns, snakemake.output[0])
