"""Clone the dataset's public copy at a pinned commit into dataset.root (rule fetch_dataset)."""

from wig.fetch import fetch_git_folder
from wig.workflow.jobs import job

with job(snakemake, torch=False) as log:
    f = snakemake.params.fetch
    fetch_git_folder(f["repo"], f["commit"], f["subdir"], snakemake.output[0])
    log.info("fetched %s@%s:%s", f["repo"], f["commit"], f["subdir"])
