"""What every metric and encoder is, and the two registries: a plug-in module defines its
`Encoder` kind and its `Metric` and registers them where they are defined (`register_encoder`,
`register_metric`), as guidance methods do; `wig.evaluation.plugins` imports the shipped ones
(one line each), and the study accepts any registered name.

Also here, for every kind: the preprocessing protocols (`PROTOCOLS`, DreamMatcher's tensor), the
hub snapshot helper real weights resolve through, and the cosine scores most metrics share.
This module imports neither torch nor the guidance code: the study reads the registries while
Snakemake parses the workflow, and an embedding job's code hash must not follow the tables'.

Protocols:

``dreammatcher`` — what DreamMatcher's evaluate.py (and so the paper's ViCo numbers) does: the
    image is resized to 256×256 with PIL bicubic (no crop, aspect not kept) and scaled to [-1, 1];
    each kind says what it does with that tensor (`wig.evaluation.plugins.dino`, `wig.evaluation.plugins.clip`).
``standard`` — each encoder's own preprocessing of the PIL image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import numpy as np

from wig.errors import WigError
from wig.evaluation.embeddings import EmbeddingError

if TYPE_CHECKING:
    import torch
    from PIL import Image

PROTOCOLS = ("dreammatcher", "standard")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DM_SIZE = 256


def dreammatcher_tensor(image: Image.Image) -> torch.Tensor:
    """(3, 256, 256) float32 in [-1, 1]: PIL bicubic resize without crop, ``x / 127.5 - 1``."""
    import numpy as np
    import torch
    from PIL import Image

    resized = image.convert("RGB").resize((DM_SIZE, DM_SIZE), resample=Image.BICUBIC)
    array = np.asarray(resized, dtype=np.uint8)
    return torch.from_numpy((array / 127.5 - 1.0).astype(np.float32)).permute(2, 0, 1)


def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise EmbeddingError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")


class Encoder:
    """A loaded encoder of one *kind* (DINO, CLIP, plug-ins such as PickScore), registered with
    `register_encoder`. A kind says how it loads (`load`: a tiny twin's folder, resolved real
    weights, or a name), builds its tiny twin (`build_tiny`), fetches real weights on the submit
    host (`resolve`), preprocesses images under each protocol, and embeds images (and texts, if
    ``texts``). ``id`` names the loaded encoder in embedding files: files of another are refused."""

    kind: ClassVar[str]
    texts: ClassVar[bool] = False  # it has a text tower (`embed_texts`)
    real: ClassVar[str] = ""  # what a real spec names, for errors and the CLI
    trained: ClassVar[bool] = False  # the workflow trains it (``train:``) instead of loading real weights
    default: ClassVar[bool] = False  # configured (as a tiny twin) when a config names no encoders

    def __init__(self, id: str, model: Any, device: torch.device):
        self.id, self.model, self.device = id, model, device
        self.forwards = 0  # images through the image tower (tests count them)

    # --- what a kind implements ----------------------------------------------------------

    @classmethod
    def load(cls, spec: dict, source: str, device: torch.device) -> Encoder:
        """``source``: a tiny twin's folder, resolved weights, or the spec's name."""
        raise NotImplementedError

    @staticmethod
    def build_tiny(out: Path) -> None:
        """Write a random-init twin into ``out`` (the global torch seed is set by the caller)."""
        raise NotImplementedError

    @staticmethod
    def resolve(spec: dict) -> dict:
        """Fetch real weights into the local cache; a record (`wig.weights`)."""
        raise NotImplementedError

    def preprocess(self, images: Sequence[Image.Image], protocol: str) -> torch.Tensor:
        raise NotImplementedError

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        raise EmbeddingError(f"encoder {self.id} has no text tower")

    # --- shared ----------------------------------------------------------------------------

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image embeddings (N, D), float32 on the CPU (the kind says whether normalised)."""
        import torch

        self.forwards += len(x)
        with torch.no_grad():
            return self._embed(x.to(self.device)).float().cpu()

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        import torch

        with torch.no_grad():
            return self._embed_texts(list(texts)).float().cpu()


ENCODERS: dict[str, type[Encoder]] = {}  # kind -> Encoder subclass


def register_encoder(cls: type[Encoder]) -> type[Encoder]:
    """Make an encoder kind known (a class decorator; a plug-in registers itself the same way)."""
    if cls.kind in ENCODERS and ENCODERS[cls.kind] is not cls:
        raise WigError(f"encoder kind {cls.kind!r} is registered twice")
    ENCODERS[cls.kind] = cls
    ordered = sorted(ENCODERS.items())  # by kind, whatever order packages are discovered in
    ENCODERS.clear()
    ENCODERS.update(ordered)
    return cls


def encoder_class(kind: str) -> type[Encoder]:
    if kind not in ENCODERS:
        raise EmbeddingError(f"unknown encoder kind {kind!r}; choose from {', '.join(sorted(ENCODERS))}")
    return ENCODERS[kind]


def first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def snapshot(spec: dict, what: str, patterns: list[str], repo: str | None = None) -> dict:
    """A hub repo (``repo``, default the spec's name) in the local cache, or a local folder as it is."""
    from wig.weights import WeightsError, local_record, snapshot_revision

    source = repo or spec["name"]
    if record := local_record(source):
        return record
    from huggingface_hub import snapshot_download

    revision = spec.get("revision") if repo is None else None
    try:
        folder = snapshot_download(source, revision=revision, allow_patterns=patterns)
    except Exception as err:  # hub errors come in many types; all mean the same here
        raise WeightsError(f"cannot resolve {what} {source}: {first_line(err)}") from None
    return {"source": source, "requested": revision, "revision": snapshot_revision(folder), "path": folder}


HF_FILES = ["*.json", "*.safetensors", "*.txt"]  # config, weights, tokenizer files: never a pickle


# --- metrics ---------------------------------------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def subject_fidelity(references: np.ndarray, generated: np.ndarray) -> np.ndarray:
    """Per generated image: mean cosine to every reference (DINO or CLIP-I)."""
    if np.ndim(references) != 2 or np.ndim(generated) != 2 or np.shape(references)[1] != np.shape(generated)[1]:
        raise ValueError(
            f"references and images are (n, d) embeddings of one width: {np.shape(references)}, {np.shape(generated)}"
        )
    return (_unit(generated) @ _unit(references).T).mean(axis=1)


def text_fidelity(generated: np.ndarray, texts: np.ndarray) -> np.ndarray:
    """Per generated image: cosine to its own prompt's text embedding (CLIP-T). One text per image,
    of the images' width: a single text would broadcast silently over every image."""
    generated, texts = np.asarray(generated), np.asarray(texts)
    if generated.shape != texts.shape:
        raise ValueError(f"one text embedding per image of the same width: {generated.shape} vs {texts.shape}")
    return (_unit(generated) * _unit(texts)).sum(axis=1)


def mean_to_references(generated: np.ndarray, references: np.ndarray) -> np.ndarray:
    """A reference-reading metric's score (DINO, CLIP-I, the scene encoder's): `subject_fidelity`."""
    return subject_fidelity(references, generated)


@dataclass(frozen=True)
class Metric:
    """A per-image score."""

    name: str  # its column in scores and tables
    label: str  # its axis label in figures
    # "subject" or "text": which side of the trade-off it measures; "diversity": a third axis
    # (DreamBlend's) that no fidelity comparison reads
    fidelity: str
    # "references" (the concept's reference embeddings), "texts" (its prompt's), "samples" (the
    # other images of its prompt and grid point in its generation job), "pixels"
    reads: str
    # encoder metrics: score(generated (n, d), references (m, d) | prompt texts (n, d) | the group
    # id of each image (n,): images of one prompt and grid point) -> (n,);
    # pixel metrics: score(images, prompts, concept) -> {metric name: values}, one call serving every
    # metric that shares the function (the oracle segments an image once for both of its metrics)
    score: Callable
    encoder: str | None = None  # whose embeddings it reads (`ENCODERS` kind); None for pixels
    synthetic_only: bool = False  # it reads the synthetic world's images (dataset.render)
    higher: bool = True  # higher is better; False for a distance (DreamSim): fronts and labels turn with it
    ground_truth: bool = False  # what its side's embedding metrics are checked against (the synthetic oracle's)
    default: bool = True  # scored by default wherever its encoder is configured (else: named in evaluation.metrics)
    # its place in tables, figures and score columns (then its name): wig's metrics are 10, 20, …;
    # a plug-in's default puts it after them
    order: float = 1000.0


METRICS: dict[str, Metric] = {}  # name -> Metric, by `Metric.order`


def register_metric(metric: Metric) -> Metric:
    """Make a metric known by its name (a plug-in registers itself the same way)."""
    if metric.reads not in ("references", "texts", "samples", "pixels") or metric.fidelity not in (
        "subject",
        "text",
        "diversity",
    ):
        raise WigError(
            f"metric {metric.name}: reads references|texts|samples|pixels, measures subject|text fidelity or diversity"
        )
    if (metric.encoder is None) != (metric.reads == "pixels"):
        raise WigError(f"metric {metric.name}: an encoder exactly when it reads embeddings")
    if metric.name in METRICS and METRICS[metric.name] != metric:
        raise WigError(f"metric {metric.name!r} is registered twice")
    METRICS[metric.name] = metric
    ordered = sorted(METRICS.items(), key=lambda kv: (kv[1].order, kv[0]))  # not import order
    METRICS.clear()
    METRICS.update(ordered)
    return metric
