"""Concepts: sheets that describe a dataset, prompt lists, and reference-image preparation.

A dataset is a *sheet* (CSV/TSV, one row per concept) plus an image root holding one folder per
concept. Sheet columns, by meaning (the names are configurable, so DreamBooth's
``subject_name,class`` table is a sheet too):

    concept     id used in result paths                      required
    class_noun  the noun of the concept's class ("dog")      required
    folder      image folder under the root                  default: the concept id
    live        yes/no: a live subject (picks a prompt list) optional
    prompts     prompt-list file, relative to the sheet      default: the dataset's
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import polars as pl
from PIL import Image, ImageOps, UnidentifiedImageError

from wig.atomic import atomic_dir
from wig.errors import WigError

FIELDS = ("concept", "class_noun", "folder", "live", "prompts")
REQUIRED = ("concept", "class_noun")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ConceptError(WigError):
    """A sheet, prompt list or reference image that cannot be used."""


@dataclass(frozen=True)
class Concept:
    id: str
    class_noun: str
    folder: str
    live: bool | None = None
    prompts_file: Path | None = None

    def subject(self, identifier: str = "sks") -> str:
        """What fills a prompt's ``{}``: "<identifier> <class noun>"."""
        return f"{identifier} {self.class_noun}"

    def instance_prompt(self, identifier: str = "sks") -> str:
        return f"a photo of {self.subject(identifier)}"

    def class_prompt(self) -> str:
        return f"a photo of {self.class_noun}"

    def templates(self) -> list[str]:
        """The concept's prompt lines, ``{}`` unfilled."""
        if self.prompts_file is None:
            raise ConceptError(f"concept {self.id}: no prompt list (sheet column 'prompts' or the dataset's default)")
        return read_prompt_list(self.prompts_file)

    def prompts(self, identifier: str = "sks") -> list[str]:
        """The concept's evaluation prompts with ``{}`` filled by `subject`."""
        return [line.format(self.subject(identifier)) for line in self.templates()]

    def clip_texts(self, mode: str = "class") -> list[str]:
        """The texts CLIP-T compares images with: ``class`` fills ``{}`` with the class noun only
        (the identifier means nothing to CLIP); ``raw`` keeps the line as DreamMatcher embeds it."""
        if mode == "raw":
            return self.templates()
        if mode == "class":
            return [line.format(self.class_noun) for line in self.templates()]
        raise ConceptError(f"unknown CLIP-T text mode {mode!r}; choose class or raw")


def read_prompt_list(path: str | os.PathLike) -> list[str]:
    """Prompt templates, one per line, each with exactly one ``{}``; outer whitespace stripped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ConceptError(f"cannot read prompt list {path}: {err.strerror}") from None
    prompts = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        if line.count("{}") != 1 or line.replace("{}", "").count("{") or line.replace("{}", "").count("}"):
            raise ConceptError(f"{path}:{number}: a prompt needs exactly one '{{}}' placeholder: {line!r}")
        prompts.append(line)
    if not prompts:
        raise ConceptError(f"prompt list {path} is empty")
    return prompts


def _truthy(value: str, where: str) -> bool | None:
    value = value.strip().lower()
    if value in ("yes", "true", "1", "y"):
        return True
    if value in ("no", "false", "0", "n"):
        return False
    if value == "":
        return None
    raise ConceptError(f"{where}: 'live' must be yes or no, got {value!r}")


def read_sheet(
    path: str | os.PathLike,
    columns: Mapping[str, str] | None = None,
    prompts: str | os.PathLike | None = None,
) -> dict[str, Concept]:
    """Concepts of a sheet by id. ``columns`` maps a field (see module doc) to the sheet's name for
    it; ``prompts`` is the default prompt list for rows without one."""
    path = Path(path)
    columns = {field: field for field in FIELDS} | dict(columns or {})
    unknown = set(columns) - set(FIELDS)
    if unknown:
        raise ConceptError(f"unknown sheet field(s) {sorted(unknown)}; fields are {', '.join(FIELDS)}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as err:
        raise ConceptError(f"cannot read concept sheet {path}: {err.strerror}") from None
    reader = csv.DictReader(io.StringIO(text), delimiter="\t" if path.suffix in (".tsv", ".tab") else ",")
    header = reader.fieldnames or []
    for field in REQUIRED:
        if columns[field] not in header:
            raise ConceptError(
                f"{path}: no column {columns[field]!r} for the {field} (columns: {', '.join(header) or 'none'})"
            )
    concepts: dict[str, Concept] = {}
    for line, row in enumerate(reader, 2):
        where = f"{path}:{line}"

        def get(field: str) -> str:
            return (row.get(columns[field]) or "").strip()

        cid, noun = get("concept"), get("class_noun")
        if not _ID.match(cid):
            raise ConceptError(f"{where}: concept id {cid!r} must be letters, digits, '.', '_' or '-'")
        if not noun:
            raise ConceptError(f"{where}: concept {cid} has no class noun")
        if cid in concepts:
            raise ConceptError(f"{where}: concept {cid} listed twice")
        prompt_file = get("prompts")
        concepts[cid] = Concept(
            id=cid,
            class_noun=noun,
            folder=get("folder") or cid,
            live=_truthy(get("live"), where),
            prompts_file=(path.parent / prompt_file) if prompt_file else (Path(prompts) if prompts else None),
        )
    if not concepts:
        raise ConceptError(f"concept sheet {path} lists no concept")
    return concepts


# --- reference images ----------------------------------------------------------------------


def save_png(image: Image.Image, path: str | os.PathLike) -> str:
    """Write ``image`` as PNG; returns the sha256 of the bytes written."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    Path(path).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode PIL opens: 16-bit gray is rescaled (not clipped), transparency
    is composited on white, CMYK and palettes are converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        scale = 257.0 if image.mode.startswith("I;16") or values.max() > 255 else 1.0
        image = Image.fromarray(np.clip(np.rint(values / scale), 0, 255).astype(np.uint8))
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.rint(np.asarray(image) * 255), 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open, fully decode, apply EXIF orientation and convert to RGB; a broken file raises a
    `ConceptError` naming it."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not later
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ConceptError(f"{path}: not a readable image ({err})") from None


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files of a concept folder, sorted by name; hidden files are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConceptError(f"concept folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise ConceptError(f"concept folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


MANIFEST_SCHEMA = {
    "path": pl.String,  # file name, relative to the manifest's folder
    "source": pl.String,  # the original file
    "source_sha256": pl.String,
    "sha256": pl.String,  # of the PNG written
    "width": pl.Int64,
    "height": pl.Int64,
}


def prepare_concept(src: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False):
    """Validate and normalise a concept's reference images into ``out``: ``NN.png`` (RGB,
    EXIF orientation applied, original size) and ``manifest.parquet``.

    Every image is checked before anything is written; on error ``out`` does not exist.
    """
    files = image_files(src)
    images = [load_image(f) for f in files]
    rows = []
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for i, (source, image) in enumerate(zip(files, images)):
            name = f"{i:02d}.png"
            rows.append({
                "path": name,
                "source": str(source),
                "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
                "sha256": save_png(image, tmp / name),
                "width": image.width,
                "height": image.height,
            })
        manifest = pl.DataFrame(rows, schema=MANIFEST_SCHEMA)
        manifest.write_parquet(tmp / "manifest.parquet")
    return manifest


def read_images(folder: str | os.PathLike) -> list[Image.Image]:
    """The images of a prepared folder (its manifest order) or of any image folder."""
    folder = Path(folder)
    manifest = folder / "manifest.parquet"
    if manifest.is_file():
        files = [folder / p for p in pl.read_parquet(manifest)["path"]]
    else:
        files = image_files(folder)
    return [load_image(f) for f in files]
