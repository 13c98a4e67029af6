"""The synthetic world's autoencoder, the first stage of its base model (rule pretrain_vae)."""

from wig.synthetic.pretrain import train_vae
from wig.workflow.jobs import job

with job(snakemake) as log:
    result = train_vae(snakemake.params.config, snakemake.output[0])
    log.info("autoencoder: %d steps, final reconstruction MSE %.5f", len(result), result["reconstruction"][-1])
    log.info("%.1f s", result["seconds"][-1])
