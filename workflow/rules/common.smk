# Config validation, the study's grid (models × concepts × guidance points × seeds), helpers.
import json
import re
from importlib import resources
from pathlib import Path

from snakemake.utils import validate

from wig.concepts import image_files, read_sheet
from wig.errors import WigError
from wig.gpus import check_resources, device_ids, scheduler_assigned
from wig.grid import Point, expand as expand_grid
from wig.guidance import UNSUPPORTED
from wig.provenance import code_hash, encoder_id


validate(config, workflow.source_path("../../config/schema.yaml"))


def canon(value):
    """A params: value with sorted keys: Snakemake compares params by their text, so reordering
    keys in a YAML file must not look like a change."""
    return json.loads(json.dumps(value, sort_keys=True))


FETCH = config["dataset"].get("fetch")
RENDER = config["dataset"].get("render")  # the synthetic world's images, drawn by a rule
if FETCH and RENDER:
    raise ValueError("config: dataset.fetch and dataset.render both fill dataset.root: choose one")


def _load_study():
    """Everything the DAG is built from, checked before any job starts."""
    ds = config["dataset"]
    try:
        points = expand_grid(config["guidance"])
        concepts = read_sheet(ds["sheet"], columns=ds["columns"], prompts=ds.get("prompts"))
    except WigError as err:
        raise ValueError(f"config: {err}") from None
    wanted = ds.get("concepts", list(concepts))
    missing = [c for c in wanted if c not in concepts]
    if missing:
        raise ValueError(f"config: dataset.concepts {missing} are not in the sheet {ds['sheet']}")
    concepts = {c: concepts[c] for c in wanted}
    if config["training"]["weak_step"] >= config["training"]["steps"]:
        raise ValueError("config: training.weak_step must be smaller than training.steps")
    prompts = {}
    for cid, concept in concepts.items():
        folder = Path(ds["root"]) / concept.folder
        try:
            if not (FETCH or RENDER):  # fetched or rendered images are checked by the prepare jobs
                image_files(folder)
            prompts[cid] = concept.prompts(ds["identifier"])[: ds["max_prompts"]]
        except WigError as err:
            raise ValueError(f"config: concept {cid}: {err}") from None
    return points, concepts, prompts


POINTS, CONCEPTS, PROMPTS = _load_study()

# a local run spreads GPU jobs over the device ids (wig.gpus): no more of them at once than ids
if workflow.local_exec and not scheduler_assigned():
    _gpu = workflow.global_resources.get("gpu")
    try:
        check_resources(device_ids(config["runtime"].get("gpus")), getattr(_gpu, "value", _gpu))
    except WigError as err:
        raise ValueError(f"config: {err}") from None
# sorted: the plots' params list the models, and reordering YAML keys must not rerun them
MODELS = sorted(config["models"])


def _family(model):
    spec = config["models"][model]
    if "tiny" in spec and spec.get("family", spec["tiny"]) != spec["tiny"]:
        raise ValueError(f"config: models.{model}: family {spec['family']} but tiny {spec['tiny']}")
    return spec.get("tiny") or spec.get("family", "sd")


# the grid per model: a family's sampler may lack a method (SANA: no DDIM for CFG++)
MODEL_POINTS = {m: [p for p in POINTS if p.method not in UNSUPPORTED[_family(m)]] for m in MODELS}
for _m, _points in MODEL_POINTS.items():
    if not _points:
        raise ValueError(f"config: models.{_m} ({_family(_m)}) can run none of the guidance points: "
                         f"{', '.join(UNSUPPORTED[_family(_m)])} are not available for it")
SEEDS = config["seeds"]
# generation jobs take the seeds in chunks (fewer model loads); a chunk's name lists its seeds
_k = config["sampling"]["seeds_per_job"]
SEED_CHUNKS = ["_".join(map(str, SEEDS[i : i + _k])) for i in range(0, len(SEEDS), _k)]
PRIOR = config["training"]["prior_weight"] > 0
SAMPLING = canon(config["sampling"])
# device and dtype change the numbers (slightly) and so are params; threads do not
RUNTIME = {k: config["runtime"][k] for k in ("device", "dtype")}
# class nouns as path components: "teddy bear" -> "teddy_bear"
CLASSES = {re.sub(r"[^A-Za-z0-9]+", "_", c.class_noun).strip("_"): c.class_noun for c in CONCEPTS.values()}
CLASS_OF = {cid: next(k for k, v in CLASSES.items() if v == c.class_noun) for cid, c in CONCEPTS.items()}


wildcard_constraints:
    model="|".join(map(re.escape, MODELS)),
    concept="|".join(map(re.escape, CONCEPTS)),
    noun="|".join(map(re.escape, CLASSES)),
    method="none|cfg|pg|ag|cfgpp|pgpp",
    point=r"w[0-9.]+_l-?[0-9.]+(_a-?[0-9.]+(_weak)?)?",
    seeds=r"\d+(_\d+)*",
    encoder="dino|clip",


def model_spec(wildcards):
    return canon(config["models"][wildcards.model])


def model_input(wildcards):
    """A tiny twin is a folder built by a rule; a real checkpoint is a name in params plus the
    record of its resolved local copy (rule resolve_model, on the submit host)."""
    if "path" in config["models"][wildcards.model]:
        return {"weights": f"results/{wildcards.model}/weights.json"}
    return {"model": f"results/{wildcards.model}/model"}


def tiny_config(wildcards):
    """The shipped config of a tiny twin (``wig/configs/tiny_<family>.json``), as a param: editing
    it rebuilds the twin (read here as a file: importing wig.tiny would load torch)."""
    family = config["models"][wildcards.model]["tiny"]
    return canon(json.loads(resources.files("wig.configs").joinpath(f"tiny_{family}.json").read_text()))


def model_ref(wildcards, input):
    return config["models"][wildcards.model].get("path") or input.model


def concept_folder(wildcards):
    return str(Path(config["dataset"]["root"]) / CONCEPTS[wildcards.concept].folder)


def concept_images(wildcards):
    """The source image files of a concept (an edited or added photo reruns its preparation), or
    the dataset folder when a rule fetches or renders it."""
    if FETCH or RENDER:
        return [config["dataset"]["root"]]
    return [str(p) for p in image_files(concept_folder(wildcards))]


def class_prompt(noun: str) -> str:
    return config["class_images"]["prompt"].format(noun)


def class_image_settings(wildcards):
    settings = config["class_images"]
    return canon({
        "prompt": class_prompt(CLASSES[wildcards.noun]),
        **{k: settings[k] for k in ("count", "seed", "steps", "scale")},
        "height": config["training"]["resolution"],
        "width": config["training"]["resolution"],
    })


def train_input(wildcards):
    inputs = model_input(wildcards) | {"instance": f"results/concepts/{wildcards.concept}"}
    if PRIOR:
        inputs["classes"] = f"results/{wildcards.model}/class_images/{CLASS_OF[wildcards.concept]}"
    return inputs


def train_settings(wildcards):
    concept = CONCEPTS[wildcards.concept]
    return canon({
        "instance_prompt": concept.instance_prompt(config["dataset"]["identifier"]),
        "class_prompt": class_prompt(concept.class_noun) if PRIOR else None,
        **config["training"],
    })


def generate_input(wildcards):
    return model_input(wildcards) | {"lora": f"results/{wildcards.model}/lora/{wildcards.concept}"}


def guidance_of(wildcards):
    p = Point.parse(wildcards.method, wildcards.point)
    return canon({"method": p.method, "scale": p.scale, "omega": p.omega, "ag_scale": p.ag_scale, "weak": p.weak})


def concept_prompts(wildcards):
    return PROMPTS[wildcards.concept]


def sample_dirs(wildcards):
    """Every generation job's folder of a (model, concept), point by point, then seed chunk."""
    return [
        f"results/{wildcards.model}/samples/{wildcards.concept}/{p.method}/{p.name}/seeds{chunk}"
        for p in MODEL_POINTS[wildcards.model]
        for chunk in SEED_CHUNKS
    ]


def grid_columns(wildcards):
    return [f"s{seed} p{i:02d}" for seed in SEEDS for i in range(len(PROMPTS[wildcards.concept]))]


def grid_rows(wildcards):
    return [f"{p.method} {p.name}" for p in MODEL_POINTS[wildcards.model]]


# --- evaluation ------------------------------------------------------------------------------
ENCODERS = {kind: {"kind": kind, **spec} for kind, spec in config["encoders"].items()}
EVAL = config["evaluation"]


def encoder_input(wildcards):
    """A tiny encoder is a folder built by a rule; a real one is a name in params plus the record of
    its resolved weights (rule resolve_encoder)."""
    if ENCODERS[wildcards.encoder].get("tiny"):
        return {"encoder": f"results/encoders/{wildcards.encoder}"}
    return {"weights": f"results/encoders/{wildcards.encoder}.json"}


def encoder_spec(wildcards):
    return canon(ENCODERS[wildcards.encoder])


def clip_texts(wildcards):
    return CONCEPTS[wildcards.concept].clip_texts(EVAL["clip_t_text"])[: config["dataset"]["max_prompts"]]


def embeddings_of(kind):
    """Input function: the ``kind`` embeddings of one generation job."""

    def paths(wildcards):
        return (f"results/{wildcards.model}/embeddings/{kind}/{wildcards.concept}/{wildcards.method}/"
                f"{wildcards.point}/seeds{wildcards.seeds}.parquet")

    return paths


def score_files(wildcards):
    return [
        f"results/{wildcards.model}/scores/{concept}/{p.method}/{p.name}/seeds{chunk}.parquet"
        for concept in CONCEPTS
        for p in MODEL_POINTS[wildcards.model]
        for chunk in SEED_CHUNKS
    ]


def model_tables(wildcards):
    return expand("results/{model}/tables/metrics.parquet", model=MODELS)
