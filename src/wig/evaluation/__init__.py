"""Evaluation: what a metric and an encoder kind are, and their registries (`base`); the shipped
ones, one module each — `dino`, `clip` (CLIP-I, CLIP-T), `pickscore` (the paper's Diffusion-DPO
metric), `dreamsim` (its style-LoRA metric), `scene` (the synthetic world's DINO stand-in),
`oracle` (the world's pixel metrics) — listed in `plugins`; loading encoders and embedding files
(`encoders`, `embeddings`); scores and tables (`metrics`, `markdown`), figures (`plots`), contact
sheets (`contact_sheet`), sample sizes (`sample_size`).

This file imports nothing: a job that needs only contact sheets must not take every metric into
its code hash (`wig.provenance`)."""
