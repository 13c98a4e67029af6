"""A procedurally rendered world where a subject's identity and a prompt's content can be read
back from pixels exactly (`wig.synthetic.oracle`): one object on a flat background.

A scene is a shape (circle, square, triangle) of a palette colour, or of a two-tone *pattern*, at
an integer centre and radius, on a palette background. Pretraining sees plain objects only; a
*subject* is a shape with a pattern pretraining never shows (a triangle whose top half is yellow
and bottom half magenta), which a DreamBooth LoRA has to learn from a few images.

Rendering is hard-edged (no antialiasing): every pixel is exactly a palette colour, so a ground-
truth render scores 1.0 on every oracle metric.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from wig.errors import WigError

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "cyan": (60, 210, 220),
    "blue": (40, 70, 220),
    "magenta": (210, 50, 200),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
# pattern → which of its two colours a pixel at offset (dx, dy) from the centre takes (True: first)
PATTERNS = {
    "hsplit": lambda dx, dy, r: dy < 0,  # top half / bottom half
    "vsplit": lambda dx, dy, r: dx < 0,  # left half / right half
    "diagonal": lambda dx, dy, r: dx + dy < 0,
    "core": lambda dx, dy, r: dx * dx + dy * dy < (r / 2) ** 2,  # inner disc / outer rim
    "quadrants": lambda dx, dy, r: (dx < 0) == (dy < 0),
}


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str  # the object's colour, or the first colour of its pattern
    background: str
    cx: int
    cy: int
    radius: int
    pattern: str | None = None
    colour2: str | None = None  # second colour of the pattern
    size: int = 32

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise WigError(f"unknown shape {self.shape!r}; choose from {', '.join(SHAPES)}")
        for c in (self.colour, self.background, *([self.colour2] if self.pattern else [])):
            if c not in PALETTE:
                raise WigError(f"unknown colour {c!r}; choose from {', '.join(PALETTE)}")
        if self.pattern is not None and self.pattern not in PATTERNS:
            raise WigError(f"unknown pattern {self.pattern!r}; choose from {', '.join(PATTERNS)}")
        if self.background in (self.colour, self.colour2):
            raise WigError(f"object and background share the colour {self.background}")


def shape_mask(shape: str, cx: int, cy: int, radius: int, size: int) -> np.ndarray:
    """Boolean (size, size) mask of a shape, evaluated at pixel centres."""
    return _shape_mask(shape, cx, cy, radius, size).copy()


@lru_cache(maxsize=8192)
def _shape_mask(shape: str, cx: int, cy: int, radius: int, size: int) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    dx, dy = xs - cx, ys - cy
    r = float(radius)
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":  # half-side r − 2: about the others' area, and one pixel per radius step
        h = r - 2
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "triangle":
        return _inside_polygon(dx, dy, [(r * math.cos(a), r * math.sin(a)) for a in _angles(3)])
    raise WigError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")


def _angles(n: int) -> list[float]:
    return [-math.pi / 2 + 2 * math.pi * i / n for i in range(n)]  # first vertex points up


def _inside_polygon(x: np.ndarray, y: np.ndarray, pts: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd rule point-in-polygon, vectorised over pixels."""
    inside = np.zeros(x.shape, dtype=bool)
    for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1]):
        crosses = (y1 > y) != (y2 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (x < x_at)
    return inside


def pattern_first(pattern: str, cx: int, cy: int, radius: int, size: int) -> np.ndarray:
    """Where a pattern takes its first colour (over the whole canvas)."""
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    return PATTERNS[pattern](xs - cx, ys - cy, float(radius))


def render_array(scene: Scene) -> np.ndarray:
    """(size, size, 3) uint8."""
    img = np.empty((scene.size, scene.size, 3), dtype=np.uint8)
    img[:] = PALETTE[scene.background]
    mask = _shape_mask(scene.shape, scene.cx, scene.cy, scene.radius, scene.size)
    if scene.pattern is None:
        img[mask] = PALETTE[scene.colour]
    else:
        first = pattern_first(scene.pattern, scene.cx, scene.cy, scene.radius, scene.size)
        img[mask & first] = PALETTE[scene.colour]
        img[mask & ~first] = PALETTE[scene.colour2]
    return img


def render(scene: Scene):
    from PIL import Image

    return Image.fromarray(render_array(scene))


def caption(scene: Scene, identifier: str | None = None, colour: bool = True, background: bool = True) -> str:
    """ "a red circle on a blue background"; a subject: "a sks triangle on a white background"; the
    colour or background may be left unsaid ("a circle on a blue background", "a red circle")."""
    words = ["a"]
    if identifier:
        words.append(identifier)
    elif colour:
        words.append(scene.colour)
    words.append(scene.shape)
    if background:
        words += ["on", "a", scene.background, "background"]
    return " ".join(words)


@dataclass(frozen=True)
class Subject:
    """A shape with a two-tone pattern pretraining never shows."""

    name: str
    shape: str
    pattern: str
    colour: str
    colour2: str
    train_backgrounds: tuple[str, ...] = ("white", "black")

    def scene(self, background: str, cx: int, cy: int, radius: int, size: int = 32) -> Scene:
        return Scene(self.shape, self.colour, background, cx, cy, radius, self.pattern, self.colour2, size)


SUBJECTS = (
    Subject("yellow_magenta_triangle", "triangle", "hsplit", "yellow", "magenta"),
    Subject("red_blue_circle", "circle", "vsplit", "red", "blue"),
    Subject("green_cyan_square", "square", "core", "green", "cyan"),
    # diagonal, not quadrants: rank-8 LoRAs of 2000 steps learned the quadrant circle to 0.70-0.74
    # subject fidelity (4 boundaries through the centre at the 8 x 8 attention layers), the others >= 0.80
    Subject("blue_yellow_circle", "circle", "diagonal", "blue", "yellow"),
    Subject("magenta_green_square", "square", "diagonal", "magenta", "green"),
)
# patterns a drawn subject may have: the quadrant split is left out, for the reason above
DRAWN_PATTERNS = ("hsplit", "vsplit", "diagonal", "core")


def every_subject() -> list[Subject]:
    """Every subject the world can pose that pretraining never shows, named
    ``<colour>_<colour2>_<pattern>_<shape>``: 3 shapes × the drawn patterns × the 30 ordered pairs
    of the 6 object colours (white and black are the training backgrounds) — 360 in all."""
    colours = [c for c in PALETTE if c not in Subject.__dataclass_fields__["train_backgrounds"].default]
    return [
        Subject(f"{c1}_{c2}_{pattern}_{shape}", shape, pattern, c1, c2)
        for shape in SHAPES
        for pattern in DRAWN_PATTERNS
        for c1 in colours
        for c2 in colours
        if c1 != c2
    ]


def draw_subjects(n: int, seed: int = 0) -> tuple[Subject, ...]:
    """``n`` distinct subjects drawn at random (numpy, ``seed``) from `every_subject` less the five
    of `SUBJECTS` — new subjects for a study that must not reuse the ones its pilot looked at."""
    known = {(s.shape, s.pattern, s.colour, s.colour2) for s in SUBJECTS}
    pool = [s for s in every_subject() if (s.shape, s.pattern, s.colour, s.colour2) not in known]
    if not 1 <= n <= len(pool):
        raise WigError(f"the world has {len(pool)} new subjects; asked for {n}")
    order = np.random.default_rng(seed).permutation(len(pool))[:n]
    return tuple(pool[i] for i in order)


def subject_named(name: str) -> Subject:
    """A subject by name: one of `SUBJECTS`, or any of `every_subject` by its descriptive name."""
    for subject in SUBJECTS:
        if subject.name == name:
            return subject
    parts = name.split("_")
    if len(parts) == 4 and parts[2] in PATTERNS:
        c1, c2, pattern, shape = parts
        if shape in SHAPES and c1 in PALETTE and c2 in PALETTE and c1 != c2:
            return Subject(name, shape, pattern, c1, c2)
    raise WigError(
        f"{name!r} is not a subject of the synthetic world: one of {', '.join(s.name for s in SUBJECTS)}, "
        "or <colour>_<colour2>_<pattern>_<shape>"
    )


@dataclass
class Layout:
    """The jitter of the world: radius and centre ranges for a canvas size."""

    size: int = 32
    radii: tuple[int, ...] = field(default=(10, 11, 12))
    jitter: int = 2

    def draw(self, rng: np.random.Generator) -> tuple[int, int, int]:
        c = self.size // 2
        cx, cy = (c + int(rng.integers(-self.jitter, self.jitter + 1)) for _ in range(2))
        return cx, cy, int(rng.choice(self.radii))


_PROMPT = re.compile(
    rf"^an? (?:(?P<colour>{'|'.join(PALETTE)}) )?(?:\S+ )?(?P<shape>{'|'.join(SHAPES)}) "
    rf"on an? (?P<background>{'|'.join(PALETTE)}) background$"
)


def prompt_attributes(prompt: str) -> dict[str, str]:
    """What a world prompt states — background, shape, and colour if named — for the oracle's
    text fidelity: "a blue sks triangle on a red background" → background red, colour blue, shape triangle."""
    m = _PROMPT.match(prompt.strip())
    if m is None:
        raise WigError(f"not a prompt of the synthetic world: {prompt!r}")
    return {k: v for k, v in m.groupdict().items() if v is not None}


def evaluation_prompts(subject: Subject) -> list[str]:
    """Held-out prompts ("{}" = identifier + shape): the subject on every background it was not
    trained on, then in colours that conflict with its pattern (on the first of those backgrounds)."""
    own = {subject.colour, subject.colour2}
    backgrounds = [c for c in PALETTE if c not in own and c not in subject.train_backgrounds]
    others = [c for c in PALETTE if c not in own and c != backgrounds[0]]
    return [f"a {{}} on a {bg} background" for bg in backgrounds] + [
        f"a {c} {{}} on a {backgrounds[0]} background" for c in others[:2]
    ]


def write_sheet(out: str | os.PathLike, subjects: Sequence[Subject] = SUBJECTS) -> Path:
    """The subjects as a concept sheet (`wig.concepts` format): ``concepts.csv`` (class noun = the
    shape, image folder = the subject's name) and a held-out prompt list ``<subject>.txt`` each."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for subject in subjects:
        (out / f"{subject.name}.txt").write_text("\n".join(evaluation_prompts(subject)) + "\n")
        rows.append(
            {
                "concept": subject.name,
                "folder": subject.name,
                "class_noun": subject.shape,
                "live": "no",
                "prompts": f"{subject.name}.txt",
            }
        )
    with open(out / "concepts.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out / "concepts.csv"


def render_images(
    root: str | os.PathLike,
    n_images: int = 5,
    size: int = 32,
    seed: int = 0,
    subjects: Sequence[Subject] = SUBJECTS,
) -> None:
    """``<subject>/NN.png`` for every subject, in order: its training backgrounds in turn, jittered
    layout. Deterministic in (n_images, size, seed, the subjects in order)."""
    if not 4 <= n_images <= 12:
        raise WigError(f"n_images must lie in [4, 12], got {n_images}")
    if size % 32:
        raise WigError(f"size must be a multiple of 32, got {size}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    k = size // 32
    layout = Layout(size=size, radii=tuple(r * k for r in Layout().radii), jitter=2 * k)
    for subject in subjects:
        (root / subject.name).mkdir(parents=True, exist_ok=True)
        for i in range(n_images):
            bg = subject.train_backgrounds[i % len(subject.train_backgrounds)]
            render(subject.scene(bg, *layout.draw(rng), size=size)).save(root / subject.name / f"{i:02d}.png")
