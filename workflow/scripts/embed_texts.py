"""Embed a concept's prompt texts with CLIP's text tower (rule embed_texts)."""

from wig.atomic import replace_file, tmp_path
from wig.evaluation.encoders import embed_texts, load_encoder
from wig.workflow.jobs import job, local_weights

with job(snakemake) as log:
    p, out = snakemake.params, snakemake.output[0]
    encoder = load_encoder(p.spec, local_weights(snakemake, snakemake.input.get("encoder")), device=p.runtime["device"])
    frame = embed_texts(encoder, p.texts)
    frame.write_parquet(tmp_path(out))
    replace_file(tmp_path(out), out)
    log.info("%s: %d texts", encoder.id, len(frame))
