"""Sampling: the one-batched-forward guidance sampler (`sampler`) and the generation job that files
its images (`generation`); the model families it runs are `wig.models`.

This file imports nothing: a module that needs only the sampler must not take the generation
job's code into its code hash (`wig.provenance`).
"""
