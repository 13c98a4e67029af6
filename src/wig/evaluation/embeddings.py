"""Embedding files (Parquet) and their checks; no torch needed to read them.

Image embeddings: one row per (image, protocol) — ``path`` (relative to the sample set's or
reference folder's manifest), ``sha256`` of the image, ``encoder`` (`wig.provenance.encoder_id`),
``protocol``, ``embedding`` (fixed-size float32 array, not normalised).
Text embeddings: one row per prompt — ``index``, ``text``, ``encoder``, ``embedding``.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from wig.errors import WigError
from wig.readers import read_table


class EmbeddingError(WigError):
    """An embeddings file or sample set that does not fit what a stage expects."""


def image_schema(dim: int) -> dict:
    return {
        "path": pl.String,
        "sha256": pl.String,
        "encoder": pl.String,
        "protocol": pl.String,
        "embedding": pl.Array(pl.Float32, dim),
    }


def text_schema(dim: int) -> dict:
    return {"index": pl.Int64, "text": pl.String, "encoder": pl.String, "embedding": pl.Array(pl.Float32, dim)}


def read_embeddings(path: str | os.PathLike, encoder: str, dim: int | None = None) -> pl.DataFrame:
    """Read an embeddings file, refusing one written by another encoder or of another width."""
    path = Path(path)
    frame = read_table(path, "embeddings", EmbeddingError, columns=("encoder", "embedding"))
    found = set(frame["encoder"].unique().to_list())
    if found != {encoder}:
        raise EmbeddingError(f"{path} holds embeddings of {sorted(found)}, expected {encoder}")
    dtype = frame.schema["embedding"]
    width = dtype.size if isinstance(dtype, pl.Array) else None
    if width is None or (dim is not None and width != dim):
        raise EmbeddingError(f"{path}: embedding width {width}, expected {dim}")
    return frame
