"""DreamSim (Fu et al. 2023, "DreamSim: Learning New Dimensions of Human Visual Similarity"): a
perceptual distance, the paper's style metric (its Table 5: DreamSim from the generated images to
the style reference, 0.7993 → 0.7344 with PG): an encoder kind and
the ``dreamsim`` metric, both registered here (`wig.evaluation.base`) — a *distance*, lower is
better (``higher: False``).

The model is the ``dreamsim`` package's own: its ``PerceptualModel`` (one or several ViT backbones
— DINO, CLIP, OpenCLIP — whose features are concatenated), the LoRA its authors trained on human
similarity judgements (peft), and ``normalize_embeds`` (centre, unit norm). The distance of two
images is ``1 − cos`` of their embeddings; an image's score is the mean distance to its concept's
reference images (the style reference, or a subject's photos). `build` does exactly what the
package's ``dreamsim()`` does once its weights are on disk (the test compares the two on a
ViT-B/32-sized random checkpoint), so a resolved real checkpoint and the tiny twin load through
the same lines.

Preprocessing is DreamSim's under every protocol: resize to 224 × 224 (bicubic, aspect not kept),
[0, 1] tensors; each backbone normalises inside the model.

Real weights: ``{name: ensemble}`` (or another DreamSim type: ``dino_vitb16``, ``clip_vitb32``,
``open_clip_vitb32``, ``dinov2_vitb14``, ``synclr_vitb16``; or a folder laid out as the package's
cache). The resolve rule runs the package's download on the submit host into
``$HF_HOME/wig/dreamsim/<type>`` (the GitHub release zip; for DINO types also torch.hub's DINO code
and weights, which the package fetches there), so jobs load from that folder offline. The package
loads its checkpoints with ``torch.load(weights_only=True)``.

The tiny twin: the package hard-codes ViT-B widths for every type it downloads, except the ViT-L/14
OpenCLIP backbone, whose ``VisionTransformer`` arguments travel in its checkpoint — so the twin is
that backbone type at width 32, depth 2 (``open_clipl14_as_dino_vitl.pth.tar``), with a random
LoRA (non-zero B, so the adapter changes the embedding) in ``open_clip_vitl14_single_lora/``, and
its model config in ``dreamsim_config.json``; a real type's config is the package's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wig.evaluation.base import Encoder, Metric, check_protocol, register_encoder, register_metric
from wig.provenance import encoder_id
from wig.readers import read_json

if TYPE_CHECKING:
    import torch

SIZE = 224
CONFIG = "dreamsim_config.json"  # a folder's model config where it is not one of the package's types
TINY_VIT = {"img_size": [SIZE], "patch_size": 14, "embed_dim": 32, "depth": 2, "num_heads": 2, "qkv_bias": True}
TINY_MODEL = {"model_type": "open_clip_vitl14", "feat_type": "embedding", "stride": "14", "lora": True}
TINY_PROJECTION = 24
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # safetensors only: no pickled .bin
LORA_KEYS = ("r", "lora_alpha", "lora_dropout", "bias", "target_modules")  # what the package reads of a config
TINY_LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", target_modules=["qkv", "fc1"])


def lora_folder(folder: Path) -> Path:
    """The folder's one ``*_lora`` adapter folder (the package's layout: ``ensemble_lora``,
    ``<backbone>_single_lora``, ``<backbone>_patch_lora``)."""
    from wig.evaluation.embeddings import EmbeddingError

    found = sorted(p for p in folder.glob("*_lora") if p.is_dir())
    if len(found) != 1:
        raise EmbeddingError(f"{folder}: expected one DreamSim *_lora adapter folder, found {[p.name for p in found]}")
    return found[0]


def model_config(folder: Path) -> dict:
    """``PerceptualModel``'s arguments: the folder's ``dreamsim_config.json``, else the package's
    config of the type its adapter folder names."""
    from dreamsim.config import dreamsim_args

    from wig.evaluation.embeddings import EmbeddingError

    if (folder / CONFIG).is_file():
        config = read_json(folder / CONFIG, "DreamSim config", EmbeddingError)
        if not isinstance(config, dict) or "model_config" not in config:
            raise EmbeddingError(f"{folder / CONFIG}: no 'model_config' entry")
        return config["model_config"]
    name = lora_folder(folder).name.removesuffix("_lora")
    dreamsim_type = name if name == "ensemble" else name.replace("_single", "")
    if dreamsim_type not in dreamsim_args["model_config"]:
        raise EmbeddingError(
            f"{folder}: {name}_lora names no DreamSim type ({', '.join(dreamsim_args['model_config'])})"
        )
    return dreamsim_args["model_config"][dreamsim_type]


def build(folder: str | Path, device: str = "cpu"):
    """The DreamSim model of a folder of its weights, as ``dreamsim.dreamsim(pretrained=True)``
    builds it after its download: backbones from the folder, the LoRA config's keys from its
    ``adapter_config.json``, the trained adapter, embeddings normalised, eval mode, no gradients."""
    from dreamsim.model import PerceptualModel
    from peft import LoraConfig, PeftModel, get_peft_model

    from wig.evaluation.embeddings import EmbeddingError

    folder = Path(folder)
    adapter = lora_folder(folder)
    for name in ADAPTER_FILES:  # peft would look for a missing one on the hub and fail with a repo-id error
        if not (adapter / name).is_file():
            raise EmbeddingError(f"{adapter}: the DreamSim adapter lacks {name} (a partial download?)")
    model = PerceptualModel(**model_config(folder), device=device, load_dir=str(folder), normalize_embeds=True)
    settings = read_json(adapter / "adapter_config.json", "DreamSim adapter config", EmbeddingError)
    missing = [k for k in LORA_KEYS if k not in settings]
    if missing:
        raise EmbeddingError(f"{adapter / 'adapter_config.json'}: no {missing[0]!r} (not a peft LoRA config?)")
    model = get_peft_model(model, LoraConfig(**{k: settings[k] for k in LORA_KEYS}))
    model = PeftModel.from_pretrained(model.base_model.model, str(adapter)).to(device)
    return model.eval().requires_grad_(False)


def preprocess(images) -> torch.Tensor:
    """DreamSim's input: 224 × 224 bicubic (aspect not kept), [0, 1]."""
    import torch
    from torchvision import transforms

    t = transforms.Compose(
        [transforms.Resize((SIZE, SIZE), interpolation=transforms.InterpolationMode.BICUBIC), transforms.ToTensor()]
    )
    return torch.stack([t(im.convert("RGB")) for im in images])


@register_encoder
class DreamSim(Encoder):
    """DreamSim's embedding (centred, unit norm): distances are ``1 − cos`` of two of them."""

    kind = "dreamsim"
    real = "a DreamSim type (ensemble, dino_vitb16, …) or a folder of its weights"

    @classmethod
    def load(cls, spec, source, device):
        from wig.evaluation.embeddings import EmbeddingError

        if not Path(source).is_dir():
            raise EmbeddingError(f"DreamSim {source}: resolve it first (rule resolve_encoder / `wig resolve`)")
        return cls(encoder_id(spec), build(source, str(device)), device)

    @staticmethod
    def build_tiny(out: Path) -> None:
        import torch
        from dreamsim.feature_extraction.vision_transformer import VisionTransformer
        from dreamsim.model import PerceptualModel
        from peft import LoraConfig, get_peft_model

        vit = VisionTransformer(**TINY_VIT)
        state = {k: v.contiguous() for k, v in vit.state_dict().items()}
        # the loader replaces pos_drop by a LayerNorm (OpenCLIP's ln_pre); its weights ride along
        state["pos_drop.weight"] = 1.0 + 0.1 * torch.randn(TINY_VIT["embed_dim"])
        state["pos_drop.bias"] = 0.1 * torch.randn(TINY_VIT["embed_dim"])
        state["proj"] = torch.randn(TINY_VIT["embed_dim"], TINY_PROJECTION) / TINY_VIT["embed_dim"] ** 0.5
        # a plain dict of tensors and plain kwargs: what torch.load(weights_only=True) accepts
        torch.save({"kwargs": TINY_VIT, "state_dict": state}, out / "open_clipl14_as_dino_vitl.pth.tar")
        (out / CONFIG).write_text(json.dumps({"model_config": TINY_MODEL}, indent=2) + "\n")
        model = PerceptualModel(**TINY_MODEL, device="cpu", load_dir=str(out), normalize_embeds=True)
        model = get_peft_model(model, LoraConfig(**TINY_LORA))
        for name, param in model.named_parameters():
            if "lora_B" in name:  # peft starts B at zero (an identity adapter); a trained one is not
                torch.nn.init.normal_(param, std=0.05)
        model.save_pretrained(out / "open_clip_vitl14_single_lora", safe_serialization=True)

    @staticmethod
    def resolve(spec):
        from wig.weights import WeightsError, local_record

        source = spec["name"]
        if record := local_record(source):
            return record
        import dreamsim
        from dreamsim.config import dreamsim_args
        from huggingface_hub import constants

        if source not in dreamsim_args["model_config"]:
            raise WeightsError(
                f"DreamSim {source!r}: name a type ({', '.join(dreamsim_args['model_config'])}) or a folder"
            )
        folder = Path(constants.HF_HOME) / "wig" / "dreamsim" / source
        folder.mkdir(parents=True, exist_ok=True)
        try:  # the package's own download (and, for DINO types, torch.hub's), then a load to prove it
            dreamsim.dreamsim(pretrained=True, device="cpu", cache_dir=str(folder), dreamsim_type=source)
        except Exception as err:
            raise WeightsError(f"cannot resolve DreamSim {source}: {str(err).strip().splitlines()[0]}") from None
        return {"source": f"dreamsim:{source}", "requested": None, "revision": None, "path": str(folder)}

    def preprocess(self, images, protocol):
        check_protocol(protocol)  # DreamSim has one preprocessing under every protocol
        return preprocess(images)

    def _embed(self, x):
        return self.model.embed(x).reshape(len(x), -1)


def distance(generated: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Per generated image: the mean DreamSim distance ``1 − cos`` to every reference."""
    g = np.asarray(generated, dtype=np.float64)
    r = np.asarray(references, dtype=np.float64)
    g = g / np.linalg.norm(g, axis=-1, keepdims=True)
    r = r / np.linalg.norm(r, axis=-1, keepdims=True)
    return (1.0 - g @ r.T).mean(axis=1)


# a distance: lower is better, and fronts and labels turn with it
register_metric(
    Metric(
        "dreamsim",
        "DreamSim distance",
        "subject",
        "references",
        distance,
        encoder=DreamSim.kind,
        higher=False,
        order=50,
    )
)
