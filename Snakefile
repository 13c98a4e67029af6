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
include: "workflow/rules/search.smk"
include: "workflow/rules/user_study.smk"


rule all:
    default_target: True
    input:
        [expand(rules.aggregate.output.md, model=m, finetune=f)[0] for m, f in FINETUNES],
        [expand(rules.aggregate.output.paired_md, model=m, finetune=f)[0] for m, f in FINETUNES],
        [expand(rules.grid.output[0], model=m, finetune=f, concept=CONCEPTS) for m, f in FINETUNES],
        expand(rules.base_accuracy.output.md, model=STUDY.world_bases()),
        [expand(rules.learning.output.md, model=m, finetune=f)[0] for m, f in FINETUNES if STUDY.learning_runs(m, f)],
        rules.plots.output,
        rules.finetune_table.output,
        [expand(rules.search.output.md, model=m, finetune=f, search=s)[0] for m, f in FINETUNES for s in STUDY.searches],
        rules.user_study.output if USER_STUDY else [],
        rules.user_study_table.output if USER_STUDY and config["user_study"].get("votes") else [],


# what the study implies, before any job (wig plan --configfile prints the same)
onstart:
    for _line in study_cost_lines():
        print(f"wig plan: {_line}", file=sys.stderr)


# Every scripted rule's params carry a hash of the wig code its script runs: the import closure of
# the script, read from the sources (wig.provenance.code_hash). A library change reruns exactly the
# jobs whose scripts reach it, and no rule lists module names that could drift from its imports.
for _rule in workflow.rules:
    if _rule.script:
        _rule.set_params(code=script_code_hash(_rule))
