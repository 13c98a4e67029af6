"""ω-ablation, λ-ablation, Pareto and per-method front figures across (model, fine-tune)s (rule plots)."""

import polars as pl

from wig.evaluation import plots
from wig.workflow.jobs import job

with job(snakemake, torch=False):
    tables = {label: pl.read_parquet(path) for label, path in zip(snakemake.params.labels, snakemake.input)}
    protocol = snakemake.params.protocol
    # each figure is written as <stem>.png and <stem>.svg: the stems of the rule's four PNG outputs
    omega, lam, pareto, fronts = (path.removesuffix(".png") for path in snakemake.output[:4])
    plots.omega_ablation(tables, omega, protocol)
    plots.lambda_ablation(tables, lam, protocol)
    plots.pareto(tables, pareto, protocol)
    plots.method_fronts(tables, fronts, protocol)
