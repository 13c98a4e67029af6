"""`wig random-lora`: a seeded random LoRA (tests and benchmarks; never a result)."""

from __future__ import annotations

import argparse
from pathlib import Path

from wig.atomic import atomic_dir
from wig.cli.options import POSITIVE, SEED, check_empty_folder

NAME = "random-lora"
ORDER = 20  # its place in `wig --help`


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "random-lora",
        help="write a seeded random UNet LoRA in diffusers format (tests, benchmarks)",
        description="Write pytorch_lora_weights.safetensors with random A and B matrices, so that "
        "it visibly changes the model's output. A stand-in for a trained LoRA, never a result.",
    )
    p.add_argument("--model", required=True, help="diffusers model folder or hub name")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--rank", type=POSITIVE, default=4, help="LoRA rank (default 4)")
    p.add_argument("--std", type=float, default=0.1, help="std of the random A and B entries (default 0.1)")
    p.add_argument("--seed", type=SEED, default=0, help="seed (default 0)")
    return p


def check(args) -> None:
    check_empty_folder(args.out)


def run(args) -> None:
    from wig.models.pipelines import load_pipeline
    from wig.personalization.lora import random_lora

    pipe = load_pipeline(args.model, device="cpu", dtype="float32")
    with atomic_dir(args.out) as tmp:
        random_lora(pipe, tmp, rank=args.rank, std=args.std, seed=args.seed)
