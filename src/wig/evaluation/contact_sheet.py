"""Contact sheets: same-seed samples side by side, rows labelled by method and grid point (rule grid)."""

from __future__ import annotations

import os
from typing import Sequence

from PIL import Image, ImageDraw

from wig.atomic import replace_file, tmp_path
from wig.errors import WigError


def contact_sheet(
    images: Sequence[str | os.PathLike],
    rows: Sequence[str],
    columns: Sequence[str],
    out: str | os.PathLike,
    label_width: int = 160,
    header: int = 16,
) -> None:
    """Write a row-major grid of ``images`` with row and column labels (PNG)."""
    if len(images) != len(rows) * len(columns):
        raise WigError(f"grid: {len(images)} images for {len(rows)} rows × {len(columns)} columns")
    tiles = [Image.open(p).convert("RGB") for p in images]
    w, h = tiles[0].size
    sheet = Image.new("RGB", (label_width + w * len(columns), header + h * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for j, name in enumerate(columns):
        draw.text((label_width + j * w + 2, 2), name[: max(1, w // 6)], fill="black")
    for i, name in enumerate(rows):
        draw.text((2, header + i * h + h // 2 - 5), name, fill="black")
        for j in range(len(columns)):
            tile = tiles[i * len(columns) + j]
            if tile.size != (w, h):
                raise WigError(f"grid: {images[i * len(columns) + j]} is {tile.size}, expected {(w, h)}")
            sheet.paste(tile, (label_width + j * w, header + i * h))
    tmp = tmp_path(out)
    sheet.save(tmp, format="PNG")
    replace_file(tmp, out)
