"""Loading, building and resolving the metrics' encoders by kind (the registry: `ENCODERS`, complete
once `wig.evaluation.plugins` is imported, which this module does), and embedding files.

Each kind (DINO, CLIP, PickScore, DreamSim, the synthetic scene encoder) is its own module; the
preprocessing protocols are `wig.evaluation.base.PROTOCOLS`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from wig.concepts import load_image
from wig.evaluation import plugins  # noqa: F401  (the shipped kinds register themselves)
from wig.evaluation.base import ENCODERS, Encoder, encoder_class, first_line
from wig.evaluation.embeddings import EmbeddingError, image_schema, text_schema
from wig.gpus import resolve_device
from wig.readers import read_table

if TYPE_CHECKING:  # torch, numpy and PIL load when an encoder does: the study reads the registry at parse
    import polars as pl

__all__ = ["ENCODERS", "Encoder", "build_tiny_encoder", "embed_images", "embed_texts", "encoder_class", "load_encoder"]


def resolve_encoder(spec: dict) -> dict:
    """A real encoder's weights in the local cache, as its kind fetches them (`Encoder.resolve`:
    DINO's transformers repo, CLIP's open_clip name + pretrained tag, PickScore's model and
    processor repos); a record for `wig.weights.write_record`."""
    return encoder_class(spec["kind"]).resolve(spec)


def load_encoder(spec: dict, path: str | os.PathLike | None = None, device: str = "auto") -> Encoder:
    """Load the encoder a config entry names; ``path`` is the folder of a built tiny twin, or of
    real weights resolved by `wig.weights` (then nothing is fetched)."""
    cls = encoder_class(spec["kind"])
    if spec.get("tiny") and (path is None or not Path(path).is_dir()):
        raise EmbeddingError(f"tiny {cls.kind} encoder not built: {path}")
    source = str(path) if path is not None else spec["name"]
    try:
        return cls.load(spec, source, resolve_device(device))
    except (OSError, RuntimeError, ValueError) as err:
        raise EmbeddingError(f"cannot load {cls.kind} encoder {source}: {first_line(err)}") from None
    except KeyError as err:  # a config file without an entry the encoder reads
        raise EmbeddingError(f"cannot load {cls.kind} encoder {source}: its config has no {err}") from None


def build_tiny_encoder(kind: str, out: str | os.PathLike, seed: int = 0) -> None:
    """A kind's random-init twin in ``out``, from ``seed`` (the global torch RNG is restored)."""
    import torch

    cls = encoder_class(kind)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        cls.build_tiny(out)
    finally:
        torch.random.set_rng_state(state)


# --- embedding files -----------------------------------------------------------------------


def embed_images(
    encoder: Encoder,
    folder: str | os.PathLike,
    protocols: Sequence[str],
    batch_size: int = 32,
) -> pl.DataFrame:
    """One row per (image of ``folder``'s manifest, protocol). Each image is decoded once and
    goes through the encoder once per protocol, in batches."""
    import polars as pl

    folder = Path(folder)
    manifest_path = folder / "manifest.parquet"
    if not manifest_path.is_file():
        raise EmbeddingError(f"no manifest.parquet in {folder}")
    manifest = read_table(manifest_path, "image manifest", EmbeddingError, columns=("path", "sha256"))
    missing = [p for p in manifest["path"] if not (folder / p).is_file()]
    if missing:
        raise EmbeddingError(f"{folder}: {len(missing)} image(s) of the manifest are missing, e.g. {missing[0]}")
    paths, hashes = manifest["path"].to_list(), manifest["sha256"].to_list()
    rows: dict[str, list] = {"path": [], "sha256": [], "encoder": [], "protocol": [], "embedding": []}
    for first in range(0, len(paths), batch_size):
        batch = paths[first : first + batch_size]
        images = [load_image(folder / p) for p in batch]
        for protocol in protocols:
            emb = encoder.embed(encoder.preprocess(images, protocol)).numpy()
            rows["path"] += batch
            rows["sha256"] += hashes[first : first + batch_size]
            rows["encoder"] += [encoder.id] * len(batch)
            rows["protocol"] += [protocol] * len(batch)
            rows["embedding"] += list(emb)
    dim = len(rows["embedding"][0])
    return pl.DataFrame(rows, schema=image_schema(dim))


def embed_texts(encoder: Encoder, texts: Sequence[str]) -> pl.DataFrame:
    """One row per text: ``index`` (position), ``text``, ``encoder``, ``embedding``."""
    import polars as pl

    emb = encoder.embed_texts(texts).numpy()
    return pl.DataFrame(
        {
            "index": list(range(len(texts))),
            "text": list(texts),
            "encoder": [encoder.id] * len(texts),
            "embedding": list(emb),
        },
        schema=text_schema(emb.shape[1]),
    )
