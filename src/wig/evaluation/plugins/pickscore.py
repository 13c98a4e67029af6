"""PickScore (Kirstain et al. 2023, "Pick-a-Pic"): a CLIP-H fine-tuned on human preferences, the
paper's text-to-image metric for Diffusion-DPO (its Table 4: 21.53 → 21.58): an encoder kind and
the ``pickscore`` metric, both registered here (`wig.evaluation.base`).

The score of an image for its prompt is the model's own logit: ``logit_scale.exp()`` (≈ 100 for
PickScore_v1) times the cosine of the projected image and text features — hence values ≈ 21,
not cosines ≈ 0.2. The scale lives with the text side: a PickScore text embedding is the unit
text feature times ``logit_scale.exp()``, so the metric is the dot product of the unit image
feature with it, and every score keeps the model's scale.

Preprocessing is PickScore's own under every protocol: the CLIP-H processor
(``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, resize 224 shortest side bicubic, centre crop, CLIP
normalisation; texts padded and truncated to 77 tokens), as the model card scores. Real weights:
``{name: yuvalkirstain/PickScore_v1, processor: laion/CLIP-ViT-H-14-laion2B-s32B-b79K}``, both
fetched on the submit host (the processor's config and tokenizer files only, never the CLIP-H
weights); only safetensors are loaded (name a ``revision`` that has them if the main one does not).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np

from wig.evaluation.base import HF_FILES, Encoder, Metric, check_protocol, register_encoder, register_metric, snapshot
from wig.provenance import encoder_id
from wig.weights import offline

PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
PROCESSOR_FILES = ["*.json", "*.txt"]  # preprocessor, tokenizer: the CLIP-H weights are not needed
PROCESSOR_FOLDER = "processor"  # a tiny twin keeps its processor here, beside the model
LOGIT_SCALE = math.log(100.0)  # the tiny twin's, as PickScore_v1's trained scale (CLIP's init is ln(1/0.07))
TINY = {
    "text_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "max_position_embeddings": 77,
        "vocab_size": 49408,
        "hidden_act": "gelu",
    },
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "image_size": 224,
        "patch_size": 32,
        "hidden_act": "gelu",
    },
    "projection_dim": 24,
    "logit_scale_init_value": LOGIT_SCALE,
}


@register_encoder
class PickScore(Encoder):
    """PickScore's image tower (unit features) and text tower (unit features × the logit scale)."""

    kind = "pickscore"
    texts = True
    real = "a transformers CLIP model name (yuvalkirstain/PickScore_v1) and its processor repo"

    def __init__(self, id, model, device, processor):
        super().__init__(id, model, device)
        self.processor = processor

    @classmethod
    def load(cls, spec, source, device):
        from transformers import CLIPModel

        model = CLIPModel.from_pretrained(source, use_safetensors=True).to(device).eval()
        return cls(encoder_id(spec), model, device, _load_processor(spec, source))

    @staticmethod
    def build_tiny(out: Path) -> None:
        from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

        from wig.models.tiny import clip_tokenizer

        CLIPModel(CLIPConfig(**TINY)).save_pretrained(out, safe_serialization=True)
        image = CLIPImageProcessor(
            size={"shortest_edge": 224},
            crop_size={"height": 224, "width": 224},
            resample=3,  # bicubic, as CLIP-H's preprocessor_config.json
            image_mean=[0.48145466, 0.4578275, 0.40821073],
            image_std=[0.26862954, 0.26130258, 0.27577711],
        )
        CLIPProcessor(image_processor=image, tokenizer=clip_tokenizer()).save_pretrained(out / PROCESSOR_FOLDER)

    @staticmethod
    def resolve(spec):
        model = snapshot(spec, "PickScore", HF_FILES)
        processor = snapshot(spec, "PickScore's processor", PROCESSOR_FILES, repo=spec.get("processor", PROCESSOR))
        return {**model, "processor": processor}

    def preprocess(self, images, protocol):
        check_protocol(protocol)  # PickScore has one preprocessing, its processor's, under every protocol
        return self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]

    def _embed(self, x):
        features = _features(self.model.get_image_features(pixel_values=x))
        return features / features.norm(dim=-1, keepdim=True)

    def _embed_texts(self, texts):
        tokens = self.processor(text=texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        features = _features(self.model.get_text_features(**tokens))
        return self.model.logit_scale.exp() * features / features.norm(dim=-1, keepdim=True)


def _features(out):
    """The projected features (recent transformers return an output object, older a tensor)."""
    return out if not hasattr(out, "pooler_output") else out.pooler_output


def _load_processor(spec: dict, source: str):
    """A tiny twin's ``processor/``; for real weights the processor repo by name, from the local
    cache only when the model came resolved (its resolve record fetched both, as CLIP's)."""
    from transformers import CLIPProcessor

    if spec.get("tiny"):
        return CLIPProcessor.from_pretrained(str(Path(source) / PROCESSOR_FOLDER))
    with offline() if source != spec.get("name") else contextlib.nullcontext():
        return CLIPProcessor.from_pretrained(spec.get("processor", PROCESSOR))


def score(generated: np.ndarray, texts: np.ndarray) -> np.ndarray:
    """Per image: its unit PickScore image embedding · its prompt's scaled text embedding = the
    model's logit (`PickScore` stores the scale with the text side)."""
    unit = np.asarray(generated, dtype=np.float64)
    unit = unit / np.linalg.norm(unit, axis=-1, keepdims=True)
    return (unit * np.asarray(texts, dtype=np.float64)).sum(axis=1)


register_metric(Metric("pickscore", "PickScore", "text", "texts", score, encoder=PickScore.kind, order=40))
