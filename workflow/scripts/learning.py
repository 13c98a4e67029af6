"""Did each LoRA learn its subject? Training captions with and without it, read by the oracle (rule learning)."""

from pathlib import Path

from wig.atomic import replace_file, tmp_path
from wig.evaluation.metrics import to_markdown
from wig.models.pipelines import load_pipeline
from wig.personalization import make
from wig.synthetic.learning import learning_check, summary
from wig.workflow.jobs import job, local_weights

with job(snakemake) as log:
    p, o = snakemake.params, snakemake.output
    s = p.settings
    source = local_weights(snakemake, p.model)
    folders = {Path(f).parent.name + "/" + Path(f).name: f for f in snakemake.input.runs}  # <concept>/ft<seed>
    images = learning_check(
        load=lambda: load_pipeline(source, device=p.runtime["device"], dtype=p.runtime["dtype"]),
        attach=lambda pipe, run: make(**p.method).attach(pipe, run, weak=False),
        runs=[(concept, seed, folders[f"{concept}/ft{seed}"]) for concept, seed in s["runs"]],
        instance_prompt=s["instance_prompt"],
        identifier_of=s["subjects"].__getitem__,
        scale=s["scale"],
        seeds=s["seeds"],
        sampling=p.sampling,
    )
    table = summary(images)
    log.info("\n%s", to_markdown(table, digits=3))
    for frame, path in ((images, o.images), (table, o.table)):
        frame.write_parquet(tmp_path(path))
    tmp_path(o.md).write_text(to_markdown(table, digits=3))
    for path in (o.images, o.table, o.md):
        replace_file(tmp_path(path), path)
