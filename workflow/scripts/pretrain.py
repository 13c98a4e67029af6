"""One stage of the synthetic world's base model (rules pretrain_vae, pretrain_model)."""

from wig.jobs import job
from wig.pretrain import train_base, train_vae

with job(snakemake) as log:
    config, out = snakemake.params.config, snakemake.output[0]
    if snakemake.rule == "pretrain_vae":
        result = train_vae(config, out)
        log.info("autoencoder: %d steps, final reconstruction MSE %.5f", len(result), result["reconstruction"][-1])
    else:
        result = train_base(config, snakemake.input.vae, out)
        log.info("UNet + text encoder: %d steps, final loss %.5f", len(result), result["loss"][-1])
    log.info("%.1f s", result["seconds"][-1])
