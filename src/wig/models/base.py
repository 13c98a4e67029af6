"""What a model family is, and the registry the families (`wig.models.families`, one module each)
register in: what differs in how a pipeline is sampled and trained — which module denoises, how a
text becomes its condition, how one network evaluation is called, how latents become images, how
training noises a latent — and its *facts*, plain class attributes read while Snakemake parses
(no torch is imported here or by a family's module until a method runs):

    image_input   it edits an input image (each concept's first reference image in a study)
    ddim          the paper samples it with DDIM (`load_pipeline(scheduler="auto")`); else its own sampler
    twins         its tiny random-init twins: kind → the shipped config each is built from
                  (``<config_package>/tiny_<config>.json``), built by its `Family.build_tiny`

Everything else (guidance, LoRA scales, jobs) is shared.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields
from importlib import resources
from typing import TYPE_CHECKING, ClassVar, Mapping

from wig.errors import WigError, unknown
from wig.lazy import lazy_module

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

log = logging.getLogger("wig.models.families")


class NonFiniteError(WigError):
    """NaN or inf where an image or latent should be: a diverged sample is never a result."""

    def __init__(self, what: str, indices: list[int]):
        super().__init__(f"non-finite values (NaN/inf) in the {what} of image(s) {indices}")
        self.what, self.indices = what, indices


def check_finite(tensor: torch.Tensor, what: str) -> None:
    """Raise `NonFiniteError` naming the batch entries of ``tensor`` that hold NaN or inf."""
    bad = (~torch.isfinite(tensor)).flatten(1).any(1)
    if bool(bad.any()):
        raise NonFiniteError(what, [int(i) for i in torch.nonzero(bad).flatten()])


def warn_truncated(tokenizer, texts: list[str], limit: int, family: str) -> None:
    """Say so when the text encoder will see only the first ``limit`` tokens of a text (what stock
    diffusers warns about, and wig's CLI would otherwise hide)."""
    for text in texts:
        ids = tokenizer(text, truncation=False, add_special_tokens=True)["input_ids"]
        if len(ids) > limit:
            kept = tokenizer.decode(ids[:limit], skip_special_tokens=True)
            log.warning(
                "%s text encoder sees %d of the %d tokens of %r: only %r is used", family, limit, len(ids), text, kept
            )


@dataclass
class Text:
    """A batch of conditions: text hidden states and, for families that use them, their mask, the
    latents of an input image (InstructPix2Pix; zeros where a branch does not see the image), the
    pooled text embedding and the size/crop ids (SDXL's ``text_time`` condition; ids None: the
    sampler's default, original = target size, no crop)."""

    embeds: torch.Tensor
    mask: torch.Tensor | None = None
    image: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    @staticmethod
    def cat(texts: list[Text]) -> Text:
        def cat(parts):
            return None if parts[0] is None else torch.cat(parts)

        return Text(*(cat([getattr(t, f.name) for t in texts]) for f in fields(Text)))

    def select(self, index: torch.Tensor) -> Text:
        """The conditions of the samples ``index``."""
        return Text(*(None if x is None else x[index] for x in (getattr(self, f.name) for f in fields(Text))))


class Family:
    """A model family. A subclass sets the class attributes, implements the methods below (`encode`,
    `predict`, `decode`, `latent_dist`, `noise_scheduler`, `noised`, `build_tiny`, `matches`) and
    registers itself with `register_family` in its own module of ``wig/models/families/`` (or of
    a package with a ``wig.plugins`` entry point)."""

    name: ClassVar[str]
    # the family of a checkpoint entry that names none (one family, SD; a subclass does not inherit it)
    default: ClassVar[bool] = False
    summary: ClassVar[str] = ""  # a few words for help texts ("Stable Diffusion 1.x/2.x")
    # --- facts: read while Snakemake parses (no torch) ---
    image_input: ClassVar[bool] = False  # it edits an input image (`Request.images`)
    ddim: ClassVar[bool] = False  # sampled with DDIM (`load_pipeline(scheduler="auto")`); else its own sampler
    # its tiny twins: kind -> shipped config (``<config_package>/tiny_<config>.json``); a kind the
    # family cannot build itself (the synthetic world's pretrained base) is in `pretrained_twins`
    twins: ClassVar[Mapping[str, str]] = {}
    pretrained_twins: ClassVar[frozenset[str]] = frozenset()
    config_package: ClassVar[str] = "wig.configs"
    # --- how it runs ---
    component: ClassVar[str]  # the pipeline attribute holding the denoiser (and the LoRA)
    lora_format: ClassVar[str] = "peft"  # how its training scripts save a LoRA: "diffusers" (lora.down/up) or "peft"
    lora_targets: ClassVar[tuple[str, ...]]
    text_options: ClassVar[tuple[str, ...]] = ()
    stock_call: ClassVar[dict] = {}  # extra arguments for the stock pipeline call (class images)
    # one CLIP text encoder whose token embeddings training may learn (textual inversion, Custom
    # Diffusion's modifier token): what methods that add tokens ask of a family
    clip_tokens: ClassVar[bool] = False

    @classmethod
    def matches(cls, pipe) -> bool:
        """Whether a loaded pipeline is of this family (`family_of` asks subclasses first)."""
        raise NotImplementedError

    @staticmethod
    def build_tiny(out, config: dict | None = None, seed: int | None = None):
        """Write its tiny random-init twin (a diffusers pipeline folder) to ``out``; return the pipeline."""
        raise NotImplementedError

    @classmethod
    def tiny_config(cls, kind: str | None = None) -> dict:
        """The shipped config its twin ``kind`` (default: the family's own name) is built from."""
        kind = cls.name if kind is None else kind
        return shipped_config(cls.twins[kind], cls.config_package)

    @classmethod
    def denoiser(cls, pipe) -> torch.nn.Module:
        return getattr(pipe, cls.component)

    @classmethod
    def text_encoders(cls, pipe) -> list[torch.nn.Module]:
        """The modules that turn a text into its condition (a fine-tune may change them)."""
        return [pipe.text_encoder]

    @staticmethod
    def image_conditions(images, resolution: int) -> torch.Tensor | None:
        """Per-image conditions training feeds beside an image's latents (SDXL's size/crop ids for
        the images as `wig.personalization.training.pixel_tensor` crops them); None: none."""
        return None

    @staticmethod
    def with_image_conditions(text: Text, conditions: torch.Tensor | None) -> Text:
        """``text`` for a training batch whose images have ``conditions`` (`image_conditions`)."""
        return text

    @classmethod
    def size_step(cls, pipe) -> int:
        """Image sizes must be multiples of this: the autoencoder's stride times the denoiser's
        patch size (diffusers would otherwise round the size down without a word)."""
        return pipe.vae_scale_factor * (getattr(cls.denoiser(pipe).config, "patch_size", None) or 1)


def shipped_config(config: str, package: str = "wig.configs") -> dict:
    """A shipped tiny config, ``<package>/tiny_<config>.json`` (package data; wig's in ``wig.configs``,
    a plug-in family's in its own package): one line naming the file if it is missing or no JSON
    object."""
    where = f"{package}/tiny_{config}.json"
    try:
        loaded = json.loads(resources.files(package).joinpath(f"tiny_{config}.json").read_text(encoding="utf-8"))
    except (OSError, ModuleNotFoundError, UnicodeDecodeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WigError(f"tiny config {where}: cannot read it ({first})") from None
    if not isinstance(loaded, dict):
        raise WigError(f"tiny config {where}: not a JSON object")
    return loaded


FAMILIES: dict[str, type[Family]] = {}  # name -> Family subclass, by name


def register_family(cls: type[Family]) -> type[Family]:
    """Make a family known by its ``name`` (a class decorator; a plug-in registers the same way)."""
    if cls.name in FAMILIES and FAMILIES[cls.name] is not cls:
        raise WigError(f"model family {cls.name!r} is registered twice")
    for kind in cls.twins:
        owner = next((f for f in FAMILIES.values() if f is not cls and kind in f.twins), None)
        if owner is not None:
            raise WigError(f"model family {cls.name}: tiny twin {kind!r} is {owner.name}'s already")
    FAMILIES[cls.name] = cls
    ordered = sorted(FAMILIES.items())
    FAMILIES.clear()
    FAMILIES.update(ordered)
    return cls


@dataclass(frozen=True)
class TinyKind:
    """A tiny twin: built (or pretrained) from a shipped config, sampled by its family."""

    name: str
    config: str
    family: str
    pretrained: bool = False  # made by training here (the synthetic world's base), not by `Family.build_tiny`


def tiny_kinds() -> dict[str, TinyKind]:
    """Every registered family's twins by kind."""
    out = {}
    for family in FAMILIES.values():
        for kind, config in family.twins.items():
            out[kind] = TinyKind(kind, config, family.name, pretrained=kind in family.pretrained_twins)
    return dict(sorted(out.items()))


def default_family() -> type[Family]:
    """The family a ``models:`` entry with a ``path`` and no ``family`` is read as."""
    (family,) = [f for f in FAMILIES.values() if vars(f).get("default")]  # declared, not inherited
    return family


def family_named(name: str) -> type[Family]:
    if name not in FAMILIES:
        raise WigError(unknown("model family", name, FAMILIES))
    return FAMILIES[name]


def family_of(pipe) -> type[Family]:
    """The family of a loaded pipeline: the first whose `Family.matches` says so, subclasses
    before their parents (InstructPix2Pix's UNet before SD's), then by name."""
    depth = {name: len(cls.__mro__) for name, cls in FAMILIES.items()}
    for name in sorted(FAMILIES, key=lambda n: (-depth[n], n)):
        if FAMILIES[name].matches(pipe):
            return FAMILIES[name]
    raise WigError(f"unsupported pipeline {type(pipe).__name__}: wig knows {', '.join(FAMILIES)}")


def check_options(family, options: Mapping) -> None:
    foreign = sorted(set(options) - set(family.text_options))
    if foreign:
        allowed = ", ".join(family.text_options) or "none"
        raise WigError(f"text options {foreign} do not apply to family {family.name} (it takes: {allowed})")
