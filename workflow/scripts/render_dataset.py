"""Draw the synthetic world's subject images into dataset.root (rule render_dataset)."""

from wig.atomic import atomic_dir
from wig.synthetic.world import render_images
from wig.workflow.jobs import job

with job(snakemake, torch=False) as log:
    r = snakemake.params.render
    with atomic_dir(snakemake.output[0], overwrite=True) as tmp:
        render_images(tmp, **r)
    log.info("rendered %d images per subject at %d px (seed %d)", r["n_images"], r["size"], r["seed"])
