"""The synthetic world's autoencoder, the first stage of its base model (rule pretrain_vae)."""

from wig.jobs import job
from wig.pretrain import train_vae

with job(snakemake) as log:
    result = train_vae(snakemake.params.config, snakemake.output[0])
    log.info("autoencoder: %d steps, final reconstruction MSE %.5f", len(result), result["reconstruction"][-1])
    log.info("%.1f s", result["seconds"][-1])
