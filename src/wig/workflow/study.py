"""The study a config describes, as plain data: models, concepts, personalization runs, generation
jobs and the canonical names their results are filed under.

The workflow (``workflow/rules/common.smk``) validates the config against its schema, builds one
`Study` and asks it for everything the DAG needs; nothing about the study is decided in the
Snakefiles. So every rule of the study — base-model chains, fine-tune setting merges, chunking,
class folders, and every config error — is testable in plain Python, without Snakemake. Split by
concern: the checks that read a config (`wig.workflow.validation`), the domain model
(`wig.workflow.model`), each rule's settings (`wig.workflow.rule_params.RuleParams`); this module
holds them together and plans the jobs.

Names are the wildcard values of result paths: ``finetune`` (a ``personalization:`` entry's
name), ``fseed`` (its seed), ``points`` (a generation
job's grid points: ``{method}/{point}`` for one, ``points{k}`` for several, `wig.guidance.grid.job_chunks`),
``seeds`` (its sampling seeds joined by ``_``) and ``noun`` (a class-image folder). They are made
here once, canonically, so one setting always names one folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from wig.branches import FULL, WEAK
from wig.concepts import Concept
from wig.evaluation.metrics import REGISTRY as METRICS
from wig.guidance import GuidanceMethod
from wig.workflow.model import (  # StudyError: the error a study raises, here for its users
    GenerationJob,
    Model,
    StudyError,
    TrainingPack,
    TrainingRun,
    class_slug,
    pack_of,
)
from wig.workflow.rule_params import RuleParams
from wig.workflow.search import SearchSpec
from wig.workflow.user_study import user_study_design
from wig.workflow.validation import parse

__all__ = ["Study", "StudyError"]


@dataclass(frozen=True)
class Study(RuleParams):
    config: Mapping[str, Any] = field(repr=False)
    models: Mapping[str, Model]  # sorted by name: reordering YAML keys must not rerun the plots
    concepts: Mapping[str, Concept]
    prompts: Mapping[str, tuple[str, ...]]  # per concept, the evaluation prompts (dataset identifier filled in)
    points: tuple[GuidanceMethod, ...]  # the whole grid, config order
    seed_chunks: Mapping[str, tuple[int, ...]]  # a generation job's seeds by their name
    classes: Mapping[str, str]  # class-image folder → class noun
    encoders: Mapping[str, Mapping[str, Any]]  # kind → spec with its kind
    metrics: tuple[str, ...]  # the registered metrics (wig.evaluation.metrics) the score jobs compute
    searches: Mapping[str, SearchSpec] = field(default_factory=dict)  # ``search:`` by name
    sheet_size: int = 0  # the concepts the dataset's sheet lists (selected or not): fixes the pack count

    def summary(self) -> dict[str, str]:
        """What this study runs, in words, for the report's description: its models (family and
        source), fine-tunes, guidance methods, metrics and concepts — read from the study, so the
        report names what the config actually ran."""

        def source(model: Model) -> str:
            return {"checkpoint": model.root_spec.get("path", ""), "synthetic": "the synthetic world's base"}.get(
                model.kind, "a tiny random-init twin"
            )

        finetunes = {f"{f.name} ({f.method.name})" for m in self.models.values() for f in m.finetunes.values()}
        return {
            "models": "; ".join(f"{n} ({m.family}, {source(m)})" for n, m in self.models.items()),
            "finetunes": ", ".join(sorted(finetunes)),
            "guidance": ", ".join(dict.fromkeys(p.name for p in self.points)),
            "metrics": ", ".join(METRICS[m].label for m in self.metrics),
            "concepts": f"{len(self.concepts)} concept(s)",
        }

    # --- building -----------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Study":
        """The study of a schema-validated config (defaults filled in), every check made
        (`wig.workflow.validation.parse`); raises `StudyError` naming the key of the first problem."""
        study = cls(config, *parse(config))
        study.user_study_design()  # its checks, before any job
        return study

    # --- what the config says -----------------------------------------------------------------

    @property
    def fetch(self) -> Mapping[str, Any] | None:
        return self.config["dataset"].get("fetch")

    @property
    def render(self) -> Mapping[str, Any] | None:
        """The synthetic world's dataset settings, when a rule draws the images."""
        return self.config["dataset"].get("render")

    @property
    def references(self) -> bool:
        """Whether the concepts have reference images (``dataset.root``); a prompt set has none."""
        return bool(self.config["dataset"].get("root"))

    @property
    def cfg_scales(self) -> list[float]:
        """Every λ of the grid's CFG-style points."""
        return sorted({p.scale for p in self.points if p.cfg_scale})

    def bases(self, kind: str) -> list[str]:
        """The models whose weights a rule makes (or resolves), of this `Model.kind`: the entries
        without ``base:``; the others use their root's."""
        return [m for m, model in self.models.items() if model.kind == kind and model.root == m]

    def world_bases(self) -> list[str]:
        """The base models of a synthetic-world study (``dataset.render``) — pretrained here or the
        shipped one named by ``path`` —, whose oracle accuracy rule base_accuracy measures."""
        if not self.render:
            return []
        return [m for m, model in self.models.items() if model.root == m and not model.edits]

    def class_of(self, concept: str) -> str:
        """The class-image folder of a concept's class noun."""
        return class_slug(self.concepts[concept].class_noun)

    def class_prompt(self, noun: str) -> str:
        return self.config["class_images"]["prompt"].format(noun)

    def user_study_design(self) -> dict[str, Any] | None:
        """The ``user_study:`` sets and what makes each image (`wig.workflow.user_study`), or None."""
        return user_study_design(self)

    # --- the jobs -----------------------------------------------------------------------------

    def class_image_sets(self) -> Iterator[tuple[str, str]]:
        """(model, class folder) of every class-image set: prior-preserving models of their own
        weights' base, one per class noun."""
        for name, model in self.models.items():
            if model.prior:
                for noun in sorted({self.class_of(c) for c in self.concepts}):
                    yield name, noun

    def finetune_pairs(self) -> list[tuple[str, str]]:
        """Every (model, fine-tune): each has its own runs, samples, tables and grids."""
        return [(name, f) for name, model in self.models.items() for f in model.finetunes]

    def training_runs(self, model: str | None = None, finetune: str | None = None) -> Iterator[TrainingRun]:
        for name, ft in self.finetune_pairs():
            if model not in (None, name) or finetune not in (None, ft):
                continue
            for concept in self.concepts:
                for seed in self.models[name].finetunes[ft].seeds:
                    yield TrainingRun(name, ft, concept, seed)

    def training_packs(self) -> list[TrainingPack]:
        """The jobs that train several runs in one forward: per (model, fine-tune) whose
        ``subjects_per_job`` K > 1, ⌈sheet size × seeds / K⌉ packs, a run in pack `pack_of` its
        concept — a function of the subject alone, so a subject added to or dropped from
        ``dataset.concepts`` changes one pack (≈ K runs each; empty packs are no job)."""
        packs = []
        for name, ft in self.finetune_pairs():
            if not self.packed(name, ft):
                continue
            finetune = self.models[name].finetunes[ft]
            count = max(
                1, -(-max(self.sheet_size, len(self.concepts)) * len(finetune.seeds) // finetune.subjects_per_job)
            )
            members: dict[int, list[TrainingRun]] = {}
            for run in self.training_runs(name, ft):
                members.setdefault(pack_of(run.concept, count), []).append(run)
            packs += [TrainingPack(name, ft, i, tuple(runs)) for i, runs in sorted(members.items())]
        return packs

    def packed(self, model: str, finetune: str) -> bool:
        """Whether a (model, fine-tune)'s runs are trained in packs (rule train_<pack>), not one per job."""
        ft = self.models[model].finetunes[finetune]
        return ft.method.trains and ft.subjects_per_job > 1

    def generation_packed(self, model: str, finetune: str) -> bool:
        """Whether a packed (model, fine-tune) also generates each pack's runs in one job per
        (points, seeds) chunk (rule generate_<pack>, `wig.sampling.generation.generate_sets`): its
        method attaches several runs at once and routes each sample to its own
        (`PersonalizationMethod.attach_many`, db-lora), and every grid point runs on the full and
        weak checkpoints alone with no companion trajectory — DreamBlend's step checkpoints and
        an editing model's input images stay one subject per job."""
        if not self.packed(model, finetune):
            return False
        entry = self.models[model]
        return (
            entry.finetunes[finetune].method.batches_subjects
            and not entry.edits
            and all(p.required_adapters() <= {FULL, WEAK} and not p.companions for p in entry.points)
        )

    def generation_packs(self) -> list[TrainingPack]:
        """The training packs whose runs' images are generated together (`generation_packed`)."""
        return [p for p in self.training_packs() if self.generation_packed(p.model, p.finetune)]

    def generation_jobs(
        self,
        model: str | None = None,
        finetune: str | None = None,
        concept: str | None = None,
        finetune_seed: int | None = None,
    ) -> Iterator[GenerationJob]:
        for run in self.training_runs(model, finetune):
            if concept not in (None, run.concept) or finetune_seed not in (None, run.seed):
                continue
            for points in self.models[run.model].point_chunks:
                for seeds in self.seed_chunks:
                    yield GenerationJob(run.model, run.finetune, run.concept, run.seed, points, seeds)

    def grid_jobs(self, model: str, finetune: str, concept: str) -> list[GenerationJob]:
        """The generation jobs a (model, fine-tune, concept)'s image grid shows: its first seed's."""
        first = self.models[model].finetunes[finetune].seeds[0]
        return list(self.generation_jobs(model, finetune, concept, first))
