# wig: personalization guidance study as a cached DAG. See README.md and DESIGN notes.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/generate.smk"


rule all:
    input:
        expand("results/{model}/grid.png", model=MODELS),
    default_target: True
