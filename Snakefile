# wig: the personalization-guidance study as a cached DAG. See README.md.
from snakemake.utils import min_version

min_version("9.0")


# the embedded demo, unless --configfile names a config (a preset): that one replaces it whole
# rather than being merged into it (a merge would keep the demo's models and encoders)
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    input:
        expand("results/{model}/tables/metrics.md", model=MODELS),
        expand("results/{model}/tables/paired_vs_cfg.md", model=MODELS),
        expand("results/{model}/grids/{concept}.png", model=MODELS, concept=CONCEPTS),
        expand("results/{model}/tables/base_accuracy.md", model=SYNTHETIC_BASES),
        "results/plots/omega_ablation.png",
        "results/plots/lambda_ablation.png",
        "results/plots/pareto.png",
    default_target: True
