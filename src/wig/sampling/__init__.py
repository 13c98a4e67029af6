"""Sampling: the model families (`families`: what differs between SD and SANA), loading pipelines
(`pipelines`) and their tiny twins (`tiny`), the one-batched-forward guidance sampler (`sampler`)
and the generation job that files its images (`generation`).

This file imports nothing: a module that needs only the families (training) must not take the
sampler's code, and with it every guidance method, into its code hash (`wig.workflow.provenance`).
"""
