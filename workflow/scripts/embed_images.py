"""Embed a concept's reference images or a generation job's samples (rules embed_references,
embed_samples): once per protocol, in batches."""

from wig.atomic import replace_file, tmp_path
from wig.evaluation.encoders import embed_images, load_encoder
from wig.workflow.jobs import job, local_weights

with job(snakemake) as log:
    p, out = snakemake.params, snakemake.output[0]
    encoder = load_encoder(p.spec, local_weights(snakemake, snakemake.input.get("encoder")), device=p.runtime["device"])
    frame = embed_images(encoder, snakemake.input.images, p.protocols, batch_size=p.batch_size)
    frame.write_parquet(tmp_path(out))
    replace_file(tmp_path(out), out)
    log.info("%s: %d rows, %d images through the encoder", encoder.id, len(frame), encoder.forwards)
