# Config validation, the study's grid (models × concepts × guidance points × seeds), helpers.
import json
import re
from importlib import resources
from pathlib import Path

from snakemake.utils import validate

from wig.concepts import image_files, read_sheet
from wig.errors import WigError
from wig.gpus import check_resources, device_ids, scheduler_assigned
from wig.grid import expand as expand_grid, job_chunks
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
SPECS = config["models"]


def root_model(model):
    """The model whose weights ``model`` uses: itself, or (``base:``) another entry's, so two
    training set-ups of one base (e.g. with and without prior preservation) share its weights."""
    seen = [model]
    while "base" in SPECS[seen[-1]]:
        base = SPECS[seen[-1]]["base"]
        if base not in SPECS:
            raise ValueError(f"config: models.{seen[-1]}.base: no model {base!r}")
        if base in seen:
            raise ValueError(f"config: models.{model}: base models form a cycle ({' -> '.join(seen + [base])})")
        seen.append(base)
    return seen[-1]


# tiny kinds → the family that samples them: the synthetic world's base is a Stable Diffusion pipeline
TINY_FAMILY = {"sd": "sd", "sana": "sana", "synthetic": "sd"}


def _family(model):
    spec = SPECS[root_model(model)]
    if "tiny" in spec and spec.get("family", TINY_FAMILY[spec["tiny"]]) != TINY_FAMILY[spec["tiny"]]:
        raise ValueError(f"config: models.{model}: family {spec['family']} but tiny {spec['tiny']}")
    return TINY_FAMILY[spec["tiny"]] if "tiny" in spec else spec.get("family", "sd")


def _training(model):
    """The global training settings with the model's own ``training:`` on top."""
    merged = {**config["training"], **SPECS[model].get("training", {})}
    if merged["weak_step"] >= merged["steps"]:
        raise ValueError(f"config: models.{model}: training.weak_step must be smaller than training.steps")
    return merged


TRAINING = {m: _training(m) for m in MODELS}
# LoRA seeds: each (model, concept) is fine-tuned once per seed, the replicates the CIs resample
LORA_SEEDS = {m: t["seed"] if isinstance(t["seed"], list) else [t["seed"]] for m, t in TRAINING.items()}
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
# ... and the grid points in chunks too: POINT_CHUNKS[model] = {chunk name: its points} (wig.grid.job_chunks)
POINT_CHUNKS = {m: job_chunks(MODEL_POINTS[m], config["sampling"]["points_per_job"]) for m in MODELS}
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
    points="|".join(sorted({re.escape(name) for chunks in POINT_CHUNKS.values() for name in chunks})),
    seeds=r"\d+(_\d+)*",
    lseed=r"\d+",
    encoder="dino|clip",


def model_spec(wildcards):
    return canon(SPECS[wildcards.model])


def model_input(wildcards):
    """A tiny twin or the synthetic base is a folder built by a rule; a real checkpoint is a name
    in params plus the record of its resolved local copy (rule resolve_model, on the submit host)."""
    root = root_model(wildcards.model)
    if "path" in SPECS[root]:
        return {"weights": f"results/{root}/weights.json"}
    return {"model": f"results/{root}/model"}


def _shipped_config(kind):
    # read as a file: importing wig.tiny would load torch
    return json.loads(resources.files("wig.configs").joinpath(f"tiny_{kind}.json").read_text())


def tiny_config(wildcards):
    """The shipped config of a tiny twin (``wig/configs/tiny_<family>.json``), as a param: editing
    it rebuilds the twin."""
    return canon(_shipped_config(SPECS[wildcards.model]["tiny"]))


def pretrain_config(stage):
    """Input function: the part of ``tiny_synthetic.json`` a pretraining stage reads, with the
    model's seed (the autoencoder is not retrained for a UNet change)."""
    keys = {"vae": ("size", "vae", "vae_training"),
            "model": ("size", "unet", "text_encoder", "scheduler", "training")}[stage]

    def params(wildcards):
        spec = SPECS[wildcards.model]
        shipped = _shipped_config("synthetic")
        # models.<m>.pretrain: steps of each stage (a short smoke run, a longer base)
        for section, key in (("vae_training", "vae_steps"), ("training", "steps")):
            if key in spec.get("pretrain", {}):
                shipped[section]["steps"] = spec["pretrain"][key]
        return canon({"seed": spec.get("seed", 0), **{k: shipped[k] for k in keys}})

    return params


def model_ref(wildcards, input):
    return SPECS[root_model(wildcards.model)].get("path") or input.model


def _constraint(names):
    """A wildcard regex matching exactly ``names`` (nothing if empty)."""
    return "|".join(map(re.escape, names)) or "(?!)"


# the scales the base's accuracy is measured at: every λ of the grid's CFG-style points
CFG_SCALES = sorted({p.scale for p in POINTS if p.method in ("cfg", "pg", "ag")})
TINY_TWINS = [m for m in MODELS if SPECS[m].get("tiny") in ("sd", "sana")]
SYNTHETIC_BASES = [m for m in MODELS if SPECS[m].get("tiny") == "synthetic"]


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
    resolution = TRAINING[wildcards.model]["resolution"]
    return canon({
        "prompt": class_prompt(CLASSES[wildcards.noun]),
        **{k: settings[k] for k in ("count", "seed", "steps", "scale")},
        "height": resolution,
        "width": resolution,
    })


def prior(model):
    return TRAINING[model]["prior_weight"] > 0


def train_input(wildcards):
    inputs = model_input(wildcards) | {"instance": f"results/concepts/{wildcards.concept}"}
    if prior(wildcards.model):
        inputs["classes"] = f"results/{wildcards.model}/class_images/{CLASS_OF[wildcards.concept]}"
    return inputs


def train_settings(wildcards):
    concept = CONCEPTS[wildcards.concept]
    return canon({
        "instance_prompt": config["dataset"]["instance_prompt"].format(concept.subject(config["dataset"]["identifier"])),
        "class_prompt": class_prompt(concept.class_noun) if prior(wildcards.model) else None,
        **TRAINING[wildcards.model],
        "seed": int(wildcards.lseed),
    })


def generate_input(wildcards):
    return model_input(wildcards) | {"lora": f"results/{wildcards.model}/lora/{wildcards.concept}/seed{wildcards.lseed}"}


def guidance_of(wildcards):
    """The job's points: {point key: guidance settings}."""
    return canon({
        p.key: {"method": p.method, "scale": p.scale, "omega": p.omega, "ag_scale": p.ag_scale, "weak": p.weak}
        for p in POINT_CHUNKS[wildcards.model][wildcards.points]
    })


def concept_prompts(wildcards):
    return PROMPTS[wildcards.concept]


def sample_dirs(wildcards):
    """The generation jobs of a (model, concept) the image grid shows: its first LoRA seed's."""
    lseed = LORA_SEEDS[wildcards.model][0]
    return [
        f"results/{wildcards.model}/samples/{wildcards.concept}/lora{lseed}/{points}/seeds{chunk}"
        for points in POINT_CHUNKS[wildcards.model]
        for chunk in SEED_CHUNKS
    ]


def grid_points(wildcards):
    return [p.key for p in MODEL_POINTS[wildcards.model]]


def grid_columns(wildcards):
    return [f"s{seed} p{i:02d}" for seed in SEEDS for i in range(len(PROMPTS[wildcards.concept]))]


def grid_rows(wildcards):
    return [f"{p.method} {p.name}" for p in MODEL_POINTS[wildcards.model]]


# --- evaluation ------------------------------------------------------------------------------
ENCODERS = {kind: {"kind": kind, **spec} for kind, spec in config["encoders"].items()}
if not (ENCODERS or RENDER):
    raise ValueError("config: encoders is empty and dataset.render is not set: nothing would score the images "
                     "(the oracle metrics exist for the synthetic world only)")
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
        return (f"results/{wildcards.model}/embeddings/{kind}/{wildcards.concept}/lora{wildcards.lseed}/"
                f"{wildcards.points}/seeds{wildcards.seeds}.parquet")

    return paths


def score_input(wildcards):
    """The job's images and, with encoders, its and the concept's embeddings."""
    inputs = {"samples": (f"results/{wildcards.model}/samples/{wildcards.concept}/lora{wildcards.lseed}/"
                          f"{wildcards.points}/seeds{wildcards.seeds}")}
    if ENCODERS:
        inputs |= {
            "dino": embeddings_of("dino")(wildcards),
            "clip": embeddings_of("clip")(wildcards),
            "dino_refs": f"results/embeddings/dino/references/{wildcards.concept}.parquet",
            "clip_refs": f"results/embeddings/clip/references/{wildcards.concept}.parquet",
            "texts": f"results/embeddings/clip/texts/{wildcards.concept}.parquet",
        }
    return inputs


def score_files(wildcards):
    return [
        f"results/{wildcards.model}/scores/{concept}/lora{lseed}/{points}/seeds{chunk}.parquet"
        for concept in CONCEPTS
        for lseed in LORA_SEEDS[wildcards.model]
        for points in POINT_CHUNKS[wildcards.model]
        for chunk in SEED_CHUNKS
    ]


def model_tables(wildcards):
    return expand("results/{model}/tables/metrics.parquet", model=MODELS)
