"""CLIP ViT-B/32 (open_clip) as an encoder kind with an image and a text tower, and its two
metrics: ``clip_i`` (an image's mean cosine to the concept's reference images) and ``clip_t``
(its cosine to its own prompt's text embedding; `wig.evaluation.base.text_fidelity`).

Under the ``dreammatcher`` protocol CLIP gets DreamMatcher's 256-px tensor mapped back to [0, 1],
resized to 224 (bicubic, antialiased: torchvision's default), centre-cropped to 224 and
CLIP-normalised; under ``standard`` open_clip's own transform. Real checkpoints load through
``open_clip.create_model_and_transforms`` by name + pretrained tag; the tiny twin is a folder in
open_clip's ``local-dir:`` layout loaded through the same call.
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING

from wig.evaluation.base import (
    Encoder,
    Metric,
    check_protocol,
    dreammatcher_tensor,
    first_line,
    mean_to_references,
    register_encoder,
    register_metric,
    text_fidelity,
)
from wig.provenance import encoder_id
from wig.weights import offline

if TYPE_CHECKING:
    import torch

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
    default = True  # CLIP-I and the paper's text metric
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
            raise WeightsError(f"cannot resolve CLIP {source}/{tag}: {first_line(err)}") from None
        return {"source": f"{source}/{tag}", "requested": None, "revision": snapshot_revision(file), "path": file}

    def preprocess(self, images, protocol):
        import torch

        check_protocol(protocol)
        if protocol == "dreammatcher":
            return dreammatcher_clip(images, self.mean, self.std)
        return torch.stack([self.preprocess_image(im.convert("RGB")) for im in images])

    def _embed(self, x):
        return self.model.encode_image(x)

    def _embed_texts(self, texts):
        return self.model.encode_text(self.tokenizer(texts).to(self.device))


register_metric(Metric("clip_i", "CLIP-I", "subject", "references", mean_to_references, encoder=Clip.kind, order=20))
register_metric(Metric("clip_t", "CLIP-T", "text", "texts", text_fidelity, encoder=Clip.kind, order=30))
