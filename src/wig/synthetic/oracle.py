"""Oracle metrics of the synthetic world (`wig.synthetic.world`), computed from pixels alone.

Segmentation: the background is the median colour of the 2-px border ring; the object is every
pixel farther than `OBJECT_DISTANCE` (RGB units) from it. The object's geometry is then fitted
by search: every shape at every integer radius of the layout and centre within ±`SEARCH` px of
the mask's centroid, keeping the best IoU. A ground-truth render lies on that grid, so it fits
with IoU 1.

Text fidelity, per attribute the prompt states (each 0 or 1, the score their mean):
  background  nearest palette colour of the border median is the prompted one
  colour      the most common nearest palette colour over the object is the prompted one
  shape       the best-fitting shape is the prompted one
Subject fidelity (``oracle_subject`` in the score tables, ``oracle_text`` for the above) = mean of
  shape IoU   the object mask against the subject's shape, fitted in size and position
  pattern     share of the fitted subject's pixels whose nearest palette colour is the one the
              subject's pattern puts there
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wig.synthetic.world import PALETTE, SHAPES, Subject, pattern_first, prompt_attributes, shape_mask, subject_named

OBJECT_DISTANCE = 60.0
SEARCH = 2
_NAMES = list(PALETTE)
_RGB = np.array([PALETTE[n] for n in _NAMES], dtype=np.float64)


def nearest_colour(pixels: np.ndarray) -> np.ndarray:
    """Palette index of each RGB row (N, 3)."""
    d = ((pixels[:, None, :].astype(np.float64) - _RGB[None]) ** 2).sum(-1)
    return d.argmin(1)


def border(img: np.ndarray, width: int = 2) -> np.ndarray:
    ring = np.ones(img.shape[:2], dtype=bool)
    ring[width:-width, width:-width] = False
    return img[ring]


@dataclass(frozen=True)
class Fit:
    shape: str
    cx: int
    cy: int
    radius: int
    iou: float


@dataclass(frozen=True)
class Reading:
    """What the oracle reads from one image."""

    background: str
    mask: np.ndarray
    colour: str | None  # None: no object found
    fit: Fit | None


def segment(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(background RGB, object mask)."""
    bg = np.median(border(img).astype(np.float64), axis=0)
    mask = np.sqrt(((img.astype(np.float64) - bg) ** 2).sum(-1)) > OBJECT_DISTANCE
    return bg, mask


def fit_shape(mask: np.ndarray, shapes=SHAPES, radii=range(6, 16)) -> Fit | None:
    """The shape, integer centre and radius whose mask best overlaps ``mask`` (IoU)."""
    if not mask.any():
        return None
    size = mask.shape[0]
    ys, xs = np.nonzero(mask)
    cx0, cy0 = int(round(xs.mean() + 0.5)), int(round(ys.mean() + 0.5))
    best = None
    for shape in shapes:
        for r in radii:
            for cx in range(cx0 - SEARCH, cx0 + SEARCH + 1):
                for cy in range(cy0 - SEARCH, cy0 + SEARCH + 1):
                    t = shape_mask(shape, cx, cy, r, size)
                    iou = (t & mask).sum() / (t | mask).sum()
                    if best is None or iou > best.iou:
                        best = Fit(shape, cx, cy, r, float(iou))
    return best


def _rgb(img) -> np.ndarray:
    return np.asarray(img.convert("RGB") if hasattr(img, "convert") else img)


def read(img) -> Reading:
    img = _rgb(img)
    bg, mask = segment(img)
    background = _NAMES[nearest_colour(bg[None])[0]]
    if not mask.any():
        return Reading(background, mask, None, None)
    counts = np.bincount(nearest_colour(img[mask]), minlength=len(_NAMES))
    return Reading(background, mask, _NAMES[int(counts.argmax())], fit_shape(mask))


def text_fidelity(img, background: str | None = None, colour: str | None = None, shape: str | None = None) -> dict:
    """Per stated attribute 1.0 / 0.0, and their mean as ``text``."""
    return _text_scores(read(img), background, colour, shape)


def _text_scores(reading: Reading, background, colour, shape) -> dict:
    scores = {}
    if background is not None:
        scores["background"] = float(reading.background == background)
    if colour is not None:
        scores["colour"] = float(reading.colour == colour)
    if shape is not None:
        scores["shape"] = float(reading.fit is not None and reading.fit.shape == shape)
    scores["text"] = float(np.mean(list(scores.values()))) if scores else float("nan")
    return scores


def subject_fidelity(img, subject: Subject) -> dict:
    """Shape IoU with the subject's shape (fitted), pattern accuracy on the fitted subject, mean."""
    arr = _rgb(img)
    return _subject_scores(arr, segment(arr)[1], subject)


def _subject_scores(arr: np.ndarray, mask: np.ndarray, subject: Subject) -> dict:
    fit = fit_shape(mask, shapes=(subject.shape,))
    if fit is None:
        return {"shape_iou": 0.0, "pattern": 0.0, "subject": 0.0}
    size = arr.shape[0]
    region = shape_mask(subject.shape, fit.cx, fit.cy, fit.radius, size)
    first = pattern_first(subject.pattern, fit.cx, fit.cy, fit.radius, size)
    want = np.where(first[region], _NAMES.index(subject.colour), _NAMES.index(subject.colour2))
    pattern = float((nearest_colour(arr[region]) == want).mean())
    return {"shape_iou": fit.iou, "pattern": pattern, "subject": (fit.iou + pattern) / 2}


def score_images(images, prompts: list[str], concept: str) -> dict[str, list[float]]:
    """Text and subject fidelity (``text``, ``subject``) per image of a synthetic subject
    ``concept`` (one segmentation per image serves both; `wig.evaluation.plugins.oracle` registers them
    as metrics)."""
    subject = subject_named(concept)
    out = {"text": [], "subject": []}
    for img, prompt in zip(images, prompts, strict=True):
        arr = _rgb(img)
        reading = read(arr)
        attrs = prompt_attributes(prompt)
        out["text"].append(
            _text_scores(reading, attrs.get("background"), attrs.get("colour"), attrs.get("shape"))["text"]
        )
        out["subject"].append(_subject_scores(arr, reading.mask, subject)["subject"])
    return out
