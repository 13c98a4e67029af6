"""The user study's folder: its drawn sets with every image copied under an opaque id (rule user_study)."""

from wig.user_study.design import UserStudy, build_study, random_pass_probability, resolve_images
from wig.workflow.jobs import job

with job(snakemake, torch=False) as log:
    design = snakemake.params.design
    samples = dict(zip(snakemake.params.sample_jobs, snakemake.input.samples))
    references = dict(zip(snakemake.params.concepts, snakemake.input.references))
    folder = build_study(resolve_images(design, samples, references), snakemake.output[0])
    log.info(
        "%d sets (%d repeats, %d gold sets) of %s",
        len(design["sets"]),
        len(design["attention"]),
        len(design.get("gold", [])),
        list(design["entries"]),
    )
    # what the designer tightens the rule by, said when the study is drawn
    chance = random_pass_probability(UserStudy.load(folder).data)
    log.info("a rater clicking at random passes the exclusion rule with probability %.3f", chance)
    print(f"user study: a rater clicking at random passes the exclusion rule with probability {chance:.3f}")
