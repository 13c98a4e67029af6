"""What a study costs, before it runs: fine-tuning steps, images and denoiser evaluations the config
implies, and the wall time they would take on this machine at the rates the last run here measured
(each finished run's log and each generation manifest hold their own seconds).

A denoiser evaluation is one sample through the denoiser once: an image of a point with B branches
over S steps costs S·B of them (CFG 2, AG and SAG 3, DreamBlend 4 plus its guided steps' gradient
pass), a class image S·2. `wig plan --configfile …` prints it; the workflow logs it as it starts.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from wig.errors import WigError
from wig.workflow.study import Study


@dataclass(frozen=True)
class Cost:
    training_runs: int
    training_jobs: int  # packs count once (`subjects_per_job`)
    training_steps: int  # summed over runs
    class_images: int
    images: int
    denoiser_evaluations: int  # generation and class images, samples × steps × branches

    def lines(self) -> list[str]:
        return [
            f"fine-tuning: {self.training_runs} runs in {self.training_jobs} jobs, {self.training_steps:,} steps",
            f"class images: {self.class_images:,}",
            f"images: {self.images:,}",
            f"denoiser evaluations: {self.denoiser_evaluations:,} (samples × steps × branches)",
        ]


def study_cost(study: Study) -> Cost:
    """The counts ``study`` implies (all of them, whatever is already made)."""
    runs = [r for r in study.training_runs() if study.models[r.model].finetunes[r.finetune].method.trains]
    steps = sum(study.models[r.model].finetunes[r.finetune].method.steps for r in runs)
    packs = study.training_packs()
    packed = sum(len(p.runs) for p in packs)
    class_settings = study.config["class_images"]
    class_images = sum(class_settings["count"] for _ in study.class_image_sets())
    sampling_steps = study.config["sampling"]["steps"]
    images = evaluations = 0
    for job in study.generation_jobs():
        points = study.models[job.model].point_chunks[job.points]
        n = len(study.prompts[job.concept]) * len(study.seed_chunks[job.seeds])
        images += n * len(points)
        evaluations += n * sampling_steps * sum(len(p.branches()) for p in points)
    evaluations += class_images * class_settings["steps"] * 2
    return Cost(len(runs), len(runs) - packed + len(packs), steps, class_images, images, evaluations)


@dataclass(frozen=True)
class Rates:
    seconds_per_step: float | None  # a fine-tuning step of one run
    seconds_per_evaluation: float | None  # one denoiser evaluation while generating
    source: str


def measured_rates(study: Study, results: str | Path = "results") -> Rates:
    """Medians over the last run's finished fine-tuning jobs (log.parquet: seconds at the last step
    per step of each run the job trained) and
    generation jobs (manifest.parquet: seconds per image of each point ÷ the study's sampling steps
    × the point's branches) in ``results``."""
    from wig.guidance.base import point_of

    results = Path(results)
    # a packed job's runs log its one clock (`train_loras`): the same seconds at every step, so runs
    # with the same (last step, seconds) are one job's, whose time their steps share
    jobs: dict[tuple[int, float], int] = {}
    for log in sorted(results.glob("*/*/runs/*/*/log.parquet")):
        frame = _read(log, ["step", "seconds"])
        if len(frame) and frame["step"][-1] > 0:
            key = (int(frame["step"][-1]), float(frame["seconds"][-1]))
            jobs[key] = jobs.get(key, 0) + 1
    per_step = [seconds / (steps * runs) for (steps, seconds), runs in jobs.items()]
    per_evaluation = []
    steps = study.config["sampling"]["steps"]
    for manifest in sorted(results.glob("*/*/samples/**/manifest.parquet")):
        frame = _read(manifest, None)
        try:
            for row in frame.unique("point", keep="first").iter_rows(named=True):
                per_evaluation.append(row["seconds_per_image"] / (steps * len(point_of(row).branches())))
        except (KeyError, pl.exceptions.PolarsError, WigError) as err:
            raise WigError(f"{manifest}: not a generation manifest ({err})") from None
    return Rates(
        statistics.median(per_step) if per_step else None,
        statistics.median(per_evaluation) if per_evaluation else None,
        f"{sum(jobs.values())} finished runs in {len(per_step)} jobs and {len(per_evaluation)} generation points "
        f"under {results}",
    )


def _read(path: Path, columns: list[str] | None) -> pl.DataFrame:
    """A run's log or a job's manifest; one line naming the file if it is not that."""
    try:
        return pl.read_parquet(path, columns=columns)
    except (OSError, pl.exceptions.PolarsError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WigError(f"{path}: unreadable ({first})") from None


def estimate_lines(cost: Cost, rates: Rates) -> list[str]:
    """The wall time at ``rates`` (on one job slot: divide by the jobs that run side by side)."""
    lines = []
    if rates.seconds_per_step is not None:
        seconds = cost.training_steps * rates.seconds_per_step
        lines.append(f"fine-tuning ≈ {duration(seconds)} ({rates.seconds_per_step:.3f} s/step)")
    if rates.seconds_per_evaluation is not None:
        seconds = cost.denoiser_evaluations * rates.seconds_per_evaluation
        lines.append(f"sampling ≈ {duration(seconds)} ({rates.seconds_per_evaluation * 1e3:.2f} ms/evaluation)")
    if not lines:
        return [f"no estimate: nothing measured yet ({rates.source})"]
    return lines + [f"measured from {rates.source}; one job slot, model loads and metrics not counted"]


def duration(seconds: float) -> str:
    """Seconds as a person reads them: s below two minutes, min below two hours, else h."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
