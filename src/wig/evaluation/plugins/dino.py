"""DINO ViT-S/16 (transformers ``ViTModel``) as an encoder kind, and the ``dino`` metric: an image's
score is its mean cosine to the concept's reference images (`wig.evaluation.base.subject_fidelity`).

Under the ``dreammatcher`` protocol DINO gets DreamMatcher's 256-px [-1, 1] tensor as it is (no
ImageNet normalisation; the position embeddings are interpolated to the 16×16 patch grid); under
``standard`` DINO's evaluation transform (resize 256 bicubic, centre crop 224, ImageNet
normalisation). Real checkpoints load by name through ``ViTModel.from_pretrained``; the tiny twin
is a folder saved by the same library and loaded back through the very same call.
"""

from __future__ import annotations

from wig.evaluation.base import (
    HF_FILES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Encoder,
    Metric,
    check_protocol,
    dreammatcher_tensor,
    mean_to_references,
    register_encoder,
    register_metric,
    snapshot,
)
from wig.provenance import encoder_id

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


@register_encoder
class Dino(Encoder):
    """DINO ViT (transformers ``ViTModel``): the CLS token after the final norm."""

    kind = "dino"
    default = True  # the paper's subject metric
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
        return snapshot(spec, "DINO", HF_FILES)

    def preprocess(self, images, protocol):
        import torch
        from torchvision.transforms import v2

        check_protocol(protocol)
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


register_metric(Metric("dino", "DINO", "subject", "references", mean_to_references, encoder=Dino.kind, order=10))
