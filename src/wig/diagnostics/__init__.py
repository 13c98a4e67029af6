"""Diagnostics that make images to look inside a fine-tune (attention collapse per checkpoint,
DreamBlend's): they sample with the guidance methods' own combinations through the sampler, so
they sit above sampling, not among the metrics, which only read images and embeddings."""
