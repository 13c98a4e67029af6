"""`wig build-tiny`: a model family's tiny random-init twin, saved as the real checkpoint is."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from wig.atomic import atomic_dir
from wig.cli.options import SEED, check_empty_folder
from wig.errors import WigError

NAME = "build-tiny"
ORDER = 10  # its place in `wig --help`


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "build-tiny",
        help="build a tiny random-init twin of a model family and save it with save_pretrained",
        description="Build a seeded random-init twin (same classes and layout as the real checkpoint) "
        "that stock diffusers loads with from_pretrained. Same seed → byte-identical files.",
    )
    from wig.models.families import FAMILIES, tiny_kinds

    twins = {k: t for k, t in tiny_kinds().items() if not t.pretrained}
    p.add_argument(
        "--family",
        required=True,
        choices=sorted(twins),
        help="the twin to build, by its model family's registered twins: "
        + "; ".join(f"{k} = {FAMILIES[t.family].summary}" for k, t in twins.items()),
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (a diffusers pipeline folder)")
    p.add_argument("--seed", type=SEED, default=None, help="init seed (default: the config's)")
    p.add_argument("--config", type=Path, default=None, help="JSON config replacing the shipped tiny config")
    return p


def check(args) -> None:
    check_empty_folder(args.out)


def run(args) -> None:
    from wig.models.families import build_tiny, default_config

    if args.config is not None:
        try:
            config = json.loads(args.config.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise WigError(f"cannot read tiny-model config {args.config}: {err}") from None
    else:
        config = default_config(args.family)
    with atomic_dir(args.out) as tmp:
        build_tiny(args.family, tmp, config=config, seed=args.seed)
