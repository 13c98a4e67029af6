"""A finished golden-section search (rule search): its trace, its plot, and the chosen point on the
selection split beside the held-out evaluation split."""

import json
from pathlib import Path

import polars as pl

from wig.atomic import replace_file, tmp_path
from wig.evaluation.metrics import to_markdown
from wig.evaluation.plots import search_trace
from wig.workflow.jobs import job
from wig.workflow.search import held_out, summary, trace_frame

with job(snakemake, torch=False) as log:
    i, o, p = snakemake.input, snakemake.output, snakemake.params
    state = json.loads(Path(i.state).read_text())
    chosen = pl.concat([pl.read_parquet(f) for f in i.chosen])
    reference = pl.concat([pl.read_parquet(f) for f in i.reference]) if "reference" in i.keys() else None
    trace = trace_frame(state)
    table = held_out(p.search, state, chosen, reference)
    for frame, path in ((trace, o.trace), (table, o.chosen)):
        frame.write_parquet(tmp_path(path))
        replace_file(tmp_path(path), path)
    tmp_path(o.md).write_text(summary(p.search, state) + "\n\n" + to_markdown(table))
    replace_file(tmp_path(o.md), o.md)
    search_trace(trace, state, p.search, o.plot)
    log.info("%d probes, chosen %s = %s (%s)", len(trace), p.search["parameter"], state["best"], state["reason"])
