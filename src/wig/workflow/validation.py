"""Reading a config into a study: every check a schema cannot make (the concept sheet and its
folders, base-model chains, fine-tune settings per model, the guidance grid each family can
run, metrics against their encoders, searches), each raising `StudyError` naming the key.

`wig.workflow.study.Study.from_config` calls `parse`; the workflow never sees a half-checked
study.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from wig.branches import WEAK, adapter_step
from wig.concepts import TEXTS, Concept, check_image_headers, image_files, read_dreambooth, read_sheet
from wig.errors import WigError, unknown
from wig.evaluation.encoders import ENCODERS, encoder_class
from wig.evaluation.metrics import REGISTRY as METRICS
from wig.evaluation.metrics import enabled_metrics
from wig.guidance import REGISTRY as GUIDANCE
from wig.guidance import GuidanceMethod
from wig.guidance.grid import expand, job_chunks
from wig.models.families import default_family, family_named, tiny_kinds
from wig.personalization import make as make_method
from wig.personalization import method_class
from wig.settings import settings_names
from wig.workflow.model import (
    DDIM_FAMILIES,
    IMAGE_FAMILIES,
    MODEL_FOLDERS,
    NAME,
    Finetune,
    Model,
    StudyError,
    canon,
    class_slug,
)
from wig.workflow.search import parse_searches


def parse(config: Mapping[str, Any]) -> tuple:
    """The parts of the study of a schema-validated config (defaults filled in), in `Study`'s field
    order after ``config``. Reads the concept sheet, the prompt lists and, unless a rule fetches or
    renders them, the concepts' image folders. Raises `StudyError` naming the key of the first
    problem."""
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
                check_image_headers(image_files(Path(ds["root"]) / concept.folder))
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
    return models, concepts, prompts, points, seed_chunks, classes, encoders, metrics, searches, len(sheet)


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
        per_job = min(len(_seeds(config["seeds"], "seeds")), config["sampling"]["seeds_per_job"])
        if metric.reads == "samples" and per_job < 2:
            raise StudyError(
                f"evaluation.metrics: {name} compares the seeds of a generation job, which holds {per_job}: "
                "give at least two seeds and sampling.seeds_per_job ≥ 2"
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
    """A ``personalization:`` entry's method settings (all but its method, name and seeds)."""
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
        if "subjects_per_job" in entry:  # where it sat before `jobs:`: the layout is no setting of a method
            raise StudyError(
                f"{key}.subjects_per_job: the job layout is not a method setting; write it beside the fine-tunes, "
                f"as jobs: {{subjects_per_job: {entry['subjects_per_job']}}}"
            )
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


def _finetune(entry: Mapping[str, Any], overrides: Mapping[str, Any], model: str, per_job: int) -> Finetune:
    """One fine-tune of a model: the entry's settings with the model's overrides on top (those
    the method has), validated by the method; ``per_job`` subjects in one training job where the
    method trains several at once (``jobs.subjects_per_job``), else one."""
    own = settings_names(method_class(entry["method"]))
    settings = _settings(entry) | {k: v for k, v in overrides.items() if k in own}
    name = entry.get("name", entry["method"])
    try:
        method = make_method(entry["method"], **settings)
    except WigError as err:
        raise StudyError(f"models.{model}.personalization (fine-tune {name}): {err}") from None
    seeds = _seeds(overrides.get("seed", entry.get("seed", 0)), f"models.{model}: {name}.seed")
    return Finetune(name, method, seeds, per_job if type(method).batches_subjects else 1)


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
        family = tiny_kinds()[root["tiny"]].family
        if root.get("family", family) != family:
            raise StudyError(f"models.{name}: family {root['family']} but tiny {root['tiny']}")
    else:
        family = root.get("family", default_family().name)
    overrides = specs[name].get("personalization", {})
    known = {"seed"} | {f for e in finetunes.values() for f in settings_names(method_class(e["method"]))}
    for key in overrides:
        if key not in known:
            raise StudyError(f"models.{name}.personalization.{key}: no fine-tune's method has this setting")
    tunes = {
        ft: _finetune(entry, overrides, name, config["jobs"]["subjects_per_job"])
        for ft, entry in finetunes.items()
        if method_class(entry["method"]).supports(family_named(family))
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
    _check_checkpoints(name, tunes, runnable)
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


def _check_checkpoints(model: str, tunes: Mapping[str, Finetune], points) -> None:
    """Every checkpoint a guidance point names exists in every fine-tune it runs with: the weak one
    in a trained run, a step<k> one in the steps the run keeps (`checkpoints`)."""
    for point in points:
        for adapter in sorted(point.required_adapters()):
            step = adapter_step(adapter)
            if adapter != WEAK and step is None:
                continue
            for ft, tune in tunes.items():
                method = tune.method
                if not method.trains:
                    raise StudyError(
                        f"guidance {point.key} needs a run's {adapter} checkpoint: fine-tune {ft} "
                        f"of models.{model} is given ({method.name}), it has only its one checkpoint"
                    )
                if step is not None and step not in method.checkpoints:
                    raise StudyError(
                        f"guidance {point.key} needs the checkpoint at step {step}: add it to fine-tune {ft}'s "
                        f"checkpoints (models.{model}: {list(method.checkpoints)})"
                    )
