"""`wig train`: one fine-tune run with a personalization method (full and weak checkpoints, a log)."""

from __future__ import annotations

import argparse
from pathlib import Path

from wig.cli.options import SEED, add_runtime, add_settings, check_empty_folder, runtime, settings_given
from wig.errors import WigError
from wig.personalization import REGISTRY as PERSONALIZATION

NAME = "train"
ORDER = 70  # its place in `wig --help`
EXTRA = "workflow"  # what it imports beyond the core install (wig.extras; pyproject.toml)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train",
        help="fine-tune on a concept's images with a personalization method: full and weak checkpoints and a log",
        description="Fine-tune the model on a concept's images (with prior preservation when class images are "
        f"given) with one of {'/'.join(trained())}. One run writes OUT/full/ and OUT/weak/ (the "
        "method's checkpoints, e.g. a diffusers LoRA folder), OUT/log.parquet "
        "(step, loss, instance_loss, prior_loss, lr, seconds) and OUT/config.json. OUT appears only "
        "when the run completes.",
    )
    p.add_argument("--model", required=True, help="diffusers model folder or hub name")
    p.add_argument("--method", required=True, choices=trained(), help="personalization method")
    p.add_argument(
        "--instance-dir", required=True, type=Path, help="the concept's images (a prepared folder or any image folder)"
    )
    p.add_argument("--instance-prompt", required=True, help='e.g. "a photo of sks dog"')
    p.add_argument("--class-dir", type=Path, help="class images for prior preservation")
    p.add_argument("--class-prompt", help='e.g. "a photo of dog" (needed with --class-dir)')
    p.add_argument("--seed", type=SEED, default=0, help="seed (default 0)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    add_runtime(p)
    add_settings(p, PERSONALIZATION, trained())
    return p


def check(args) -> None:
    personalization(args)  # its settings, before torch
    check_empty_folder(args.out)


def run(args) -> None:
    from wig.concepts import read_images
    from wig.models.pipelines import load_pipeline
    from wig.personalization import Subject

    method = personalization(args)
    if args.class_dir is not None and args.class_prompt is None:
        raise WigError("--class-dir needs --class-prompt")
    subject = Subject(
        read_images(args.instance_dir),
        args.instance_prompt,
        read_images(args.class_dir) if args.class_dir is not None else None,
        args.class_prompt,
    )
    runtime(args)
    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype)
    log = method.train(pipe, subject, args.out, seed=args.seed, progress=not args.quiet)
    print(f"{method.name}: {method.steps} steps, final loss {log['loss'][-1]:.4f} -> {args.out}")


def personalization(args):
    """The personalization method with the settings given on the command line."""
    from wig.personalization import make as make_method

    return make_method(args.method, **settings_given(args, PERSONALIZATION))


def trained() -> list[str]:
    """`wig train`'s methods: the registered ones that train (read when the parser is built, so a
    plug-in's too)."""
    return sorted(name for name, cls in PERSONALIZATION.items() if cls.trains)
