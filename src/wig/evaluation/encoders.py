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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import polars as pl
import torch
from PIL import Image

from wig.concepts import load_image
from wig.evaluation.embeddings import EmbeddingError, image_schema, text_schema
from wig.workflow.gpus import resolve_device
from wig.workflow.provenance import encoder_id
from wig.workflow.weights import offline

PROTOCOLS = ("dreammatcher", "standard")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DM_SIZE = 256


def dreammatcher_tensor(image: Image.Image) -> torch.Tensor:
    """(3, 256, 256) float32 in [-1, 1]: PIL bicubic resize without crop, ``x / 127.5 - 1``."""
    resized = image.convert("RGB").resize((DM_SIZE, DM_SIZE), resample=Image.BICUBIC)
    array = np.asarray(resized, dtype=np.uint8)
    return torch.from_numpy((array / 127.5 - 1.0).astype(np.float32)).permute(2, 0, 1)


@dataclass
class Encoder:
    """A loaded encoder. ``id`` names it in embedding files: files of another encoder are refused."""

    id: str
    kind: str  # "dino" or "clip"
    model: Any
    device: torch.device
    clip_preprocess: Any = None
    tokenizer: Any = None
    clip_mean: tuple = field(default=())
    clip_std: tuple = field(default=())
    forwards: int = 0  # images through the image tower (tests count them)

    def preprocess(self, images: Sequence[Image.Image], protocol: str) -> torch.Tensor:
        from torchvision.transforms import v2

        if protocol not in PROTOCOLS:
            raise EmbeddingError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
        if protocol == "dreammatcher":
            x = torch.stack([dreammatcher_tensor(im) for im in images])
            if self.kind == "dino":
                return x
            x = (x + 1.0) / 2.0
            x = v2.functional.resize(x, 224, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
            x = v2.functional.center_crop(x, 224)
            return v2.functional.normalize(x, self.clip_mean, self.clip_std)
        if self.kind == "clip":
            return torch.stack([self.clip_preprocess(im.convert("RGB")) for im in images])
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

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image embeddings (N, D), float32, not normalised."""
        self.forwards += len(x)
        x = x.to(self.device)
        if self.kind == "dino":  # DINO's output: the CLS token after the final norm
            out = self.model(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state[:, 0]
        else:
            out = self.model.encode_image(x)
        return out.float().cpu()

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        if self.kind != "clip":
            raise EmbeddingError(f"encoder {self.id} has no text tower")
        return self.model.encode_text(self.tokenizer(list(texts)).to(self.device)).float().cpu()


def load_encoder(spec: dict, path: str | os.PathLike | None = None, device: str = "auto") -> Encoder:
    """Load the encoder a config entry names; ``path`` is the folder of a built tiny twin, or of
    real weights resolved by `wig.workflow.weights` (then nothing is fetched)."""
    device = resolve_device(device)
    kind = spec["kind"]
    source = str(path) if spec.get("tiny") or (path is not None and kind == "dino") else spec["name"]
    if spec.get("tiny") and (path is None or not Path(path).is_dir()):
        raise EmbeddingError(f"tiny {kind} encoder not built: {path}")
    try:
        if kind == "dino":
            from transformers import ViTModel

            model = ViTModel.from_pretrained(source, add_pooling_layer=False).to(device).eval()
            return Encoder(encoder_id(spec), kind, model, device)
        if kind == "clip":
            import open_clip

            name = f"local-dir:{source}" if spec.get("tiny") else source
            # resolved CLIP weights sit in the hub cache under the name + tag open_clip looks up
            with offline() if path is not None else contextlib.nullcontext():
                model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=spec.get("pretrained"))
            normalize = preprocess.transforms[-1]
            return Encoder(
                encoder_id(spec),
                kind,
                model.to(device).eval(),
                device,
                clip_preprocess=preprocess,
                tokenizer=open_clip.get_tokenizer(name),
                clip_mean=tuple(normalize.mean),
                clip_std=tuple(normalize.std),
            )
    except (OSError, RuntimeError, ValueError) as err:
        raise EmbeddingError(f"cannot load {kind} encoder {source}: {str(err).splitlines()[0]}") from None
    raise EmbeddingError(f"unknown encoder kind {kind!r}; choose dino or clip")


# --- tiny twins --------------------------------------------------------------------------

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
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
    "quick_gelu": True,
}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def build_tiny_encoder(kind: str, out: str | os.PathLike, seed: int = 0) -> None:
    """Random-init DINO-style ViT (transformers format) or CLIP (open_clip local-dir format)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        if kind == "dino":
            from transformers import ViTConfig, ViTModel

            ViTModel(ViTConfig(**TINY_DINO), add_pooling_layer=False).save_pretrained(out, safe_serialization=True)
        elif kind == "clip":
            import open_clip

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
        else:
            raise EmbeddingError(f"unknown encoder kind {kind!r}; choose dino or clip")
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
    folder = Path(folder)
    manifest_path = folder / "manifest.parquet"
    if not manifest_path.is_file():
        raise EmbeddingError(f"no manifest.parquet in {folder}")
    manifest = pl.read_parquet(manifest_path)
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
