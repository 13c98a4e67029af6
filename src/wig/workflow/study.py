"""The study a config describes, as plain data: models, concepts, personalization runs, generation
jobs and the canonical names their results are filed under.

The workflow (``workflow/rules/common.smk``) validates the config against its schema, builds one
`Study` and asks it for everything the DAG needs; nothing about the study is decided in the
Snakefiles. So every rule of the study — base-model chains, fine-tune setting merges, chunking,
class folders, and every config error — is testable in plain Python, without Snakemake.

Names are the wildcard values of result paths: ``finetune`` (a ``personalization:`` entry's
name), ``fseed`` (its seed), ``points`` (a generation
job's grid points: ``{method}/{point}`` for one, ``points{k}`` for several, `wig.guidance.grid.job_chunks`),
``seeds`` (its sampling seeds joined by ``_``) and ``noun`` (a class-image folder). They are made
here once, canonically, so one setting always names one folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from wig.concepts import TEXTS, Concept, image_files, read_dreambooth, read_sheet
from wig.errors import WigError, unknown
from wig.evaluation.encoders import ENCODERS, encoder_class
from wig.evaluation.metrics import REGISTRY as METRICS
from wig.evaluation.metrics import enabled_metrics
from wig.guidance import REGISTRY as GUIDANCE
from wig.guidance import GuidanceMethod
from wig.guidance.grid import expand, job_chunks
from wig.models.facts import FAMILIES, TINY, shipped_config
from wig.personalization import PersonalizationMethod, method_class
from wig.personalization import make as make_method
from wig.provenance import encoder_id
from wig.settings import settings_names
from wig.workflow.search import PROBE, SearchSpec, parse_searches, selection_split


class StudyError(WigError):
    """A config that describes no runnable study; the message names the key."""


# the model-family facts (`wig.models.facts`): a family that edits an input image gets each concept's
# first reference image and image-edit guidance (`GuidanceMethod.requires_image`) only; a family not
# sampled with DDIM is not planned methods that change the DDIM update (`requires_ddim`)
IMAGE_FAMILIES = tuple(n for n, f in FAMILIES.items() if f.image_input)
DDIM_FAMILIES = tuple(n for n, f in FAMILIES.items() if f.ddim)


def canon(value: Any) -> Any:
    """A value with sorted keys: Snakemake compares params by their text, so reordering keys in a
    YAML file must not look like a change."""
    return json.loads(json.dumps(value, sort_keys=True))


def pretrain_config(spec: dict, stage: str) -> dict:
    """The part of ``tiny_synthetic.json`` a pretraining stage (``vae`` or ``model``) of a
    ``tiny: synthetic`` model entry reads, with its seed and its ``pretrain:`` step counts: a UNet
    setting keeps the autoencoder."""
    keys = {
        "vae": ("size", "vae", "vae_training"),
        "model": ("size", "unet", "text_encoder", "scheduler", "training"),
    }[stage]
    shipped = shipped_config("synthetic")
    for section, key in (("vae_training", "vae_steps"), ("training", "steps")):
        if key in spec.get("pretrain", {}):
            shipped[section]["steps"] = spec["pretrain"][key]
    return canon({"seed": spec.get("seed", 0), **{k: shipped[k] for k in keys}})


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


@dataclass(frozen=True)
class Model:
    """One ``models:`` entry, resolved: where its weights come from and how it is fine-tuned."""

    name: str
    spec: Mapping[str, Any]
    root: str  # the entry whose weights it uses: itself, or the end of its `base:` chain
    root_spec: Mapping[str, Any]
    family: str  # sd | sana (wig.models.families)
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


@dataclass(frozen=True)
class Study:
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
        """The study of a schema-validated config (defaults filled in). Reads the concept sheet, the
        prompt lists and, unless a rule fetches or renders them, the concepts' image folders.
        Raises `StudyError` naming the key of the first problem."""
        ds = config["dataset"]
        if ds.get("fetch") and ds.get("render"):
            raise StudyError("dataset.fetch and dataset.render both fill dataset.root: choose one")
        try:
            points = tuple(expand(config["guidance"]))
            if ds["format"] == "dreambooth":  # google/dreambooth's prompts_and_classes.txt, as published
                if ds.get("prompts") or ds["columns"]:
                    raise StudyError(
                        "dataset.format dreambooth: the table holds the prompts and classes (no prompts, columns)"
                    )
                sheet = read_dreambooth(ds["sheet"])
            else:
                sheet = read_sheet(ds["sheet"], columns=ds["columns"], prompts=ds.get("prompts"))
        except WigError as err:
            raise StudyError(str(err)) from None
        wanted = ds.get("concepts", list(sheet))
        missing = [c for c in wanted if c not in sheet]
        if missing:
            raise StudyError(f"dataset.concepts {missing} are not in the sheet {ds['sheet']}")
        concepts = {c: sheet[c] for c in wanted}
        if ds.get("root") and not (ds.get("fetch") or ds.get("render")):  # else a rule fills the root
            absent = [c for c, concept in concepts.items() if not (Path(ds["root"]) / concept.folder).is_dir()]
            if absent:
                shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
                which = (
                    "dataset.concepts names them"
                    if "concepts" in ds
                    else f"dataset.concepts is unset, so every subject of {ds['sheet']} is studied: list the ones "
                    "you have under dataset.concepts"
                )
                raise StudyError(
                    f"dataset.root {ds['root']} has no folder for {len(absent)} of {len(concepts)} concepts "
                    f"({shown}); {which}"
                )
        prompts = {}
        for cid, concept in concepts.items():
            try:
                if ds.get("root") and not (ds.get("fetch") or ds.get("render")):  # else prepare checks them
                    image_files(Path(ds["root"]) / concept.folder)
                prompts[cid] = tuple(concept.prompts(ds["identifier"])[: ds["max_prompts"]])
            except WigError as err:
                raise StudyError(f"concept {cid}: {err}") from None
        for point in points:
            for name in point.extra_texts:
                if name not in TEXTS:
                    raise StudyError(
                        f"guidance: {point.method} conditions a branch on the text {name!r}, which no concept "
                        f"text makes (wig.concepts.TEXTS: {', '.join(sorted(TEXTS))})"
                    )
        if not (config["encoders"] or ds.get("render")):
            raise StudyError(
                "encoders is empty and dataset.render is not set: nothing would score the images "
                "(the oracle metrics exist for the synthetic world only)"
            )
        k = config["sampling"]["seeds_per_job"]
        seeds = config["seeds"]
        seed_chunks = {"_".join(map(str, seeds[i : i + k])): tuple(seeds[i : i + k]) for i in range(0, len(seeds), k)}
        classes: dict[str, str] = {}
        for concept in concepts.values():
            if concept.named:
                classes.setdefault(class_slug(concept.class_noun), concept.class_noun)
        finetunes = _finetunes(config["personalization"])
        models = {name: _model(config, name, points, finetunes) for name in sorted(config["models"])}
        _check_dataset(config, models, concepts)
        encoders = {kind: {"kind": kind, **spec} for kind, spec in config["encoders"].items()}
        for kind in encoders:
            if kind not in ENCODERS:
                raise StudyError(f"encoders.{kind}: {unknown('encoder kind', kind, ENCODERS)}")
        for kind, spec in encoders.items():  # trained here: the kinds that say so (`Encoder.trained`)
            trained = encoder_class(kind).trained
            if ("train" in spec) != (trained and not spec.get("tiny")):
                raise StudyError(
                    f"encoders.{kind}: only the kinds {sorted(k for k, c in ENCODERS.items() if c.trained)} are "
                    f"trained here (train: {{...}}), and they have no real checkpoint: give them train or tiny"
                )
        metrics = tuple(_metrics(config, encoders))
        try:
            searches = parse_searches(config["search"], points, metrics)
        except WigError as err:
            raise StudyError(str(err)) from None
        for spec in searches.values():
            for name, model in models.items():
                probe = spec.point(spec.bounds.lo)
                if (probe.requires_ddim and model.family not in DDIM_FAMILIES) or probe.requires_image != model.edits:
                    raise StudyError(f"search {spec.name}: models.{name} ({model.family}) cannot run {spec.method}")
        return cls(config, models, concepts, prompts, points, seed_chunks, classes, encoders, metrics, searches)

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

    # --- a job's settings (its params) --------------------------------------------------------
    # Each takes the wildcard values of the job by their names (``model``, ``concept``, ``noun``,
    # ``finetune``, ``fseed``, ``points``, ``encoder``), so the workflow passes them straight through.

    def model_spec(self, model: str) -> dict:
        return canon(self.models[model].spec)

    def tiny_config(self, model: str) -> dict:
        """The shipped config of a tiny twin: editing it rebuilds the twin."""
        kind = self.models[model].spec["tiny"]
        return canon(shipped_config(TINY[kind].config))

    def pretrain_config(self, model: str, stage: str) -> dict:
        return pretrain_config(self.models[model].spec, stage)

    def concept_folder(self, concept: str) -> str:
        return str(Path(self.config["dataset"]["root"]) / self.concepts[concept].folder)

    def concept_prompts(self, model: str, finetune: str, concept: str) -> list[str]:
        """A concept's evaluation prompts as a fine-tune names the subject (`PersonalizationMethod.identifier`)."""
        identifier = self._identifier(model, finetune)
        return self.concepts[concept].prompts(identifier)[: len(self.prompts[concept])]

    def _identifier(self, model: str, finetune: str) -> str:
        return self.models[model].finetunes[finetune].method.identifier(self.config["dataset"]["identifier"])

    def class_image_settings(self, model: str, noun: str) -> dict:
        settings = self.config["class_images"]
        # one set per (model, class) serves every prior-preserving fine-tune: drawn at the largest
        # resolution among them (training resizes)
        resolution = max(f.method.resolution for f in self.models[model].finetunes.values() if f.method.prior)
        return canon(
            {
                "prompt": self.class_prompt(self.classes[noun]),
                **{k: settings[k] for k in ("count", "seed", "steps", "scale")},
                "height": resolution,
                "width": resolution,
            }
        )

    def finetune_weights(self, model: str, finetune: str) -> dict:
        """What a given (not trained) fine-tune's weights are, for its resolve rule."""
        method = self.models[model].finetunes[finetune].method
        return canon({"weights": method.weights, "kind": method.kind})

    def finetune_settings(self, model: str, finetune: str) -> dict:
        """The fine-tune's method and settings (``make`` takes them back)."""
        return canon(self.models[model].finetunes[finetune].method.settings())

    def subject_prompts(self, model: str, finetune: str, concept: str) -> dict:
        """A run's instance prompt and, with prior preservation, its class prompt."""
        ds = self.config["dataset"]
        subject = self.concepts[concept]
        prior = self.models[model].finetunes[finetune].method.prior
        return {
            "prompt": ds["instance_prompt"].format(subject.subject(self._identifier(model, finetune))),
            "class_prompt": self.class_prompt(subject.class_noun) if prior else None,
        }

    def learning_runs(self, model: str, finetune: str) -> list[TrainingRun]:
        """The runs whose subjects rule learning checks: a synthetic-world study's trained fine-tunes."""
        if not self.render or not self.models[model].finetunes[finetune].method.trains:
            return []
        return list(self.training_runs(model, finetune))

    def learning_settings(self, model: str, finetune: str) -> dict:
        """Rule learning's settings: seeds per prompt, CFG's λ (default: the grid's middle CFG λ),
        the instance prompt, the words naming each subject, the runs as (concept, LoRA seed)."""
        settings = self.config["learning"]
        scales = self.cfg_scales or [7.5]
        identifier = self._identifier(model, finetune)
        return canon(
            {
                "seeds": list(range(settings["seeds"])),
                "scale": settings.get("scale") or scales[len(scales) // 2],
                "instance_prompt": self.config["dataset"]["instance_prompt"],
                "subjects": {c: self.concepts[c].subject(identifier) for c in self.concepts},
                "runs": [[r.concept, r.seed] for r in self.learning_runs(model, finetune)],
            }
        )

    def points_of(self, model: str, points: str) -> tuple[GuidanceMethod, ...]:
        """A generation job's grid points: a chunk of the grid, or a search's probe (probe/<search>/<value>)."""
        if points in self.models[model].point_chunks:
            return self.models[model].point_chunks[points]
        prefix, search, value = points.split("/")
        if prefix != PROBE or search not in self.searches:
            raise StudyError(f"no generation job {points!r} for model {model}")
        return (self.searches[search].point(float(value)),)

    def probe_chunk(self, model: str, search: str, value: float) -> str:
        """The generation job of a probe: the grid's job that holds its point (so a probe on the grid is
        the grid's image set), else its own, probe/<search>/<value>."""
        key = self.searches[search].point(value).key
        for name, points in self.models[model].point_chunks.items():
            if key in {p.key for p in points}:
                return name
        return self.searches[search].chunk(value)

    def probe_jobs(self, model: str, finetune: str, search: str, value: float) -> list[GenerationJob]:
        """Every generation job of one probe: each concept, fine-tune seed and seed chunk."""
        chunk = self.probe_chunk(model, search, value)
        return [
            GenerationJob(run.model, run.finetune, run.concept, run.seed, chunk, seeds)
            for run in self.training_runs(model, finetune)
            for seeds in self.seed_chunks
        ]

    @property
    def selection(self) -> dict[str, list[int]]:
        """Per concept, the prompt indices searches read (`selection`); the rest report their choice."""
        sel = self.config["selection"]
        return selection_split({c: len(p) for c, p in self.prompts.items()}, sel["fraction"], sel["seed"])

    def search_settings(self, search: str) -> dict:
        """A search's settings (its step jobs' params): the parameter, bracket, stopping rule, objective."""
        spec = self.searches[search]
        b = spec.bounds
        return canon(
            {
                "method": spec.method,
                "parameter": spec.parameter,
                "settings": dict(spec.settings),
                "bracket": [b.lo, b.hi],
                "tolerance": b.tolerance,
                "resolution": b.resolution,
                "max_probes": b.max_probes,
                "objective": spec.objective,
                "text_at_least": spec.text_at_least.settings() if spec.text_at_least else None,
                "protocol": self.config["evaluation"].get("plot_protocol"),
            }
        )

    def extra_texts_of(self, model: str, points: str, concept: str) -> dict:
        """A generation job's extra texts: for each text its points' branches name, one per prompt."""
        names = sorted({name for p in self.points_of(model, points) for name in p.extra_texts})
        n = len(self.prompts[concept])
        return {name: TEXTS[name](self.concepts[concept])[:n] for name in names}

    def guidance_of(self, model: str, points: str) -> dict:
        """A generation job's points: {point key: guidance settings}."""
        return canon({p.key: p.settings() for p in self.points_of(model, points)})

    def grid_layout(self, model: str, concept: str) -> dict:
        """The image grid of a (model, fine-tune, concept): its rows (grid points, in grid order, by key and
        by label) and its columns (seed × prompt)."""
        points = self.models[model].points
        shown = len(self.prompts[concept][: self.config["evaluation"]["grid_prompts"]])
        return {
            "points": [p.key for p in points],
            "rows": [f"{p.method} {p.point_name}" for p in points],
            "prompts": shown,  # the first prompts of each seed (`evaluation.grid_prompts`)
            "columns": [f"s{seed} p{i:02d}" for seed in self.config["seeds"] for i in range(shown)],
        }

    def encoder_spec(self, encoder: str) -> dict:
        return canon(self.encoders[encoder])

    def trained_encoders(self) -> list[str]:
        """The encoders trained here (rule train_encoder)."""
        return [kind for kind, spec in self.encoders.items() if "train" in spec]

    def metric_encoders(self) -> list[str]:
        """The encoders whose image embeddings an enabled metric reads."""
        return list(dict.fromkeys(METRICS[m].encoder for m in self.metrics if METRICS[m].encoder is not None))

    def encoder_ids(self) -> dict:
        """The stable name of each encoder a metric reads, written into and checked against the
        embedding files."""
        return canon({kind: encoder_id(self.encoders[kind]) for kind in self.metric_encoders()})

    def reference_encoders(self) -> list[str]:
        """The encoders whose embeddings of the concept's reference images an enabled metric reads."""
        return list(dict.fromkeys(METRICS[m].encoder for m in self.metrics if METRICS[m].reads == "references"))

    def text_encoders(self) -> list[str]:
        """The encoders whose prompt-text embeddings an enabled metric reads."""
        return list(dict.fromkeys(METRICS[m].encoder for m in self.metrics if METRICS[m].reads == "texts"))

    def metric_texts(self, concept: str) -> list[str]:
        """The concept's prompts as the text metrics read them (CLIP-T, PickScore): see `evaluation.clip_t_text`."""
        texts = self.concepts[concept].clip_texts(self.config["evaluation"]["clip_t_text"])
        return texts[: self.config["dataset"]["max_prompts"]]

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


def _check_dataset(config: Mapping[str, Any], models: Mapping[str, Model], concepts: Mapping[str, Concept]) -> None:
    """A fine-tune trained here learns each concept from its reference images, under its class noun;
    an image family edits each concept's first image."""
    for name, model in models.items():
        if model.edits and not config["dataset"].get("root"):
            raise StudyError(
                f"models.{name} ({model.family}) edits each concept's first image, but dataset.root is not set"
            )
        for ft in model.finetunes.values():
            if not ft.method.trains:
                continue
            if not config["dataset"].get("root"):
                raise StudyError(
                    f"models.{name}: fine-tune {ft.name} ({ft.method.name}) trains on the concepts' reference "
                    "images, but dataset.root is not set (a prompt set): use a given fine-tune (method: given)"
                )
            unnamed = [c for c, concept in concepts.items() if not concept.named]
            if unnamed:
                raise StudyError(
                    f"models.{name}: fine-tune {ft.name} ({ft.method.name}) names its subject as "
                    f"'<identifier> <class noun>', but concept {unnamed[0]} has no class noun in "
                    f"{config['dataset']['sheet']}"
                )


def _metrics(config: Mapping[str, Any], encoders: Mapping[str, Any]) -> list[str]:
    """``evaluation.metrics``, or every registered metric the encoders (and the synthetic world)
    allow — those that read reference images only where the concepts have them; each checked
    against what it reads."""
    render = bool(config["dataset"].get("render"))
    references = bool(config["dataset"].get("root"))
    names = config["evaluation"].get("metrics") or [
        m for m in enabled_metrics(encoders, render) if references or METRICS[m].reads != "references"
    ]
    for name in names:
        if name not in METRICS:
            raise StudyError(f"evaluation.metrics: {unknown('metric', name, METRICS)}")
        metric = METRICS[name]
        if metric.encoder is not None and metric.encoder not in encoders:
            raise StudyError(
                f"evaluation.metrics: {name} reads {metric.encoder} embeddings, "
                f"but encoders.{metric.encoder} is not set"
            )
        if metric.synthetic_only and not render:
            raise StudyError(
                f"evaluation.metrics: {name} reads the synthetic world's images, but dataset.render is not set"
            )
        if metric.reads == "references" and not references:
            raise StudyError(
                f"evaluation.metrics: {name} reads the concepts' reference images, but dataset.root is not set "
                "(a prompt set has none)"
            )
    # the tables, the matched-text comparison and the figures weigh subject against text fidelity;
    # a prompt set has no subject, so its tables and figures are text fidelity alone
    for side in ("subject", "text") if references else ("text",):
        if names and not any(METRICS[n].fidelity == side for n in names):
            choices = ", ".join(n for n, m in METRICS.items() if m.fidelity == side)
            raise StudyError(
                f"evaluation.metrics: {list(names)} measure no {side} fidelity; the tables compare subject with "
                f"text fidelity: add one of {choices}"
            )
    return list(names)


def _seeds(value: Any, key: str) -> tuple[int, ...]:
    seeds = value if isinstance(value, list) else [value]
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise StudyError(f"{key}: a seed is an integer ≥ 0 (or a non-empty list of them), got {value!r}")
    if len(set(seeds)) != len(seeds):
        raise StudyError(f"{key}: seeds repeat in {value!r}")
    return tuple(seeds)


def _settings(entry: Mapping[str, Any]) -> dict:
    """A ``personalization:`` entry's method settings (all but method, name and seed)."""
    return {k: v for k, v in entry.items() if k not in ("method", "name", "seed")}


def _finetunes(entries: Any) -> dict[str, dict]:
    """``personalization:`` (one entry or a list) → {name: entry}. The name defaults to the
    method's and is a path component; settings are checked per model (`_model`), after its
    overrides."""
    entries = entries if isinstance(entries, list) else [entries]
    out: dict[str, dict] = {}
    for i, entry in enumerate(entries):
        key = f"personalization[{i}]" if len(entries) > 1 else "personalization"
        if "method" not in entry:
            raise StudyError(f"{key}: name the method (method: …)")
        try:
            cls = method_class(entry["method"])
        except WigError as err:
            raise StudyError(f"{key}.method: {err}") from None
        if not cls.trains and _seeds(entry.get("seed", 0), f"{key}.seed") != (0,):
            raise StudyError(f"{key}.seed: a {entry['method']} fine-tune is not trained, it has no seeds to vary")
        try:
            make_method(entry["method"], **_settings(entry))
        except WigError as err:
            raise StudyError(f"{key}: {err}") from None
        _seeds(entry.get("seed", 0), f"{key}.seed")
        name = entry.get("name", entry["method"])
        if not isinstance(name, str) or not NAME.match(name):
            raise StudyError(f"{key}.name: {name!r} is not a folder name (letters, digits, _ . -)")
        if name in MODEL_FOLDERS:
            raise StudyError(f"{key}.name: {name!r} is taken by results/<model>/{name} (choose another)")
        if name in out:
            raise StudyError(f"{key}.name: two fine-tunes are named {name!r} (give each a name)")
        out[name] = dict(entry)
    return out


def _finetune(entry: Mapping[str, Any], overrides: Mapping[str, Any], model: str) -> Finetune:
    """One fine-tune of a model: the entry's settings with the model's overrides on top (those
    the method has), validated by the method."""
    own = settings_names(method_class(entry["method"]))
    settings = _settings(entry) | {k: v for k, v in overrides.items() if k in own}
    name = entry.get("name", entry["method"])
    try:
        method = make_method(entry["method"], **settings)
    except WigError as err:
        raise StudyError(f"models.{model}.personalization (fine-tune {name}): {err}") from None
    return Finetune(name, method, _seeds(overrides.get("seed", entry.get("seed", 0)), f"models.{model}: {name}.seed"))


def _model(
    config: Mapping[str, Any], name: str, points: tuple[GuidanceMethod, ...], finetunes: Mapping[str, dict]
) -> Model:
    specs = config["models"]
    chain = [name]
    while "base" in specs[chain[-1]]:
        base = specs[chain[-1]]["base"]
        if base not in specs:
            raise StudyError(f"models.{chain[-1]}.base: no model {base!r}")
        if base in chain:
            raise StudyError(f"models.{name}: base models form a cycle ({' -> '.join(chain + [base])})")
        chain.append(base)
    root = specs[chain[-1]]
    if "tiny" in root:
        family = TINY[root["tiny"]].family
        if root.get("family", family) != family:
            raise StudyError(f"models.{name}: family {root['family']} but tiny {root['tiny']}")
    else:
        family = root.get("family", "sd")
    overrides = specs[name].get("personalization", {})
    known = {"seed"} | {f for e in finetunes.values() for f in settings_names(method_class(e["method"]))}
    for key in overrides:
        if key not in known:
            raise StudyError(f"models.{name}.personalization.{key}: no fine-tune's method has this setting")
    tunes = {
        ft: _finetune(entry, overrides, name)
        for ft, entry in finetunes.items()
        if method_class(entry["method"]).families is None or family in method_class(entry["method"]).families
    }
    if not tunes:
        raise StudyError(
            f"models.{name} ({family}): none of the personalization methods "
            f"({', '.join(sorted({e['method'] for e in finetunes.values()}))}) trains the {family} family"
        )
    # an image family edits each concept's first image with image-edit guidance alone; the
    # others take no input image
    runnable = tuple(
        p
        for p in points
        if (family in DDIM_FAMILIES or not p.requires_ddim) and p.requires_image == (family in IMAGE_FAMILIES)
    )
    if not runnable:
        skipped = ", ".join(sorted({p.method for p in points}))
        if family in IMAGE_FAMILIES:
            image_methods = ", ".join(sorted(n for n, c in GUIDANCE.items() if c.requires_image))
            needs = f"it edits an input image, with image-edit guidance ({image_methods}) only"
        else:
            needs = f"they need a DDIM sampler or an input image, which {family} does not use"
        raise StudyError(f"models.{name} ({family}) can run none of the guidance points: {skipped} ({needs})")
    try:
        chunks = job_chunks(runnable, config["sampling"]["points_per_job"])
    except WigError as err:
        raise StudyError(f"sampling.points_per_job: {err}") from None
    return Model(
        name=name,
        spec=canon(specs[name]),
        root=chain[-1],
        root_spec=canon(root),
        family=family,
        finetunes=tunes,
        points=runnable,
        point_chunks={k: tuple(v) for k, v in chunks.items()},
    )
