# Config validation, the grid, and helpers shared by every rule.
import json
import re

from snakemake.utils import validate

from wig.errors import WigError
from wig.grid import Point, expand as expand_grid
from wig.provenance import code_hash


validate(config, workflow.source_path("../../config/schema.yaml"))
try:
    POINTS = expand_grid(config["guidance"])
except WigError as err:
    raise ValueError(f"config: {err}") from None

MODELS = list(config["models"])
SEEDS = config["seeds"]
PROMPTS = config["prompts"]


wildcard_constraints:
    model="|".join(map(re.escape, MODELS)),
    method="none|cfg|pg|ag|cfgpp|pgpp",
    point=r"w[0-9.]+_l-?[0-9.]+(_a-?[0-9.]+)?",
    seed=r"\d+",


def model_spec(wildcards):
    """The config entry of a model, as a canonical JSON string (a params: value)."""
    return json.dumps(config["models"][wildcards.model], sort_keys=True)


def model_input(wildcards):
    """A tiny twin is a file input (built by a rule); a real checkpoint is a name in params."""
    spec = config["models"][wildcards.model]
    return {} if "path" in spec else {"model": f"results/{wildcards.model}/model"}


def model_ref(wildcards, input):
    return config["models"][wildcards.model].get("path") or input.model


def guidance_of(wildcards):
    point = Point.parse(wildcards.method, wildcards.point)
    return {"method": point.method, "scale": point.scale, "omega": point.omega, "ag_scale": point.ag_scale}


PROMPT_IDS = [f"p{i:02d}" for i in range(len(PROMPTS))]
SAMPLES = "results/{model}/samples/{method}/{point}/seed{seed}"


def all_samples(wildcards):
    """Every sample image of a model, ordered point by point, then seed, then prompt."""
    return [
        f"results/{wildcards.model}/samples/{p.method}/{p.name}/seed{seed}/{pid}.png"
        for p in POINTS
        for seed in SEEDS
        for pid in PROMPT_IDS
    ]


def grid_rows():
    return [f"{p.method} {p.name}" for p in POINTS]
