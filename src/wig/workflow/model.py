"""The study's domain model: what one resolved ``models:`` entry, fine-tune, training run and
generation job is, and the canonical names their results are filed under (plain data, no torch).

`wig.workflow.validation` builds them from a config; `wig.workflow.study.Study` holds them and
answers the workflow's questions.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

from wig.errors import WigError
from wig.guidance import GuidanceMethod
from wig.models.families import FAMILIES
from wig.personalization import PersonalizationMethod


class StudyError(WigError):
    """A config that describes no runnable study; the message names the key."""


# the model-family facts (`wig.models.base.Family`): a family that edits an input image gets each concept's
# first reference image and image-edit guidance (`GuidanceMethod.requires_image`) only; a family not
# sampled with DDIM is not planned methods that change the DDIM update (`requires_ddim`)
IMAGE_FAMILIES = tuple(n for n, f in FAMILIES.items() if f.image_input)
DDIM_FAMILIES = tuple(n for n, f in FAMILIES.items() if f.ddim)


def canon(value: Any) -> Any:
    """A value with sorted keys: Snakemake compares params by their text, so reordering keys in a
    YAML file must not look like a change."""
    return json.loads(json.dumps(value, sort_keys=True))


def class_slug(noun: str) -> str:
    """A class noun as a path component, unique and valid for any noun: its ASCII letters and
    digits, then 8 hex of the noun's sha256 — "teddy bear" → "teddy_bear-…", "犬" → "…" alone —
    so "teddy bear" and "teddy-bear", or two nouns of no ASCII letters, never share a folder."""
    readable = re.sub(r"[^A-Za-z0-9]+", "_", noun).strip("_")
    digest = hashlib.sha256(noun.encode("utf-8")).hexdigest()[:8]
    return f"{readable}-{digest}" if readable else digest


NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a fine-tune's name: one path component
# what else lives in results/<model>/: a fine-tune must not be named like it
MODEL_FOLDERS = ("model", "pretrain", "tables", "benchmarks", "class_images", "weights.json")


@dataclass(frozen=True)
class Finetune:
    """One ``personalization:`` entry as a model runs it: its name (a path component), the method
    with its settings (the global entry with the model's overrides on top) and its seeds."""

    name: str
    method: PersonalizationMethod
    seeds: tuple[int, ...]  # each (model, concept) is fine-tuned once per seed
    subjects_per_job: int = 1  # runs trained together in one forward (`TrainingPack`)


@dataclass(frozen=True)
class Model:
    """One ``models:`` entry, resolved: where its weights come from and how it is fine-tuned."""

    name: str
    spec: Mapping[str, Any]
    root: str  # the entry whose weights it uses: itself, or the end of its `base:` chain
    root_spec: Mapping[str, Any]
    family: str  # a registered model family (`wig.models.families`)
    finetunes: Mapping[str, Finetune]  # by name, config order
    points: tuple[GuidanceMethod, ...]  # the guidance grid its family's sampler can run
    point_chunks: Mapping[str, tuple[GuidanceMethod, ...]]  # generation jobs' points by their name

    @property
    def kind(self) -> str:
        """How its weights are made: ``tiny`` (a twin built from a shipped config), ``synthetic``
        (pretrained here) or ``checkpoint`` (a real one named by ``path``, resolved once)."""
        if "path" in self.root_spec:
            return "checkpoint"
        return "synthetic" if self.root_spec["tiny"] == "synthetic" else "tiny"

    @property
    def edits(self) -> bool:
        """Whether it edits an input image (an image family): each concept's first reference image."""
        return self.family in IMAGE_FAMILIES

    @property
    def prior(self) -> bool:
        """Whether any of its fine-tunes uses prior preservation (and so class images)."""
        return any(f.method.prior for f in self.finetunes.values())


@dataclass(frozen=True)
class TrainingRun:
    """One fine-tune run: a (model, fine-tune, concept, seed); it writes the full and the weak checkpoint."""

    model: str
    finetune: str
    concept: str
    seed: int

    @property
    def wildcards(self) -> dict[str, str]:
        return {"model": self.model, "finetune": self.finetune, "concept": self.concept, "fseed": str(self.seed)}


@dataclass(frozen=True)
class TrainingPack:
    """Runs of one (model, fine-tune) trained in one job, one forward per step
    (``subjects_per_job`` > 1; `wig.personalization.training.train_loras`). A run's pack is a hash
    of its concept modulo a pack count fixed by the dataset sheet's size (all of a subject's seeds
    in one pack), so adding or removing a subject changes one pack's members and no other's."""

    model: str
    finetune: str
    index: int
    runs: tuple[TrainingRun, ...]

    @property
    def rule(self) -> str:
        """Its rule's name (a Python identifier; the index keeps two packs apart)."""
        return re.sub(r"\W", "_", f"train_{self.model}_{self.finetune}_pack{self.index}")

    @property
    def generate_rule(self) -> str:
        """The name of the rule that generates the pack's runs' images in one job per chunk
        (`wig.workflow.study.Study.generation_packed`)."""
        return re.sub(r"\W", "_", f"generate_{self.model}_{self.finetune}_pack{self.index}")


def pack_of(concept: str, packs: int) -> int:
    """The pack of a subject's runs among ``packs``: a hash of its concept, stable across studies."""
    digest = hashlib.sha256(concept.encode()).hexdigest()
    return int(digest[:12], 16) % packs


@dataclass(frozen=True)
class GenerationJob:
    """One generation job: all prompts of a concept for a chunk of grid points × a chunk of seeds,
    one model load. Its embedding and scoring jobs have the same wildcards."""

    model: str
    finetune: str
    concept: str
    finetune_seed: int
    points: str  # the chunk's name
    seeds: str

    @property
    def wildcards(self) -> dict[str, str]:
        return {
            "model": self.model,
            "finetune": self.finetune,
            "concept": self.concept,
            "fseed": str(self.finetune_seed),
            "points": self.points,
            "seeds": self.seeds,
        }
