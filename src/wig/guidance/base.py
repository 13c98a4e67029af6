"""What every guidance method is: its parameters, the branches a step evaluates, how their outputs
combine, what it needs, and how its grid point is named (modelled on diffusers' ``guiders/``, kept
to wig's one batched forward per step).

A *branch* is one network evaluation: a text condition (the prompt, the negative prompt, or a
named extra text the caller supplies per sample) and the weights, given as a scale per adapter.
With a LoRA, θ' = θ + ΔW and θω = ω·θ' + (1−ω)·θ = θ + ω·ΔW is the LoRA at scale ω, so every
branch of every method is "base + Σ scale·ΔW" and all branches of a step run as one batched
forward (`wig.personalization.lora.LoraScales`).

A method is a frozen dataclass whose fields are its parameters (`wig.settings.param`: a default,
bounds or choices and a one-line doc) registered under its ``name``. The sampler, the
grid, the study, the manifests, the tables, the plots and the CLI ask the registry; no other
module names a method.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

from wig.settings import Registry, check_settings, settings_of, type_name
from wig.settings import param as param  # re-exported: the methods declare their parameters with it

if TYPE_CHECKING:
    import torch

PROMPT = "prompt"  # a branch conditioned on the sample's prompt c
NEGATIVE = "negative"  # ... on the negative (by default empty) prompt ∅
RESULT = "result"  # the trajectory whose images a method returns (`GuidanceMethod.companions`)


def canonical(x: float) -> str:
    """The shortest decimal of ``x`` after rounding away float noise: ``0.1 * 3`` and ``0.3`` name
    the same folder."""
    return repr(round(float(x), 9) + 0.0)  # + 0.0 turns -0.0 into 0.0


@dataclass(frozen=True)
class Branch:
    """One network evaluation per step."""

    text: str  # PROMPT, NEGATIVE or the name of an extra text (`GuidanceMethod.extra_texts`)
    scales: Mapping[str, float] = dataclasses.field(default_factory=dict)  # adapter -> scale
    # the input image, for families that take one (InstructPix2Pix); False: zeros in its place
    image: bool = True
    # the latent it denoises: RESULT, or one of the method's `companions`
    trajectory: str = RESULT


@dataclass(frozen=True)
class GuidanceMethod:
    """A guidance method with its settings. Subclasses set the class attributes below, declare
    their parameters as fields, and implement `branches`, `combine` and `point_name`."""

    name: ClassVar[str]
    # what it needs
    requires_fine_tune: ClassVar[bool] = False  # the fine-tuned checkpoint attached (adapter FULL)
    requires_ddim: ClassVar[bool] = False  # a DDIM sampler (it changes the DDIM update itself)
    extra_texts: ClassVar[tuple[str, ...]] = ()  # named texts per sample beyond prompt and negative
    requires_image: ClassVar[bool] = False  # a pipeline that edits an input image (InstructPix2Pix)
    # trajectories sampled beside the result from the same initial noise (DreamBlend's reference);
    # a method with companions implements `combine_trajectories` and may steer the result's latent
    # (`guides`, `guide_latent`); each trajectory's branches run as one batched forward per step
    companions: ClassVar[tuple[str, ...]] = ()
    # how the study reads it
    guided: ClassVar[bool] = True  # it has a guidance scale to sweep (not: the unguided prediction)
    cfg_scale: ClassVar[bool] = False  # its `scale` is a CFG λ (the synthetic base's accuracy is read at those)
    baseline: ClassVar[bool] = False  # the method the paired tables compare every other with
    reference_line: ClassVar[str | None] = None  # drawn as a reference in the ω-ablation (a line style)
    # settings at which it *is* another registered method, step for step: ({setting: value, …}, that
    # method's class), its other settings carried over where the other has them (PG at ω = 1 is
    # CFG). The contract suite (tests/test_contracts.py) holds every method to what it declares.
    reduces_to: ClassVar[tuple[tuple[Mapping[str, Any], type], ...]] = ()

    def __post_init__(self):
        check_settings(self, self.name)

    # --- what a step does --------------------------------------------------------------------

    def branches(self) -> list[Branch]:
        raise NotImplementedError

    def combine(
        self, outs: Sequence[torch.Tensor], step: int = 0, time: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Branch outputs (in `branches` order) → (guided prediction, the prediction the step
        re-noises with). ``step`` (0-based) and ``time`` allow time-dependent weights: ``time``
        is the step's diffusion time in [0, 1] (its timestep over the scheduler's
        ``num_train_timesteps``; 1 = pure noise), the same for an ε, v or flow model."""
        raise NotImplementedError

    def combine_trajectories(
        self, outs: Mapping[str, Sequence[torch.Tensor]], step: int = 0, time: float | None = None
    ) -> dict[str, torch.Tensor]:
        """For a method with `companions`: each trajectory's branch outputs (in `branches` order
        within the trajectory) → each trajectory's guided prediction (the one it steps with)."""
        raise NotImplementedError

    def guides(self, step: int, time: float) -> bool:
        """Whether `guide_latent` steers the result's latent at this step (before its forward);
        the sampler then records the companions' cross-attention maps of the step."""
        return False

    def guide_latent(self, latent: torch.Tensor, companion_maps: Mapping, maps_of, step: int, time: float):
        """The result's latent moved before its forward. ``companion_maps``: per companion, per
        branch (its `branches` index), the step's head-averaged cross-attention maps by layer
        (`wig.models.attention`); ``maps_of(x, branch)`` runs ``branch`` on the latent ``x`` with
        gradients and returns its maps by layer."""
        return latent

    @property
    def is_baseline(self) -> bool:
        """Whether the paired tables compare other points with this one: every CFG point; a method
        whose ω = 1 is a stock guidance of its own (InstructPix2Pix's) says so for that point."""
        return self.baseline

    def reference(self) -> GuidanceMethod | None:
        """The baseline point this one is compared with: CFG at its λ (the tables fall back to the
        grid's first baseline point where that one is not in the grid)."""
        scale = getattr(self, "scale", None)
        return None if scale is None else make(baseline().name, scale=scale)

    def required_adapters(self) -> set[str]:
        """The adapters that must be attached for this setting (`wig.branches`)."""
        from wig.branches import FULL

        return {FULL} if self.requires_fine_tune else set()

    # --- names -------------------------------------------------------------------------------

    @property
    def method(self) -> str:
        return self.name

    @property
    def point_name(self) -> str:
        """The grid point's folder name (its settings, canonically spelled)."""
        raise NotImplementedError

    @property
    def key(self) -> str:
        """The point's place below a sample set: ``{method}/{point_name}``."""
        return f"{self.name}/{self.point_name}"

    def settings(self) -> dict[str, Any]:
        """``{"method": name, **parameters}``: what `make` takes back (a job's params)."""
        return {"method": self.name, **settings_of(self)}

    def __str__(self) -> str:
        values = ", ".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self))
        return f"{self.name}({values})"


REGISTRY: Registry = Registry("guidance method")  # name -> GuidanceMethod subclass
register = REGISTRY.register  # class decorator (a plug-in registers itself the same way)
method_class = REGISTRY.method_class


def parameters(cls: type[GuidanceMethod]) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


foreign_setting = REGISTRY.foreign_setting


def make(method: str, *args, **params) -> GuidanceMethod:
    """A method by name with its settings: ``make("pg", 7.5, omega=0.0)``. A setting the method
    does not have is refused, naming the methods that have it."""
    return REGISTRY.make(method, *args, **params)


def columns() -> dict[str, dataclasses.Field]:
    """Every registered parameter by name, sorted (whatever order plug-ins register in), with the
    first declaration's default: the manifest's and the tables' columns beside ``method``."""
    return REGISTRY.fields()


def column_values(guidance: GuidanceMethod) -> dict[str, Any]:
    """A point's row values: its own parameters, and for the others of the registry their
    defaults (ω = 1 for a method without ω: it is what CFG is)."""
    return {name: getattr(guidance, name, f.default) for name, f in columns().items()}


def point_schema() -> dict:
    """Polars dtypes of a grid point's columns in manifests, scores and tables: ``method`` and
    every registered parameter (`columns`)."""
    import polars as pl

    dtypes = {"float": pl.Float64, "str": pl.String, "int": pl.Int64}
    return {"method": pl.String, **{n: dtypes[type_name(f)] for n, f in columns().items()}}


def point_of(row: Mapping[str, Any]) -> GuidanceMethod:
    """The grid point a manifest, score or table row names: its method with that method's own
    parameter columns (the others hold the registry's defaults)."""
    cls = method_class(row["method"])
    return cls(**{name: row[name] for name in parameters(cls)})


def point_columns(guidance: GuidanceMethod) -> dict[str, Any]:
    """A point's values for `point_schema`."""
    return {"method": guidance.name, **column_values(guidance)}


def baseline() -> type[GuidanceMethod]:
    (cls,) = [c for c in REGISTRY.values() if c.baseline]
    return cls
