"""Several fine-tune runs of one (model, fine-tune) in one job, one forward per step — each run the
folder rule train would write for it (rule train_<pack>, ``jobs.subjects_per_job``)."""

from wig.concepts import read_images
from wig.errors import WigError
from wig.models.pipelines import load_pipeline
from wig.personalization import Subject, make
from wig.workflow.jobs import job, local_weights

with job(snakemake) as log:
    p = snakemake.params
    method = make(**p.pack["method"])
    subjects = []
    for i, run in enumerate(p.pack["runs"]):
        try:
            images = read_images(snakemake.input.instances[i])
            classes = read_images(snakemake.input.classes[i]) if "classes" in snakemake.input.keys() else None
        except WigError as err:  # before any training: nothing of any run is written
            raise WigError(f"subject {run['concept']} (seed {run['seed']}): {err}") from None
        subjects.append(Subject(images, run["prompt"], classes, run["class_prompt"]))
    pipe = load_pipeline(local_weights(snakemake, p.model), device=p.runtime["device"], dtype=p.runtime["dtype"])
    seeds = [run["seed"] for run in p.pack["runs"]]
    logs = method.train_many(pipe, subjects, list(snakemake.output), seeds, overwrite=True)
    for run, result in zip(p.pack["runs"], logs):
        log.info("%s ft%d: %d steps, final loss %.4f", run["concept"], run["seed"], method.steps, result["loss"][-1])
