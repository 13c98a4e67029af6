"""Train the synthetic world's scene encoder, the study's learned DINO stand-in (rule train_encoder)."""

from wig.synthetic.encoder import train_encoder
from wig.workflow.jobs import job

with job(snakemake) as log:
    result = train_encoder(snakemake.params.spec, snakemake.output[0])
    last = result.row(-1, named=True)
    log.info(
        "%d steps, %.1f s; held-out accuracy: %s",
        last["step"],
        last["seconds"],
        ", ".join(f"{k.removesuffix('_accuracy')} {v:.3f}" for k, v in last.items() if k.endswith("_accuracy")),
    )
