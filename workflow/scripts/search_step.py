"""One probe of a golden-section search (checkpoint search_step): score the probe the previous step
asked for on the selection split, replay the search, ask for the next probe or choose."""

import json
from pathlib import Path

import polars as pl

from wig.atomic import replace_file, tmp_path
from wig.workflow.jobs import job
from wig.workflow.search import advance

with job(snakemake, torch=False) as log:
    i, p = snakemake.input, snakemake.params
    previous = json.loads(Path(i.previous).read_text()) if "previous" in i.keys() else None
    probe = pl.concat([pl.read_parquet(f) for f in i.probe]) if "probe" in i.keys() else None
    reference = pl.concat([pl.read_parquet(f) for f in i.reference]) if "reference" in i.keys() else None
    state = advance(p.search, p.split, previous, probe, reference)
    out = snakemake.output[0]
    tmp_path(out).write_text(json.dumps(state, indent=2) + "\n")
    replace_file(tmp_path(out), out)
    log.info("bracket [%g, %g], next %s, %s", state["lo"], state["hi"], state["next"], state["reason"] or "running")
