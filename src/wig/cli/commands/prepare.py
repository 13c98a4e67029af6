"""`wig prepare`: a concept's reference photos checked and normalised."""

from __future__ import annotations

import argparse
from pathlib import Path

from wig.cli.options import POSITIVE, check_empty_folder

NAME = "prepare"
ORDER = 50  # its place in `wig --help`
EXTRA = "workflow"  # what it imports beyond the core install (wig.extras; pyproject.toml)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "prepare",
        help="validate and normalise a concept's reference images",
        description="Decode every image of a concept folder (jpg/jpeg/png/webp, any size), apply EXIF "
        "orientation, convert to 8-bit RGB (16-bit rescaled, transparency on white, CMYK converted) and "
        "write NN.png + manifest.parquet. A broken image fails with its name and writes nothing.",
    )
    p.add_argument("--concept-dir", required=True, type=Path, help="folder of the concept's images")
    p.add_argument("--out", required=True, type=Path, help="output folder (must not exist or be empty)")
    p.add_argument(
        "--max-pixels",
        type=POSITIVE,
        default=None,
        help="refuse photos with more pixels (default 256,000,000: PIL's bomb guard at wig's limit)",
    )
    p.add_argument(
        "--max-side",
        type=POSITIVE,
        default=None,
        help="keep photos at most this long on their long side (default 2048, LANCZOS)",
    )
    return p


def check(args) -> None:
    check_empty_folder(args.out)


def run(args) -> None:
    from wig.concepts import MAX_PIXELS, MAX_SIDE, prepare_concept

    manifest = prepare_concept(
        args.concept_dir, args.out, max_pixels=args.max_pixels or MAX_PIXELS, max_side=args.max_side or MAX_SIDE
    )
    print(f"{len(manifest)} images -> {args.out}")
