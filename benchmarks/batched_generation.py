"""What generating many subjects in one job buys: images per second of K subjects' images in one
job (`wig.sampling.generation.generate_sets`, samples of different subjects sharing batches, each
routed to its own LoRA) against K separate one-subject jobs (`generate_samples`) — each variant
timed from loading the pipeline to the last image, as a generation job does — and the largest
pixel difference between them. Measured in this one run, variants interleaved over the repeats.

    python benchmarks/batched_generation.py                  # the shipped synthetic base, its study's job
    python benchmarks/batched_generation.py --subjects 4 16 --points cfg pg0 pg05

A job is the synthetic-subjects preset's: 6 prompts × 4 seeds of each subject at CFG λ 4.5 and PG
ω 0 / 0.5, 16 steps, 32 px, batch 48, one thread (a 2-core machine runs two jobs side by side).
Random LoRAs stand in for trained ones (the cost does not depend on their values). A separate
job in the DAG also starts a Python process and imports torch (seconds); that is not counted here.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wig.guidance import Guidance
from wig.models.pipelines import load_pipeline
from wig.personalization import make
from wig.personalization.lora import random_lora
from wig.sampling.generation import SampleSet, generate_samples, generate_sets

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = ROOT / "resources/models/synthetic-base"
POINTS = {
    "cfg": ("cfg/l4.5", Guidance("cfg", 4.5)),
    "pg0": ("pg/w0.0_l4.5", Guidance("pg", 4.5, omega=0.0)),
    "pg05": ("pg/w0.5_l4.5", Guidance("pg", 4.5, omega=0.5)),
}
PROMPTS = [f"a sks circle on a {c} background" for c in ("red", "green", "blue", "yellow")]
PROMPTS += ["a cyan sks circle on a red background", "a magenta sks circle on a red background"]


def _separate(model, runs, points, seeds, out, args) -> float:
    start = time.perf_counter()
    for k, run in enumerate(runs):
        pipe = load_pipeline(model, device="cpu", dtype="float32")
        weights = make("db-lora").attach(pipe, run, weak=False)
        generate_samples(
            pipe, PROMPTS, points, seeds, out / f"s{k}", batch_size=args.batch, weights=weights, **_kw(args)
        )
    return time.perf_counter() - start


def _together(model, runs, points, seeds, out, args) -> float:
    start = time.perf_counter()
    pipe = load_pipeline(model, device="cpu", dtype="float32")
    weights = make("db-lora").attach_many(pipe, runs, weak=False)
    sets = [SampleSet(PROMPTS, out / f"s{k}") for k in range(len(runs))]
    generate_sets(pipe, sets, points, seeds, batch_size=args.batch, weights=weights, **_kw(args))
    return time.perf_counter() - start


def _kw(args) -> dict:
    return dict(steps=args.steps, height=32, width=32, progress=False, negative_prompt="")


def _max_diff(a: Path, b: Path) -> int:
    worst = 0
    for path in a.rglob("*.png"):
        x = np.asarray(Image.open(path), dtype=np.int16)
        y = np.asarray(Image.open(b / path.relative_to(a)), dtype=np.int16)
        worst = max(worst, int(np.abs(x - y).max()))
    return worst


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(SYNTHETIC))
    p.add_argument("--subjects", type=int, nargs="+", default=[4, 16])
    p.add_argument("--points", nargs="+", default=list(POINTS), choices=list(POINTS))
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--batch", type=int, default=48)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    points = dict(POINTS[name] for name in args.points)
    seeds = list(range(args.seeds))
    print(
        f"model {args.model}; {len(PROMPTS)} prompts × {args.seeds} seeds × {len(points)} points a subject; "
        f"{args.steps} steps, batch {args.batch}, {args.threads} thread(s)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pipe = load_pipeline(args.model, device="cpu", dtype="float32")
        runs = []
        for k in range(max(args.subjects)):
            random_lora(pipe, tmp / f"run{k}" / "full", rank=8, std=0.05, seed=k)
            runs.append(tmp / f"run{k}")
        for k in args.subjects:
            times = {"separate": [], "together": []}
            for r in range(args.repeats):
                times["separate"].append(_separate(args.model, runs[:k], points, seeds, tmp / f"a{k}_{r}", args))
                times["together"].append(_together(args.model, runs[:k], points, seeds, tmp / f"b{k}_{r}", args))
            images = k * len(PROMPTS) * args.seeds * len(points)
            sep, tog = (statistics.median(times[v]) for v in ("separate", "together"))
            print(
                f"K {k:2d}: {k} separate jobs {images / sep:6.1f} images/s | one job {images / tog:6.1f} images/s | "
                f"one job / separate {sep / tog:.2f} | max |diff| {_max_diff(tmp / f'a{k}_0', tmp / f'b{k}_0')} uint8"
            )


if __name__ == "__main__":
    main()
