"""What every personalization method is: its settings, how one run trains (writing the full and
the weak checkpoint), how a run attaches to a pipeline, and how each guidance branch's weights
are realised from what it attached (modelled on peft's tuners and diffusers' ``loaders/``).

Guidance methods name a branch's weights as coefficients of attached checkpoints: a branch
``{FULL: ω}`` runs at θ + ω(θ' − θ) = θω, ``{}`` at the pretrained θ (`wig.guidance.base.Branch`).
How that is realised is the method's business, behind `BranchWeights`:

- a LoRA (DreamBooth-LoRA): θ + ω·ΔW is the adapter at scale ω, per sample, so every branch of a
  step runs in one batched forward (`wig.personalization.lora.LoraBranchWeights`);
- a fine-tune that learns text embeddings (textual inversion) adds tokens that only the prompt
  uses: the ∅ branch never sees them, its LoRA part is as above;
- a fine-tune of whole tensors realises θω exactly — as an exact low-rank adapter of the
  differences (their rank is bounded by the layer's width), or by a lerped copy of the tensors.

A method is a frozen dataclass whose fields are its settings (`wig.settings.param`), registered
under its ``name``; config (``personalization: {method: db-lora, …}``), the study and the train
rule ask the registry, no other module names a method.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from wig.branches import BranchWeights, step_adapter
from wig.errors import WigError
from wig.settings import Registry, check_settings, param, settings_of

if TYPE_CHECKING:
    from contextlib import ExitStack

    import polars as pl
    import torch


@dataclass(frozen=True)
class Subject:
    """What one run learns from: a concept's images and prompt, and (prior preservation) its
    class's images and prompt."""

    images: Sequence[Any]  # PIL images
    prompt: str  # the instance prompt, e.g. "a photo of sks dog"
    class_images: Sequence[Any] | None = None
    class_prompt: str | None = None


class TrainingExtension:
    """What a method adds to the shared DreamBooth-LoRA loop (`wig.personalization.training.train_lora`)
    without a branch inside it — the model is textual inversion's pivot
    (`wig.personalization.methods.db_lora_ti.Pivot`): new token embeddings train beside the LoRA for the
    first steps, then freeze. The loop calls each hook at a fixed point; the defaults add nothing."""

    def enter(self, pipe, gen: torch.Generator, stack: ExitStack) -> None:
        """Before the prompts are first encoded: change ``pipe`` for the run, and push what undoes
        it onto ``stack`` (closed whatever happens). ``gen`` is the run's seeded CPU generator."""

    def param_groups(self) -> list[dict]:
        """Optimizer parameter groups beside the LoRA's (AdamW; clipped with it)."""
        return []

    def text_trains(self, step: int) -> bool:
        """Whether the prompt's encoding depends on trained parameters at ``step``: the loop then
        encodes it again, with the graph (and once more, without it, the step it stops)."""
        return False

    def after_step(self, step: int) -> None:
        """After the optimizer's step ``step`` (1-based)."""

    def save(self, folder: Path) -> None:
        """Write what it trained into a checkpoint's folder, beside the LoRA."""


@dataclass(frozen=True)
class PersonalizationMethod:
    """A personalization method with its settings: what every method has — how a fine-tune
    attaches to a pipeline and names its subject. Subclasses set ``name``, declare their own
    settings as fields and implement `attach`; methods that train subclass `TrainedMethod`."""

    name: ClassVar[str]
    trains: ClassVar[bool] = False  # a training job makes its fine-tune (else it is given: `methods.given`)
    # the fine-tune of a config that names none (one method, declared on its own class: a subclass
    # does not inherit it)
    default: ClassVar[bool] = False
    batches_subjects: ClassVar[bool] = False  # `TrainedMethod.train_many` runs several subjects in one forward

    def __post_init__(self):
        check_settings(self, self.name)

    # what `supports` asks of a family, in words (its error says it)
    needs: ClassVar[str] = ""

    @classmethod
    def supports(cls, family) -> bool:
        """Whether it trains the model family ``family`` (a `wig.models.base.Family` subclass), read
        from the family's facts (default: every family)."""
        return True

    def check_family(self, pipe) -> None:
        """Refuse a pipeline of a family the method does not train (`supports`)."""
        from wig.models.families import family_of

        family = family_of(pipe)
        if not self.supports(family):
            raise WigError(f"{self.name} needs {self.needs or 'another family'}, which the {family.name} family is not")

    @property
    def prior(self) -> bool:
        """Whether its runs use prior preservation (and so class images)."""
        return False

    def identifier(self, identifier: str) -> str:
        """What names the subject in its prompts, for the dataset's ``identifier`` (a rare token,
        "sks"): that token by default; a method that learns new tokens returns them (textual
        inversion: "<s0><s1>"). Training and evaluation prompts both use it."""
        return identifier

    def settings(self) -> dict[str, Any]:
        """``{"method": name, **settings}``: what `make` takes back (a job's params)."""
        return {"method": self.name, **settings_of(self)}

    def attach(self, pipe, out: str | os.PathLike, weak: bool = True) -> BranchWeights:
        """Attach a fine-tune — a run's full (and weak) checkpoint in its folder ``out`` — to
        ``pipe``; return how branches realise them."""
        raise NotImplementedError


@dataclass(frozen=True)
class TrainedMethod(PersonalizationMethod):
    """A method whose fine-tunes a training job makes: its settings, how one run trains (writing
    the full and the weak checkpoint) and where a run's checkpoints lie."""

    trains: ClassVar[bool] = True
    # what every trained method has: training length, the weak checkpoint, resolution, prior preservation
    steps: int = param(500, "training steps", low=1)
    weak_step: int = param(100, "the step of the weak (early) checkpoint, < steps (AG's weak model)", low=1)
    checkpoints: tuple[int, ...] = param(
        (), "further steps whose checkpoint the run keeps (out/step<k>/; e.g. DreamBlend's 5, 250, 1000)", low=1
    )
    resolution: int = param(512, "training resolution in px", low=8, multiple_of=8)
    prior_weight: float = param(1.0, "weight of the prior-preservation loss; 0 = no class images", low=0.0)
    mixed_precision: str = param("no", "autocast precision on a GPU", choices=("no", "fp16", "bf16"))
    gradient_checkpointing: bool = param(False, "trade compute for memory in the denoiser")

    def __post_init__(self):
        super().__post_init__()
        if self.weak_step >= self.steps:
            raise WigError(f"weak_step must lie in [1, steps), got {self.weak_step} with steps={self.steps}")
        if self.checkpoints and self.checkpoints[-1] > self.steps:
            raise WigError(f"checkpoints must lie in [1, steps], got {list(self.checkpoints)} with steps={self.steps}")

    def checkpoint_steps(self, out: str | os.PathLike) -> dict[int, Path]:
        """The folders of a run's `checkpoints` (``out/step<k>/``), each holding what the weak and
        the full checkpoint hold (the method's files at that step), by step."""
        return {k: Path(out) / step_adapter(k) for k in self.checkpoints}

    def attach_steps(self, pipe, out: str | os.PathLike, steps: Sequence[int]) -> None:
        """Attach the run's checkpoints at ``steps`` (each in its `checkpoints`) beside what
        `attach` attached, as adapters `wig.branches.step_adapter(k)` (DreamBlend's underfit and
        overfit checkpoints)."""
        raise WigError(f"{self.name} attaches no step checkpoints (only its full and weak ones)")

    @property
    def prior(self) -> bool:
        return self.prior_weight > 0

    def train(
        self,
        pipe,
        subject: Subject,
        out: str | os.PathLike,
        seed: int = 0,
        progress: bool = True,
        overwrite: bool = False,
    ) -> pl.DataFrame:
        """Fine-tune ``pipe`` (left as it was) on ``subject``; write the full and the weak
        checkpoint, the training log (``log.parquet``) and the settings (``config.json``) into
        ``out``, atomically. Returns the log. Bit-reproducible on the CPU for a seed."""
        raise NotImplementedError

    def train_many(
        self,
        pipe,
        subjects: Sequence[Subject],
        outs: Sequence[str | os.PathLike],
        seeds: Sequence[int],
        progress: bool = True,
        overwrite: bool = False,
    ) -> list[pl.DataFrame]:
        """`train` for several subjects in one job, in one forward per step where the method
        `batches_subjects`: run k is what ``train(pipe, subjects[k], outs[k], seeds[k])`` writes;
        all runs appear or none does. A method that does not batch trains one subject per job."""
        if len(subjects) != 1:
            raise WigError(f"{self.name} trains one subject per job (it does not batch subjects)")
        return [self.train(pipe, subjects[0], outs[0], seeds[0], progress=progress, overwrite=overwrite)]

    def attach_many(self, pipe, outs: Sequence[str | os.PathLike], weak: bool = True) -> BranchWeights:
        """Attach several runs' fine-tunes to ``pipe`` at once, where the method `batches_subjects`:
        weights whose ``route`` sends each sample of a batch through run k's fine-tune alone (run k
        = subject k of `wig.sampling.generation.generate_sets`). A method that does not batch
        generates one subject per job."""
        raise WigError(f"{self.name} generates one subject per job (it does not batch subjects)")

    def checkpoint_files(self, out: str | os.PathLike) -> dict[str, Path]:
        """The files of a run's full and weak checkpoint in its folder ``out``."""
        raise NotImplementedError


REGISTRY: Registry = Registry("personalization method")  # name -> PersonalizationMethod subclass
register = REGISTRY.register  # class decorator (a plug-in registers itself the same way)
method_class = REGISTRY.method_class


def make(method: str, **settings) -> PersonalizationMethod:
    """A method by name with its settings; a setting the method does not have is refused by name."""
    return REGISTRY.make(method, **settings)
