"""`wig class-images`: prior-preservation images of a class from the base model."""

from __future__ import annotations

import argparse
from pathlib import Path

from wig.cli.options import POSITIVE, SEED, add_runtime, add_sampling, check_empty_folder, runtime

NAME = "class-images"
ORDER = 60  # its place in `wig --help`
EXTRA = "workflow"  # what it imports beyond the core install (wig.extras; pyproject.toml)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "class-images",
        help="generate prior-preservation images of a class with the base model",
        description="Sample COUNT images of PROMPT with CFG; image i uses seed SEED+i. Writes NNNN.png + "
        "manifest.parquet.",
    )
    p.add_argument("--model", required=True, help="diffusers model folder or hub name")
    p.add_argument("--prompt", required=True, help='class prompt, e.g. "a photo of dog"')
    p.add_argument("--count", type=POSITIVE, required=True, help="number of images")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the first image (default 0)")
    p.add_argument("--scale", type=float, default=7.5, help="CFG scale (default 7.5)")
    p.add_argument("--batch-size", type=POSITIVE, default=4, help="images per sampling call (default 4)")
    add_sampling(p)
    p.add_argument("--out", required=True, type=Path, help="output folder")
    add_runtime(p)
    return p


def check(args) -> None:
    check_empty_folder(args.out)


def run(args) -> None:
    from wig.models.pipelines import load_pipeline
    from wig.personalization.training import generate_class_images

    runtime(args)
    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype)
    generate_class_images(
        pipe,
        args.prompt,
        args.count,
        args.out,
        seed=args.seed,
        steps=args.steps,
        scale=args.scale,
        height=args.height,
        width=args.width,
        batch_size=args.batch_size,
        negative_prompt=args.negative_prompt,
        progress=not args.quiet,
    )
