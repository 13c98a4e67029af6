# Schema validation, the study (wig.workflow.study decides everything about models, concepts, grid and
# jobs) and the input functions that ask it. Paths come from the rules' own outputs.
import inspect
import json
import os
import re
import sys
from argparse import Namespace
from pathlib import Path


from wig.extras import MissingExtra, require

try:  # the core install is the library alone: the study's tables, metrics and figures need the extra
    require("workflow", "the wig workflow")
except MissingExtra as err:
    raise ValueError(str(err)) from None

from wig.concepts import image_files
from wig.errors import WigError
from wig.kernels import PINNED
from wig.workflow.config_schema import read_config, resolve_shipped
from wig.gpus import check_resources, device_ids, scheduler_assigned
from wig.provenance import code_hash
from wig.workflow.model import canon
from wig.workflow.study import Study

# the checkout this file belongs to (run in place or used as a module from another project)
WORKFLOW_ROOT = Path(workflow.current_basedir.get_path_or_uri(secret_free=True)).parents[1]

try:
    # numbers as people type them (lr: 1e-4, steps: 500.0), the schema's first violation in one line,
    # its defaults filled in
    read_config(config)  # the schema shipped in the package (wig/workflow/schema.yaml)
    # `resources/…` in the config: the project's own file, else this workflow's (a deployed module)
    resolve_shipped(config, WORKFLOW_ROOT)
    STUDY = Study.from_config(config)
    # a local run spreads GPU jobs over the device ids (wig.gpus): no more of them at once than ids
    if workflow.local_exec and not scheduler_assigned():
        _gpu = workflow.global_resources.get("gpu")
        check_resources(device_ids(config["runtime"].get("gpus")), getattr(_gpu, "value", _gpu))
except WigError as err:
    raise ValueError(f"config: {err}") from None

# everything this study writes lies below here: two studies in one project share no file
RESULTS = f"{config['results'].rstrip('/')}/{config['study']}"


def study_path(path):
    """``path`` (a rule's output, log or benchmark pattern) inside this study's results folder."""
    return f"{RESULTS}/{path}"


MODELS, CONCEPTS, ENCODERS = list(STUDY.models), list(STUDY.concepts), STUDY.encoders
# the report's texts (workflow/report/*.rst) see only the config: what the study runs, in words, under
# one key no job's params read
config["_study_summary"] = STUDY.summary()
USER_STUDY = STUDY.user_study_design()  # the drawn sets (wig.workflow.user_study), or None
FINETUNES = STUDY.finetune_pairs()  # (model, fine-tune): each has its runs, samples and tables
EVAL = config["evaluation"]
SAMPLING = canon(config["sampling"])
# device, dtype and the CPU kernels change the numbers (slightly) and so are params; threads do not
RUNTIME = {k: config["runtime"][k] for k in ("device", "dtype", "cpu_kernels")}
if RUNTIME["cpu_kernels"] == "avx2":  # read by torch, oneDNN and MKL when a job imports them (wig.kernels)
    os.environ.update(PINNED)


def _names(values):
    """A wildcard regex matching exactly ``values`` (nothing if empty)."""
    return "|".join(sorted(map(re.escape, values))) or "(?!)"


wildcard_constraints:
    model=_names(MODELS),
    concept=_names(CONCEPTS),
    noun=_names(STUDY.classes),
    points=_names({name for m in STUDY.models.values() for name in m.point_chunks})
    + rf"|probe/(?:{_names(STUDY.searches)})/-?[0-9.]+",
    seeds=_names(STUDY.seed_chunks),
    finetune=_names({f for _, f in FINETUNES}),
    fseed=r"\d+",
    encoder=_names(ENCODERS),
    search=_names(STUDY.searches),
    k=r"\d+",


def study_cost_lines():
    """What the study implies and, at the rates the last run here measured, its hours (wig.workflow.cost)."""
    from wig.workflow.cost import estimate_lines, measured_rates, study_cost

    cost = study_cost(STUDY)
    return cost.lines() + estimate_lines(cost, measured_rates(STUDY, RESULTS))


def script_code_hash(rule):
    """The code hash of a rule's script (wig.provenance.code_hash); the Snakefile sets it as every
    scripted rule's ``code`` param."""
    return code_hash(Path(rule.basedir.get_path_or_uri(secret_free=True)) / rule.script)


def from_study(method, **fixed):
    """A params function: the Study ``method`` called with the job's wildcards of the same names."""
    names = [n for n in inspect.signature(method).parameters if n not in fixed]
    return lambda wildcards: method(**{n: getattr(wildcards, n) for n in names}, **fixed)


def _path(rule, wildcards, **values):
    """``rule``'s (first) output for these wildcard values."""
    return expand(rule.output[0], **{**dict(wildcards.items()), **values})[0]


def get_model(wildcards):
    """A tiny twin or the synthetic base is a folder built by a rule; a real checkpoint is a name
    in params plus the record of its resolved local copy (rule resolve_model, on the submit host)."""
    model = STUDY.models[wildcards.model]
    if model.kind == "checkpoint":
        return {"weights": _path(rules.resolve_model, {}, model=model.root)}
    built_by = rules.pretrain_model if model.kind == "synthetic" else rules.build_tiny_model
    return {"model": _path(built_by, {}, model=model.root)}


def get_model_ref(wildcards, input):
    return STUDY.models[wildcards.model].root_spec.get("path") or input.model


def get_concept_images(wildcards):
    """The source image files of a concept (an edited or added photo reruns its preparation), or
    the dataset folder when a rule fetches or renders it."""
    if STUDY.fetch or STUDY.render:
        return [config["dataset"]["root"]]
    return [str(p) for p in image_files(STUDY.concept_folder(wildcards.concept))]


def get_train_input(wildcards):
    inputs = get_model(wildcards) | {"instance": _path(rules.prepare, wildcards)}
    if STUDY.models[wildcards.model].finetunes[wildcards.finetune].method.prior:
        inputs["classes"] = _path(rules.class_images, wildcards, noun=STUDY.class_of(wildcards.concept))
    return inputs


def get_pack_input(pack):
    """A pack's model and, per run in its order, the concept's prepared images (and class images
    with prior preservation): lists the script reads back in the same order."""
    model = STUDY.models[pack.model]
    inputs = get_model(Namespace(model=pack.model))
    inputs["instances"] = [_path(rules.prepare, {"concept": run.concept}) for run in pack.runs]
    if model.finetunes[pack.finetune].method.prior:
        nouns = [STUDY.class_of(run.concept) for run in pack.runs]
        inputs["classes"] = [_path(rules.class_images, {"model": pack.model, "noun": n}) for n in nouns]
    return inputs


def get_pack_params(pack):
    """What a pack trains: the method, and per run its concept, seed and prompts."""
    return {
        "method": STUDY.finetune_settings(pack.model, pack.finetune),
        "runs": [
            {"concept": r.concept, "seed": r.seed, **STUDY.subject_prompts(pack.model, pack.finetune, r.concept)}
            for r in pack.runs
        ],
    }


def share_resources(rule, like):
    """Give ``rule`` the resources a profile sets for ``like`` (its set-resources), before ``rule``
    is defined: a pack's rule is named per pack, and a profile can only name rule train (SLURM's
    partition, GPU and runtime). Snakemake keeps the parsed profile entries in a dict it reads
    when each rule is defined."""
    overrides = workflow.resource_settings._parsed_overwrite_resources
    if like in overrides and rule not in overrides:
        overrides[rule] = overrides[like]


def finetunes_where(keep):
    """A wildcard constraint: the fine-tune names of the (model, fine-tune) pairs ``keep`` holds
    for (rule train's and generate's: those not done in packs)."""
    names = {ft for m, ft in STUDY.finetune_pairs() if keep(m, ft)}
    return "|".join(re.escape(n) for n in sorted(names)) or "(?!)"


def get_generate_pack_input(pack):
    """A generation pack's model and its runs, in the pack's order (the script reads them back so)."""
    return get_model(Namespace(model=pack.model)) | {"runs": [_path(rules.train, run.wildcards) for run in pack.runs]}


def get_generate_pack_runs(pack, points):
    """Per run of a generation pack, in its order: its concept, seed, prompts and extra texts."""
    return [
        {
            "concept": r.concept,
            "seed": r.seed,
            "prompts": STUDY.concept_prompts(pack.model, pack.finetune, r.concept),
            "extra_texts": STUDY.extra_texts_of(pack.model, points, r.concept),
        }
        for r in pack.runs
    ]


def get_generate_input(wildcards):
    """The model and the fine-tune: a run the train rule makes, or a given fine-tune's resolved
    weights (rule resolve_finetune: nothing is trained); for a model that edits images, the
    concept's prepared images (it edits the first)."""
    model = STUDY.models[wildcards.model]
    inputs = get_model(wildcards)
    if model.edits:
        inputs["edit"] = _path(rules.prepare, wildcards)
    if model.finetunes[wildcards.finetune].method.trains:
        return inputs | {"run": _path(rules.train, wildcards)}
    return inputs | {"finetune": _path(rules.resolve_finetune, wildcards)}


def get_learning_input(wildcards):
    """The model and every run rule learning checks."""
    runs = STUDY.learning_runs(wildcards.model, wildcards.finetune)
    return get_model(wildcards) | {"runs": [_path(rules.train, r.wildcards) for r in runs]}


def get_grid_samples(wildcards):
    jobs = STUDY.grid_jobs(wildcards.model, wildcards.finetune, wildcards.concept)
    return [_path(rules.generate, job.wildcards) for job in jobs]


def get_encoder(wildcards):
    """A tiny or trained encoder is a folder built by a rule; a real one is a name in params plus the
    record of its resolved weights (rule resolve_encoder)."""
    if ENCODERS[wildcards.encoder].get("tiny"):
        return {"encoder": _path(rules.build_tiny_encoder, wildcards)}
    if "train" in ENCODERS[wildcards.encoder]:
        return {"encoder": _path(rules.train_encoder, wildcards)}
    return {"weights": _path(rules.resolve_encoder, wildcards)}


def get_score_input(wildcards):
    """The job's images and the embeddings its metrics read: the job's and the concept's for each
    encoder, the concept's prompt texts for the text metrics' encoders."""
    inputs = {"samples": _path(rules.generate, wildcards)}
    for kind in STUDY.metric_encoders():
        inputs[kind] = _path(rules.embed_samples, wildcards, encoder=kind)
    for kind in STUDY.reference_encoders():
        inputs[f"{kind}_refs"] = _path(rules.embed_references, wildcards, encoder=kind)
    for kind in STUDY.text_encoders():
        inputs[f"{kind}_texts"] = _path(rules.embed_texts, wildcards, encoder=kind)
    return inputs


def get_score_files(wildcards):
    return [_path(rules.score, job.wildcards) for job in STUDY.generation_jobs(wildcards.model, wildcards.finetune)]


def _score_files(jobs):
    return [_path(rules.score, job.wildcards) for job in jobs]


def _search_step(wildcards, k):
    """Step ``k``'s state of a search (a checkpoint: asking for it grows the DAG until it exists)."""
    values = {"model": wildcards.model, "finetune": wildcards.finetune, "search": wildcards.search, "k": str(k)}
    return checkpoints.search_step.get(**values).output[0]


def _reference_scores(wildcards):
    """The score files of a search's text_at_least point (a grid point)."""
    point = STUDY.searches[wildcards.search].text_at_least
    chunk = next(n for n, ps in STUDY.models[wildcards.model].point_chunks.items() if point.key in {p.key for p in ps})
    jobs = STUDY.generation_jobs(wildcards.model, wildcards.finetune)
    return _score_files(j for j in jobs if j.points == chunk)


def get_search_step_input(wildcards):
    """Step k reads step k−1's state and the scores of the probe it asked for (and the text_at_least
    point's); step 0 reads nothing but those reference scores."""
    inputs = {}
    if STUDY.searches[wildcards.search].text_at_least is not None:
        inputs["reference"] = _reference_scores(wildcards)
    k = int(wildcards.k)
    if k > 0:
        inputs["previous"] = _search_step(wildcards, k - 1)
        value = json.loads(Path(inputs["previous"]).read_text())["next"]
        jobs = STUDY.probe_jobs(wildcards.model, wildcards.finetune, wildcards.search, value)
        inputs["probe"] = _score_files(jobs)
    return inputs


def get_search_result_input(wildcards):
    """The last step's state (the first that asks for no probe) and the chosen probe's scores."""
    k = 0
    while (state := json.loads(Path(_search_step(wildcards, k)).read_text()))["next"] is not None:
        k += 1
    inputs = {"state": _search_step(wildcards, k)}
    jobs = STUDY.probe_jobs(wildcards.model, wildcards.finetune, wildcards.search, state["best"])
    inputs["chosen"] = _score_files(jobs)
    if STUDY.searches[wildcards.search].text_at_least is not None:
        inputs["reference"] = _reference_scores(wildcards)
    return inputs


def _job_key(wildcards):
    """A generation job's key in the user study's design: its wildcards joined by ``/``."""
    return "/".join(wildcards.values())


def _user_study_jobs():
    """The generation jobs (their wildcards) whose images the user study's sets show, each once."""
    jobs = {}
    for s in USER_STUDY["sets"]:
        for member in s["members"].values():
            jobs.setdefault(_job_key(member["job"]), member["job"])
    return list(jobs.values())


def _user_study_concepts():
    return sorted({s["concept"] for s in USER_STUDY["sets"]})


def get_user_study_input(wildcards):
    """The generation folders of the sets' images and the prepared folders of their concepts (the
    references), in the order of rule user_study's params."""
    return {
        "samples": [_path(rules.generate, job) for job in _user_study_jobs()],
        "references": [_path(rules.prepare, {"concept": c}) for c in _user_study_concepts()],
    }
