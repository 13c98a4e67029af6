"""Draw the synthetic world's subject images into dataset.root (rule render_dataset): the subjects
the sheet lists, in its order (`wig.synthetic.world.subject_named` reads each row's image folder)."""

from wig.atomic import atomic_dir
from wig.concepts import read_sheet
from wig.synthetic.world import render_images, subject_named
from wig.workflow.jobs import job

with job(snakemake, torch=False) as log:
    r = snakemake.params.render
    subjects = [subject_named(c.folder) for c in read_sheet(snakemake.input.sheet).values()]
    with atomic_dir(snakemake.output[0], overwrite=True) as tmp:
        render_images(tmp, **r, subjects=subjects)
    log.info(
        "rendered %d subjects, %d images each at %d px (seed %d)", len(subjects), r["n_images"], r["size"], r["seed"]
    )
