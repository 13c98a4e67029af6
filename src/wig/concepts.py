"""Concepts: sheets that describe a dataset, prompt lists, and reference-image preparation.

A dataset is a *sheet* (CSV/TSV, one row per concept) plus an image root holding one folder per
concept. Sheet columns, by meaning (the names are configurable, so DreamBooth's
``subject_name,class`` table is a sheet too):

    concept     id used in result paths                      required
    class_noun  the noun of the concept's class ("dog")      required column; an empty cell = a
                                                             concept with no subject to name (a
                                                             prompt set, a style): prompts whole
    folder      image folder under the root                  default: the concept id
    live        yes/no: a live subject                       optional; picks the dataset's
                                                             prompt list when it has one per kind
    prompts     prompt-list file, relative to the sheet      default: the dataset's

A prompt list is a text file, one prompt per line, or a TSV with a ``Prompt`` column (PartiPrompts'
published layout). A concept with a class noun fills each line's one ``{}`` with its subject; a
concept without one (PartiPrompts, a style reference) uses its lines whole, and a ``{}`` there is an
error. A dataset without an image root (``dataset.root`` unset) is a prompt set: no reference images.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from wig.atomic import atomic_dir
from wig.errors import WigError
from wig.readers import read_table, read_text

FIELDS = ("concept", "class_noun", "folder", "live", "prompts")
REQUIRED = ("concept", "class_noun")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".gif", ".bmp")
# Reference photos larger than this many pixels are refused (PIL's decompression-bomb guard, at
# wig's own limit): a 196-MP camera photo loads, a 74-byte PNG declaring 100000 × 100000 does not.
MAX_PIXELS = 256_000_000
# ... and photos are kept at most this many pixels on their long side (LANCZOS): training resizes
# to 512 (SD) or 1024 (SANA) and the encoders to 224, so 2048 keeps 2× the largest of them.
MAX_SIDE = 2048
log = logging.getLogger("wig.concepts")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ConceptError(WigError):
    """A sheet, prompt list or reference image that cannot be used."""


class PlaceholderError(ConceptError):
    """A prompt line whose ``{}`` placeholders do not fit the concept (one needed, or none)."""


@dataclass(frozen=True)
class Concept:
    id: str
    class_noun: str
    folder: str
    live: bool | None = None
    prompts_file: Path | None = None
    prompt_lines: tuple[str, ...] | None = None  # templates read with the sheet (a DreamBooth table), not a file

    @property
    def named(self) -> bool:
        """Whether the concept has a subject to name (a class noun): its prompt lines hold ``{}``."""
        return bool(self.class_noun)

    def subject(self, identifier: str = "sks") -> str:
        """What fills a prompt's ``{}``: "<identifier> <class noun>" (the class noun alone for a
        fine-tune that names no subject, identifier "")."""
        return f"{identifier} {self.class_noun}" if identifier else self.class_noun

    def instance_prompt(self, identifier: str = "sks") -> str:
        return f"a photo of {self.subject(identifier)}"

    def class_prompt(self) -> str:
        return f"a photo of {self.class_noun}"

    def templates(self) -> list[str]:
        """The concept's prompt lines, ``{}`` unfilled."""
        if self.prompt_lines is not None:
            return list(self.prompt_lines)
        if self.prompts_file is None:
            raise ConceptError(f"concept {self.id}: no prompt list (sheet column 'prompts' or the dataset's default)")
        try:
            return read_prompt_list(self.prompts_file, placeholder=self.named)
        except PlaceholderError as err:
            if self.named:
                raise
            raise PlaceholderError(
                f"concept {self.id} has no class noun, so its prompts are used whole: {err}"
            ) from None

    def prompts(self, identifier: str = "sks") -> list[str]:
        """The concept's evaluation prompts with ``{}`` filled by `subject`."""
        return [line.format(self.subject(identifier)) for line in self.templates()]

    def clip_texts(self, mode: str = "class") -> list[str]:
        """The texts CLIP-T compares images with: ``class`` fills ``{}`` with the class noun only
        (the identifier means nothing to CLIP); ``raw`` keeps the line as DreamMatcher embeds it."""
        if mode == "raw":
            return self.templates()
        if mode == "class":
            return TEXTS["class_prompt"](self)
        raise ConceptError(f"unknown CLIP-T text mode {mode!r}; choose class or raw")


# Texts a guidance branch may be conditioned on beside the prompt and the negative prompt
# (`wig.guidance.base.GuidanceMethod.extra_texts`), one per prompt line, built from the concept:
# the workflow hands a generation job the texts its points name. A plug-in adds one with
# `register_text`.
TEXTS: dict[str, Callable[[Concept], list[str]]] = {}


def register_text(name: str):
    """Decorator: make ``builder(concept) -> one text per prompt line`` known as ``name``."""

    def add(builder: Callable[[Concept], list[str]]):
        if name in TEXTS and TEXTS[name] is not builder:
            raise ConceptError(f"concept text {name!r} is registered twice")
        TEXTS[name] = builder
        return builder

    return add


@register_text("class_prompt")
def class_prompts(concept: Concept) -> list[str]:
    """Each prompt with the subject replaced by its class noun ("a dog in the snow" for "a sks dog
    in the snow"): a subject-agnostic condition, and CLIP-T's text."""
    return [line.format(concept.class_noun) for line in concept.templates()]


PROMPT_COLUMN = "Prompt"  # a TSV prompt list's column (PartiPrompts.tsv as google-research/parti publishes it)


def read_prompt_list(path: str | os.PathLike, placeholder: bool = True) -> list[str]:
    """Prompts, one per line (or the ``Prompt`` column of a ``.tsv``), outer whitespace stripped;
    with ``placeholder`` each holds exactly one ``{}`` (a template), else none (used whole)."""
    path = Path(path)
    text = read_text(path, "prompt list", ConceptError)
    if not text.strip():
        raise ConceptError(f"prompt list {path} is empty")
    if path.suffix == ".tsv":
        # the published file quotes nothing: a prompt that opens with '"' keeps it
        reader = csv.DictReader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
        if PROMPT_COLUMN not in (reader.fieldnames or []):
            found = ", ".join(repr(name) for name in reader.fieldnames or []) or "none"
            raise ConceptError(f"{path}: a TSV prompt list needs a {PROMPT_COLUMN!r} column (its header: {found})")
        numbered = [(number, row[PROMPT_COLUMN] or "") for number, row in enumerate(reader, 2)]
    else:
        numbered = list(enumerate(text.splitlines(), 1))
    prompts = []
    for number, line in numbered:
        line = line.strip()
        if not line:
            continue
        braces = line.replace("{}", "").count("{") + line.replace("{}", "").count("}")
        if placeholder and (line.count("{}") != 1 or braces):
            raise PlaceholderError(f"{path}:{number}: a prompt needs exactly one '{{}}' placeholder: {line!r}")
        if not placeholder and (braces or "{}" in line):
            raise PlaceholderError(f"{path}:{number}: a prompt used whole has no '{{}}' or braces: {line!r}")
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
    prompts: str | os.PathLike | Mapping[str, str | os.PathLike] | None = None,
) -> dict[str, Concept]:
    """Concepts of a sheet by id. ``columns`` maps a field (see module doc) to the sheet's name for
    it; ``prompts`` is the default prompt list for rows without one: a file for all of them, or
    ``{"live": file, "object": file}``, from which each row's ``live`` flag picks (ViCo and
    DreamBooth prompt live subjects and objects differently)."""
    path = Path(path)
    columns = {field: field for field in FIELDS} | dict(columns or {})
    unknown = set(columns) - set(FIELDS)
    if unknown:
        raise ConceptError(f"unknown sheet field(s) {sorted(unknown)}; fields are {', '.join(FIELDS)}")
    text = read_text(path, "concept sheet", ConceptError)
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
        if cid in concepts:
            raise ConceptError(f"{where}: concept {cid} listed twice")
        prompt_file, live = get("prompts"), _truthy(get("live"), where)
        if prompt_file:
            prompts_file = path.parent / prompt_file
        elif isinstance(prompts, Mapping):
            if live is None:
                raise ConceptError(
                    f"{where}: concept {cid} needs 'live' (yes/no) to pick its prompt list "
                    f"(live: {prompts['live']}, object: {prompts['object']})"
                )
            prompts_file = Path(prompts["live" if live else "object"])
        else:
            prompts_file = Path(prompts) if prompts else None
        concepts[cid] = Concept(
            id=cid, class_noun=noun, folder=get("folder") or cid, live=live, prompts_file=prompts_file
        )
    if not concepts:
        raise ConceptError(f"concept sheet {path} lists no concept")
    return concepts


# --- the DreamBooth benchmark's table -------------------------------------------------------

# google/dreambooth's dataset/prompts_and_classes.txt: a "Classes" section holding a
# ``subject_name,class`` CSV, then "Object Prompts" and "Live Subject Prompts", each a Python list
# of ``'a {0} {1} in the jungle'.format(unique_token, class_token)`` lines. Its live subjects are
# the dogs and cats (the paper's "live subjects": class dog or cat).
DREAMBOOTH_LIVE = ("dog", "cat")
_DB_PROMPT = re.compile(r"""^'(?P<text>[^']*)'\.format\(unique_token, class_token\),?$""")
_DB_SECTIONS = {"Object Prompts": "object", "Live Subject Prompts": "live"}


def read_dreambooth(path: str | os.PathLike) -> dict[str, Concept]:
    """The 30 subjects of the DreamBooth dataset from its ``prompts_and_classes.txt`` as google
    publishes it: concept id and folder = ``subject_name``, class noun = ``class``, live = a dog or
    cat, and the 25 prompts of the subject's kind as ``{}`` templates (``{0} {1}`` — identifier,
    class — becomes ``{}``, which wig fills with "<identifier> <class noun>"). A line that is none of
    these raises a `ConceptError` naming the file and line."""
    path = Path(path)
    lines = read_text(path, "DreamBooth table", ConceptError).splitlines()
    classes: dict[str, str] = {}
    prompts: dict[str, list[str]] = {"object": [], "live": []}
    section = None  # "classes", "object", "live", or a header between them
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        where = f"{path}:{number}"
        if not line or line in ("Classes", "Prompts", "prompt_list = [", "]", "subject_name,class"):
            if line == "Classes" or line == "subject_name,class":
                section = "classes"
            elif line == "]":
                section = None
            continue
        if line in _DB_SECTIONS:
            section = _DB_SECTIONS[line]
            continue
        if section == "classes":
            name, sep, noun = line.partition(",")
            if not sep or not _ID.match(name.strip()) or not noun.strip() or "," in noun:
                raise ConceptError(f"{where}: expected 'subject_name,class', got {line!r}")
            if name.strip() in classes:
                raise ConceptError(f"{where}: subject {name.strip()} listed twice")
            classes[name.strip()] = noun.strip()
        elif section in ("object", "live"):
            match = _DB_PROMPT.match(line)
            text = match["text"] if match else ""
            if not match or text.count("{0} {1}") != 1 or text.replace("{0} {1}", "").count("{"):
                raise ConceptError(
                    f"{where}: expected a prompt written as \"'a {{0}} {{1}} …'.format(unique_token, class_token),\""
                    f", got {line!r}"
                )
            prompts[section].append(text.replace("{0} {1}", "{}"))
        else:
            raise ConceptError(f"{where}: not part of the DreamBooth table's sections: {line!r}")
    for kind, found in prompts.items():
        if not found:
            raise ConceptError(f"{path}: no {'Live Subject' if kind == 'live' else 'Object'} Prompts list")
    if not classes:
        raise ConceptError(f"{path}: no subject_name,class table")
    return {
        name: Concept(
            id=name,
            class_noun=noun,
            folder=name,
            live=noun in DREAMBOOTH_LIVE,
            prompts_file=path,
            prompt_lines=tuple(prompts["live" if noun in DREAMBOOTH_LIVE else "object"]),
        )
        for name, noun in classes.items()
    }


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


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open, fully decode, apply EXIF orientation and convert to RGB. Anything PIL refuses — a
    broken or truncated file, more than ``max_pixels`` pixels, an animation (which frame would
    be the subject?) — raises a `ConceptError` naming the file."""
    path = Path(path)
    previous = Image.MAX_IMAGE_PIXELS
    try:
        # PIL warns above MAX_IMAGE_PIXELS and refuses above twice that: both are a refusal here
        Image.MAX_IMAGE_PIXELS = max_pixels
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                frames = getattr(image, "n_frames", 1)
                if frames > 1:
                    raise ConceptError(
                        f"{path}: an animation of {frames} frames, not a photo (save the frame you mean as a PNG)"
                    )
                image.load()  # decode now: a truncated file fails here, not later
                image = ImageOps.exif_transpose(image)
                return to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ConceptError(
            f"{path}: more than the {max_pixels:,} pixels an image may have (wig.concepts.MAX_PIXELS, "
            f"dataset.max_image_pixels): {err}"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        raise ConceptError(f"{path}: not a readable image ({err})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def check_image_headers(files) -> None:
    """Each file opens as an image — its header alone, cheap enough to run when a config is read —
    or a `ConceptError` names it in one line: an empty (zero-byte) or foreign file among a concept's
    photos stops the study before any job (rule prepare decodes them in full, `load_image`)."""
    for path in map(Path, files):
        try:
            if path.stat().st_size == 0:
                raise ConceptError(f"{path}: an empty file (0 bytes), not an image")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path):
                    pass
        except Image.DecompressionBombError:
            continue  # a pixel count rule prepare refuses at the configured limit
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
            raise ConceptError(f"{path}: not a readable image ({err})") from None


def fit_within(image: Image.Image, max_side: int) -> Image.Image:
    """``image`` with its long side at most ``max_side`` (LANCZOS, aspect kept), else itself."""
    if max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files of a concept folder, sorted by name; hidden files are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConceptError(f"concept folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise ConceptError(f"concept folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


MANIFEST_COLUMNS = {  # name -> polars dtype (polars is imported where a manifest is written)
    "path": "String",  # file name, relative to the manifest's folder
    "source": "String",  # the original file
    "source_sha256": "String",
    "sha256": "String",  # of the PNG written
    "width": "Int64",  # as kept (at most max_side on the long side)
    "height": "Int64",
    "source_width": "Int64",  # as decoded, after EXIF orientation
    "source_height": "Int64",
}


def prepare_concept(
    src: str | os.PathLike,
    out: str | os.PathLike,
    overwrite: bool = False,
    max_pixels: int = MAX_PIXELS,
    max_side: int = MAX_SIDE,
):
    """Validate and normalise a concept's reference images into ``out``: ``NN.png`` (RGB,
    EXIF orientation applied, the long side at most ``max_side``) and ``manifest.parquet``.

    Every image is checked before anything is written; on error ``out`` does not exist. Files of
    the folder that are not images (by suffix) are skipped with a warning naming them.
    """
    files = image_files(src)
    others = sorted(
        p.name for p in Path(src).iterdir() if p.is_file() and p not in files and not p.name.startswith(".")
    )
    if others:
        log.warning(
            "%s: skipped %d file(s) that are not images (%s): %s",
            src,
            len(others),
            ", ".join(IMAGE_SUFFIXES),
            ", ".join(others),
        )
    kept = []  # one full-size photo in memory at a time
    for f in files:
        original = load_image(f, max_pixels=max_pixels)
        kept.append((fit_within(original, max_side), original.size))
    rows = []
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for i, (source, (image, (source_width, source_height))) in enumerate(zip(files, kept)):
            name = f"{i:02d}.png"
            rows.append(
                {
                    "path": name,
                    "source": str(source),
                    "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
                    "sha256": save_png(image, tmp / name),
                    "width": image.width,
                    "height": image.height,
                    "source_width": source_width,
                    "source_height": source_height,
                }
            )
        import polars as pl  # here, not at the top: `wig generate` reads images without the workflow extra

        manifest = pl.DataFrame(rows, schema={name: getattr(pl, kind) for name, kind in MANIFEST_COLUMNS.items()})
        manifest.write_parquet(tmp / "manifest.parquet")
    return manifest


def read_images(folder: str | os.PathLike) -> list[Image.Image]:
    """The images of a prepared folder (its manifest order) or of any image folder."""
    folder = Path(folder)
    manifest = folder / "manifest.parquet"
    if manifest.is_file():
        files = [folder / p for p in read_table(manifest, "image manifest", ConceptError, columns=("path",))["path"]]
    else:
        files = image_files(folder)
    return [load_image(f) for f in files]
