"""Where a finished run's time went, stage by stage, from the jobs' Snakemake benchmark files.

    snakemake --cores 2 --configfile config/presets/synthetic.yaml
    python benchmarks/stage_times.py            # in the same working directory

Each job's benchmark TSV holds its wall time (``s``), process start and imports included. A stage's
*job time* is the sum over its jobs; with N cores running jobs side by side, the run's wall time is
roughly the job time over N. ``--wall`` adds the run's own wall time for the comparison.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

STAGES = {  # stage -> the rules (benchmark folder names) it covers
    "render": ("render_dataset",),
    "pretrain": ("pretrain_vae", "pretrain_model", "base_accuracy"),
    "fine-tune": ("class_images", "train", "learning"),
    "generation": ("generate",),
    "metrics": ("train_encoder", "embed_references", "embed_samples", "score", "aggregate"),
}


def rule_of(tsv: Path, results: Path) -> str:
    """<results>/<study>/{model}/benchmarks/<rule>[/…].tsv or <results>/<study>/benchmarks/<rule>.tsv → rule."""
    parts = tsv.relative_to(results).parts
    i = parts.index("benchmarks")
    return Path(parts[i + 1]).stem


def job_seconds(results: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for tsv in sorted(results.rglob("benchmarks/**/*.tsv")):
        with open(tsv) as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if rows:
            out[rule_of(tsv, results)].append(float(rows[-1]["s"]))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=Path("results/demo"), help="a study's results folder")
    p.add_argument("--cores", type=int, default=2, help="cores the run used (for job time / cores)")
    p.add_argument("--wall", type=float, help="the run's measured wall time in seconds")
    args = p.parse_args(argv)
    seconds = job_seconds(args.results)
    if not seconds:
        raise SystemExit(f"no benchmark files under {args.results}: run the workflow first")
    print(f"{'stage':<12}{'jobs':>6}{'job time s':>12}{'/ cores s':>11}{'mean s/job':>12}")
    total = 0.0
    for stage, rules in STAGES.items():
        times = [t for r in rules for t in seconds.get(r, [])]
        total += sum(times)
        if times:
            print(
                f"{stage:<12}{len(times):>6}{sum(times):>12.1f}{sum(times) / args.cores:>11.1f}"
                f"{sum(times) / len(times):>12.2f}"
            )
    print(f"{'all':<12}{sum(map(len, seconds.values())):>6}{total:>12.1f}{total / args.cores:>11.1f}")
    if args.wall:
        print(
            f"run wall time {args.wall:.0f} s: {args.wall / (total / args.cores):.2f} × job time / cores "
            "(the rest: Snakemake's own work, stages that cannot overlap)"
        )


if __name__ == "__main__":
    main()
