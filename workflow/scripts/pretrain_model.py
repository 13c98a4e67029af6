"""The synthetic world's UNet and text encoder on its frozen autoencoder (rule pretrain_model)."""

from wig.synthetic.pretrain import train_base
from wig.workflow.jobs import job

with job(snakemake) as log:
    result = train_base(snakemake.params.config, snakemake.input.vae, snakemake.output[0])
    log.info("UNet + text encoder: %d steps, final loss %.5f", len(result), result["loss"][-1])
    log.info("%.1f s", result["seconds"][-1])
