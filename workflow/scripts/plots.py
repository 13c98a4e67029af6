"""ω-ablation, λ-ablation, Pareto and per-method front figures across (model, fine-tune)s (rule plots)."""

import polars as pl

from wig.evaluation import plots
from wig.workflow.jobs import job

with job(snakemake, torch=False):
    tables = {label: pl.read_parquet(path) for label, path in zip(snakemake.params.labels, snakemake.input)}
    protocol = snakemake.params.protocol
    plots.omega_ablation(tables, "results/plots/omega_ablation", protocol)
    plots.lambda_ablation(tables, "results/plots/lambda_ablation", protocol)
    plots.pareto(tables, "results/plots/pareto", protocol)
    plots.method_fronts(tables, "results/plots/method_fronts", protocol)
