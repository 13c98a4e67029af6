"""The workflow's glue, the top of the house: the study a config describes (`study`: its checks
`validation`, its domain model `model`, each rule's settings `rule_params`), the λ/ω search
(`search`), the config schema's errors (`config_schema`) and job set-up (`jobs`). The
utilities the library's lower floors use too — atomic outputs, GPU slots, code hashes, resolved
weights, fetching — live on the ground floor (`wig.atomic`, `wig.gpus`, `wig.provenance`,
`wig.weights`, `wig.fetch`). Only `study` is read while Snakemake parses the workflow; it imports
no torch."""
