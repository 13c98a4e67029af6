"""Image/text encoders for the metrics (DINO ViT-S/16, CLIP ViT-B/32), their tiny twins, the two
preprocessing protocols, and embedding files.

Protocols (``PROTOCOLS``):

``dreammatcher`` — what DreamMatcher's evaluate.py (and so the paper's ViCo numbers) does: the
    image is resized to 256×256 with PIL bicubic (no crop, aspect not kept) and scaled to [-1, 1];
    DINO gets that tensor as it is (no ImageNet normalisation; the position embeddings are
    interpolated to the 16×16 patch grid); CLIP gets it mapped back to [0, 1], resized to 224
    (bicubic, antialiased: torchvision's default), centre-cropped to 224 and CLIP-normalised.
``standard`` — each encoder's own preprocessing of the PIL image: DINO's evaluation transform
    (resize 256 bicubic, centre crop 224, ImageNet normalisation); CLIP's open_clip transform.

Real checkpoints load by name (DINO through transformers' ``ViTModel.from_pretrained``, CLIP
through ``open_clip.create_model_and_transforms``); a tiny twin is a folder written with the
same libraries' save formats and loaded back through the very same calls.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from wig.concepts import load_image
from wig.evaluation.embeddings import EmbeddingError, image_schema, text_schema
from wig.gpus import resolve_device
from wig.provenance import encoder_id
from wig.readers import read_table
from wig.weights import offline

if TYPE_CHECKING:  # torch, numpy and PIL load when an encoder does: the study reads the registry at parse
    import polars as pl
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


def _check_protocol(protocol: str) -> None:
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
    ENCODERS[cls.kind] = cls
    return cls


def encoder_class(kind: str) -> type[Encoder]:
    if kind not in ENCODERS:
        raise EmbeddingError(f"unknown encoder kind {kind!r}; choose from {', '.join(sorted(ENCODERS))}")
    return ENCODERS[kind]


def resolve_encoder(spec: dict) -> dict:
    """A real encoder's weights in the local cache, as its kind fetches them (`Encoder.resolve`:
    DINO's transformers repo, CLIP's open_clip name + pretrained tag, PickScore's model and
    processor repos); a record for `wig.weights.write_record`."""
    return encoder_class(spec["kind"]).resolve(spec)


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


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
        raise EmbeddingError(f"cannot load {cls.kind} encoder {source}: {_first_line(err)}") from None
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


def _snapshot(spec: dict, what: str, patterns: list[str], repo: str | None = None) -> dict:
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
        raise WeightsError(f"cannot resolve {what} {source}: {_first_line(err)}") from None
    return {"source": source, "requested": revision, "revision": snapshot_revision(folder), "path": folder}


# --- DINO ------------------------------------------------------------------------------------

TINY_DINO = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 224,
    "patch_size": 16,
    "layer_norm_eps": 1e-6,
    "qkv_bias": True,
}
HF_FILES = ["*.json", "*.safetensors", "*.txt"]  # config, weights, tokenizer files: never a pickle


@register_encoder
class Dino(Encoder):
    """DINO ViT (transformers ``ViTModel``): the CLS token after the final norm."""

    kind = "dino"
    real = "a transformers ViT name, e.g. facebook/dino-vits16"

    @classmethod
    def load(cls, spec, source, device):
        from transformers import ViTModel

        model = ViTModel.from_pretrained(source, add_pooling_layer=False, use_safetensors=True)
        return cls(encoder_id(spec), model.to(device).eval(), device)

    @staticmethod
    def build_tiny(out):
        from transformers import ViTConfig, ViTModel

        ViTModel(ViTConfig(**TINY_DINO), add_pooling_layer=False).save_pretrained(out, safe_serialization=True)

    @staticmethod
    def resolve(spec):
        return _snapshot(spec, "DINO", HF_FILES)

    def preprocess(self, images, protocol):
        import torch
        from torchvision.transforms import v2

        _check_protocol(protocol)
        if protocol == "dreammatcher":  # as it is: no ImageNet normalisation
            return torch.stack([dreammatcher_tensor(im) for im in images])
        transform = v2.Compose(
            [
                v2.ToImage(),
                v2.Resize(256, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                v2.CenterCrop(224),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )
        return torch.stack([transform(im.convert("RGB")) for im in images])

    def _embed(self, x):
        return self.model(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state[:, 0]


# --- CLIP ------------------------------------------------------------------------------------

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
    "quick_gelu": True,
}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def dreammatcher_clip(images, mean, std) -> torch.Tensor:
    """DreamMatcher's CLIP input: its 256-px [-1, 1] tensor mapped back to [0, 1], resized to 224
    (bicubic, antialiased), centre-cropped and normalised with ``mean``/``std``."""
    import torch
    from torchvision.transforms import v2

    x = (torch.stack([dreammatcher_tensor(im) for im in images]) + 1.0) / 2.0
    x = v2.functional.resize(x, 224, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    x = v2.functional.center_crop(x, 224)
    return v2.functional.normalize(x, list(mean), list(std))


@register_encoder
class Clip(Encoder):
    """CLIP through open_clip: image and text embeddings (not normalised)."""

    kind = "clip"
    texts = True
    real = "an open_clip model name with a pretrained tag, e.g. ViT-B-32 + openai"

    def __init__(self, id, model, device, preprocess_image, tokenizer):
        super().__init__(id, model, device)
        self.preprocess_image, self.tokenizer = preprocess_image, tokenizer
        normalize = preprocess_image.transforms[-1]
        self.mean, self.std = tuple(normalize.mean), tuple(normalize.std)

    @classmethod
    def load(cls, spec, source, device):
        import open_clip

        if spec.get("tiny"):
            name = f"local-dir:{source}"
        else:
            name = spec["name"]
        # resolved CLIP weights sit in the hub cache under the name + tag open_clip looks up
        with offline() if source != spec.get("name") else contextlib.nullcontext():
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=spec.get("pretrained"))
        return cls(encoder_id(spec), model.to(device).eval(), device, preprocess, open_clip.get_tokenizer(name))

    @staticmethod
    def build_tiny(out):
        import open_clip
        from safetensors.torch import save_file

        model = open_clip.CLIP(**TINY_CLIP)
        config = {
            "model_cfg": TINY_CLIP,
            "preprocess_cfg": {
                "mean": list(OPENAI_MEAN),
                "std": list(OPENAI_STD),
                "interpolation": "bicubic",
                "resize_mode": "shortest",
            },
        }
        (out / "open_clip_config.json").write_text(json.dumps(config, indent=2))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "open_clip_model.safetensors")

    @staticmethod
    def resolve(spec):
        import open_clip

        from wig.weights import WeightsError, snapshot_revision

        source, tag = spec["name"], spec.get("pretrained")
        cfg = open_clip.get_pretrained_cfg(source, tag) if tag else {}
        if not cfg:
            raise WeightsError(f"open_clip has no pretrained weights {tag!r} for {source}")
        try:
            file = open_clip.download_pretrained(cfg)
        except Exception as err:
            raise WeightsError(f"cannot resolve CLIP {source}/{tag}: {_first_line(err)}") from None
        return {"source": f"{source}/{tag}", "requested": None, "revision": snapshot_revision(file), "path": file}

    def preprocess(self, images, protocol):
        import torch

        _check_protocol(protocol)
        if protocol == "dreammatcher":
            return dreammatcher_clip(images, self.mean, self.std)
        return torch.stack([self.preprocess_image(im.convert("RGB")) for im in images])

    def _embed(self, x):
        return self.model.encode_image(x)

    def _embed_texts(self, texts):
        return self.model.encode_text(self.tokenizer(texts).to(self.device))


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


# plug-in kinds register themselves on import; here, so that every user of the registry has them
from wig.evaluation import dreamsim, pickscore, scene  # noqa: E402, F401
