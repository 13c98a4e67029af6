"""The models wig runs: what differs between model families (`families`, read from the one table
of family facts in `facts`), loading pipelines (`pipelines`) and their random-init tiny twins
(`tiny`).

This package sits below personalization and sampling (training needs the families, not the
sampler) and imports nothing here, so a module that needs one of them takes only that one into
its code hash (`wig.provenance`).
"""
