"""The model families wig ships, one module each — its facts, its `Family` class and its tiny-twin
builder together:

    sd    UNet2DConditionModel, CLIP text states, ε/v/x0 prediction, DDPM noising, AutoencoderKL
    sana  SanaTransformer2DModel, Gemma-2 states + attention mask, flow prediction (v = ε − x0),
          rectified-flow noising x_σ = (1 − σ)·x0 + σ·ε, AutoencoderDC
    ip2p  InstructPix2Pix: sd with the input image's latents beside the noisy ones (8 channels)
    sdxl  sd with two CLIP encoders, a pooled text embedding and size/crop ids (``text_time``)

Each mirrors its stock diffusers pipeline operation for operation (``StableDiffusionPipeline``,
``SanaPipeline``, ``StableDiffusionInstructPix2PixPipeline``, ``StableDiffusionXLPipeline``), which
the tests check image for image. What a family is and the registry: `wig.models.base`. Every
module here is imported, so registered, with this package (`wig.plugins.discover`); a new family
is a new module (and its ``tiny_<config>.json``). Nothing here imports torch until it runs: the
study reads the families' facts while Snakemake parses.
"""

from wig.models.base import (
    FAMILIES,
    Family,
    NonFiniteError,
    Text,
    TinyKind,
    check_finite,
    check_options,
    default_family,
    family_named,
    family_of,
    register_family,
    shipped_config,
    tiny_kinds,
)


def default_config(kind: str) -> dict:
    """The shipped config the tiny twin ``kind`` is built from."""
    from wig.errors import WigError, unknown

    kinds = tiny_kinds()
    if kind not in kinds:
        raise WigError(unknown("tiny model", kind, kinds))
    return family_named(kinds[kind].family).tiny_config(kind)


def build_tiny(kind: str, out, config: dict | None = None, seed: int | None = None):
    """Build the tiny twin ``kind`` into ``out`` with its family's builder (config default: its
    shipped one)."""
    from wig.errors import WigError, unknown

    kinds = tiny_kinds()
    if kind not in kinds or kinds[kind].pretrained:
        buildable = [k for k, t in kinds.items() if not t.pretrained]
        raise WigError(unknown("tiny model to build", kind, buildable))
    family = family_named(kinds[kind].family)
    return family.build_tiny(out, config if config is not None else default_config(kind), seed)


__all__ = [
    "FAMILIES",
    "Family",
    "NonFiniteError",
    "Text",
    "TinyKind",
    "build_tiny",
    "check_finite",
    "check_options",
    "default_config",
    "default_family",
    "family_named",
    "family_of",
    "register_family",
    "shipped_config",
    "tiny_kinds",
]

# last, once the names above exist: the families (and entry points' plug-ins) import them
from wig.plugins import discover  # noqa: E402

discover(__name__)
