"""The synthetic world's learned encoder as an encoder kind (``scene``) and its DINO-style metric:
an image's score is its mean cosine to the concept's reference images, exactly as DINO's
(`wig.evaluation.base.subject_fidelity`). The encoder is trained in the world by the workflow
(`wig.synthetic.encoder`, rule train_encoder; ``encoders: {scene: {train: {...}}}``), so the study
can measure how well an embedding metric tracks the oracle's subject fidelity — the question real
DINO scores cannot answer. ``{scene: {tiny: true}}`` is its untrained twin, for plumbing tests.

Preprocessing is the same under every protocol: the image at the world's size (bilinear when it
is another), [-1, 1], as the encoder was trained.
"""

from __future__ import annotations

import json
from pathlib import Path

from wig.evaluation.base import Encoder, Metric, check_protocol, mean_to_references, register_encoder, register_metric
from wig.provenance import encoder_id


@register_encoder
class Scene(Encoder):
    """`wig.synthetic.encoder.SceneNet`: pooled conv features, linearly projected."""

    kind = "scene"
    real = "no real checkpoint: train it in the synthetic world (train: {steps: …})"
    trained = True

    def __init__(self, id, model, device, size):
        super().__init__(id, model, device)
        self.size = size

    @classmethod
    def load(cls, spec, source, device):
        from wig.synthetic.encoder import load_net

        net = load_net(source)
        size = json.loads((Path(source) / "config.json").read_text())["size"]
        return cls(encoder_id(spec), net.to(device), device, size)

    @staticmethod
    def build_tiny(out):
        from wig.synthetic.encoder import save_random

        save_random(out, {})

    @staticmethod
    def resolve(spec):
        from wig.evaluation.embeddings import EmbeddingError

        raise EmbeddingError("the scene encoder has no real checkpoint: give it train: {...} (or tiny: true)")

    def preprocess(self, images, protocol):
        import numpy as np
        import torch
        from PIL import Image

        check_protocol(protocol)
        out = []
        for im in images:
            im = im.convert("RGB")
            if im.size != (self.size, self.size):
                im = im.resize((self.size, self.size), resample=Image.BILINEAR)
            out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
        return torch.stack(out)

    def _embed(self, x):
        return self.model(x)


register_metric(
    Metric(
        "scene",
        "scene-encoder similarity (DINO-style)",
        "subject",
        "references",
        mean_to_references,
        encoder=Scene.kind,
        order=60,
    )
)
