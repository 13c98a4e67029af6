"""`wig plan`: what a study config costs before it runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from wig.errors import WigError

NAME = "plan"
ORDER = 90  # its place in `wig --help`
EXTRA = "workflow"  # what it imports beyond the core install (wig.extras; pyproject.toml)
LIGHT = True  # imports neither torch nor diffusers: it starts at once


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "plan",
        help="what a study config costs before it runs: fine-tuning steps, images, denoiser evaluations, hours",
        description="Count the fine-tuning steps, class images, images and denoiser evaluations a workflow config "
        "implies (all of them, made or not) and estimate the wall time at the rates the last run under --results "
        "measured (its runs' logs, its generation manifests). The config's relative paths are read from --directory "
        "(default: the working directory), as Snakemake reads them.",
    )
    p.add_argument("--configfile", required=True, type=Path, help="the study's config (as snakemake --configfile)")
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        help="a run's results folder to measure rates from (default: the study's own, <results>/<study> of the config)",
    )
    p.add_argument(
        "--directory",
        type=Path,
        default=None,
        help="the folder the config's relative paths (and --results) are read from, as snakemake --directory "
        "(default: the working directory)",
    )
    return p


def run(args) -> None:
    import contextlib

    configfile = args.configfile.resolve()
    if args.directory is not None and not args.directory.is_dir():
        raise WigError(f"--directory {args.directory}: no such folder")
    with contextlib.chdir(args.directory) if args.directory is not None else contextlib.nullcontext():
        _plan(configfile, args)


def _plan(configfile: Path, args) -> None:
    import yaml

    from wig.workflow.config_schema import read_config
    from wig.workflow.cost import estimate_lines, measured_rates, study_cost
    from wig.workflow.study import Study

    try:
        config = yaml.safe_load(configfile.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WigError(f"--configfile {args.configfile}: {first}") from None
    if not isinstance(config, dict):
        raise WigError(f"--configfile {args.configfile}: not a mapping of settings")
    read_config(config, where=f"--configfile {args.configfile}")  # the shipped schema, as the workflow reads it
    study = Study.from_config(config)
    cost = study_cost(study)
    results = args.results if args.results is not None else Path(config["results"]) / config["study"]
    for line in cost.lines() + estimate_lines(cost, measured_rates(study, results)):
        print(line)
