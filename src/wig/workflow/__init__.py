"""The workflow's glue: the study a config describes (`study`), job set-up (`jobs`), GPU slots
(`gpus`), atomic outputs (`atomic`), code hashes and versions (`provenance`), resolved weights
(`weights`) and dataset fetching (`fetch`). Only `study` is read while Snakemake parses the
workflow; it imports no torch."""
