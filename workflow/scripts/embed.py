"""Embed reference images, prompt texts or a generation job's samples (rules embed_*)."""

from wig.atomic import replace_file, tmp_path
from wig.encoders import embed_images, embed_texts, load_encoder
from wig.jobs import job, local_weights

with job(snakemake) as log:
    p = snakemake.params
    encoder = load_encoder(p.spec, local_weights(snakemake, snakemake.input.get("encoder")), device=p.runtime["device"])
    if snakemake.rule == "embed_texts":
        frame = embed_texts(encoder, p.texts)
    else:
        frame = embed_images(encoder, snakemake.input.images, p.protocols, batch_size=p.batch_size)
    out = snakemake.output[0]
    frame.write_parquet(tmp_path(out))
    replace_file(tmp_path(out), out)
    log.info("%s: %d rows, %d images through the encoder", encoder.id, len(frame), encoder.forwards)
