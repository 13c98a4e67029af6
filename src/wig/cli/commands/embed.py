"""`wig embed`: images of a prepared or generated folder (or texts) embedded as Parquet."""

from __future__ import annotations

import argparse
from pathlib import Path

from wig.atomic import atomic_dir, replace_file, tmp_path
from wig.cli.options import POSITIVE, add_runtime, runtime
from wig.errors import WigError

NAME = "embed"
ORDER = 80  # its place in `wig --help`
EXTRA = "workflow"  # what it imports beyond the core install (wig.extras; pyproject.toml)


def add_parser(sub) -> argparse.ArgumentParser:
    kinds = encoder_kinds()  # first: without the workflow extra this raises before the parser exists
    p = sub.add_parser(
        "embed",
        help="embed the images of a prepared or generated folder (or prompt texts) as Parquet",
        description="Embed every image listed in FOLDER/manifest.parquet with an encoder (DINO, CLIP, PickScore), "
        "once per protocol, in batches; or, with --text, embed texts with a text encoder (CLIP, PickScore). Writes "
        "one Parquet file (schema in docs/formats.md).",
    )
    p.add_argument("--kind", required=True, choices=sorted(kinds), help="encoder kind")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--tiny", type=Path, help="folder of a tiny twin built with --build-tiny")
    source.add_argument("--name", help="real checkpoint: " + "; ".join(f"{k}: {c.real}" for k, c in kinds.items()))
    p.add_argument(
        "--pretrained", help="a pretrained tag, for kinds that load by name + tag (open_clip's, e.g. openai)"
    )
    p.add_argument("--processor", help="a second hub repo with the preprocessor, for kinds that read one")
    p.add_argument("--build-tiny", action="store_true", help="first build the tiny twin into --tiny")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--images", type=Path, help="folder with manifest.parquet (wig prepare / a generation job)")
    what.add_argument(
        "--text",
        action="append",
        help="a text to embed (kinds with a text tower: "
        + ", ".join(k for k, c in kinds.items() if c.texts)
        + "; repeat)",
    )
    p.add_argument(
        "--protocol",
        action="append",
        choices=("dreammatcher", "standard"),
        help="preprocessing protocol (repeat; default dreammatcher)",
    )
    p.add_argument("--batch-size", type=POSITIVE, default=32, help="images per forward (default 32)")
    p.add_argument("--out", required=True, type=Path, help="output .parquet file")
    add_runtime(p)
    return p


def check(args) -> None:
    if Path(args.out).is_dir():
        raise WigError(f"--out {args.out} is a folder: name a .parquet file")


def run(args) -> None:
    from wig.evaluation.encoders import build_tiny_encoder, embed_images, embed_texts, load_encoder

    runtime(args)
    if args.build_tiny:
        if args.tiny is None:
            raise WigError("--build-tiny needs --tiny FOLDER")
        with atomic_dir(args.tiny) as tmp:
            build_tiny_encoder(args.kind, tmp)
    spec = {"kind": args.kind, "tiny": True} if args.tiny else {"kind": args.kind, "name": args.name}
    for key in ("pretrained", "processor"):
        if getattr(args, key):
            spec[key] = getattr(args, key)
    encoder = load_encoder(spec, args.tiny, device=args.device)
    if args.text:
        frame = embed_texts(encoder, args.text)
    else:
        frame = embed_images(encoder, args.images, args.protocol or ["dreammatcher"], batch_size=args.batch_size)
    tmp = tmp_path(args.out)
    frame.write_parquet(tmp)
    replace_file(tmp, args.out)
    print(f"{len(frame)} rows ({encoder.id}) -> {args.out}")


def encoder_kinds() -> dict:
    """`wig embed`'s encoder kinds (`wig.evaluation.encoders.ENCODERS`; no torch at import)."""
    from wig.evaluation.encoders import ENCODERS

    return dict(ENCODERS)
