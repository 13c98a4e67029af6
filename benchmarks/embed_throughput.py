"""Embedding throughput: our embed stage vs a plain batched loop over the same encoder.

Ours: `wig.evaluation.encoders.embed_images` on a sample folder (manifest check, decode, protocol
preprocessing, batched forward, Parquet rows). Plain: decode the same files, preprocess the same
way, forward in batches of the same size, nothing else. Images/s of each, median over
interleaved repeats, and their ratio (goal >= 0.95).

    python benchmarks/embed_throughput.py                       # tiny twins, CPU
    python benchmarks/embed_throughput.py --dino facebook/dino-vits16 --clip ViT-B-32 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from wig.concepts import load_image, prepare_concept
from wig.evaluation.encoders import build_tiny_encoder, embed_images, load_encoder

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "resources/datasets/demo/images"


def _sample_folder(tmp: Path, copies: int) -> Path:
    """A prepared folder of ``copies`` × the demo images (a stand-in for a sample set)."""
    src = tmp / "src"
    src.mkdir()
    for i in range(copies):
        for path in sorted(IMAGES.glob("*/*.jpg")):
            (src / f"{i:03d}_{path.parent.name}_{path.name}").write_bytes(path.read_bytes())
    prepare_concept(src, tmp / "samples")
    return tmp / "samples"


def plain(encoder, folder: Path, protocol: str, batch: int) -> int:
    files = sorted(folder.glob("*.png"))
    for first in range(0, len(files), batch):
        images = [load_image(f) for f in files[first : first + batch]]
        encoder.embed(encoder.preprocess(images, protocol))
    return len(files)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dino", help="real DINO checkpoint name (default: tiny twin)")
    p.add_argument("--clip", help="real open_clip model name (default: tiny twin), with --clip-pretrained")
    p.add_argument("--clip-pretrained", default="openai")
    p.add_argument("--copies", type=int, default=8, help="copies of the 9 demo images (default 8: 72 images)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--protocol", default="dreammatcher", choices=("dreammatcher", "standard"))
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = _sample_folder(tmp, args.copies)
        encoders = {}
        for kind, name in (("dino", args.dino), ("clip", args.clip)):
            if name:
                spec = {"kind": kind, "name": name, **({"pretrained": args.clip_pretrained} if kind == "clip" else {})}
                encoders[kind] = load_encoder(spec, device=args.device)
            else:
                build_tiny_encoder(kind, tmp / kind)
                encoders[kind] = load_encoder({"kind": kind, "tiny": True}, tmp / kind, device=args.device)
        n = len(list(folder.glob("*.png")))
        print(
            f"{n} images, batch {args.batch}, protocol {args.protocol}, device {next(iter(encoders.values())).device}, "
            f"median of {args.repeats}"
        )
        for kind, encoder in encoders.items():
            plain(encoder, folder, args.protocol, args.batch)  # warm-up
            times = {"ours": [], "plain": []}
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                frame = embed_images(encoder, folder, [args.protocol], batch_size=args.batch)
                times["ours"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                plain(encoder, folder, args.protocol, args.batch)
                times["plain"].append(time.perf_counter() - t0)
            assert len(frame) == n
            rate = {k: n / statistics.median(v) for k, v in times.items()}
            print(
                f"  {kind}: ours {rate['ours']:.1f} img/s, plain loop {rate['plain']:.1f} img/s, "
                f"ours/plain {rate['ours'] / rate['plain']:.3f} (goal >= 0.95)"
            )


if __name__ == "__main__":
    main()
