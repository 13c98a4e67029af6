"""Evaluation: the metric encoders (`encoders`, a registry of kinds), embedding files
(`embeddings`), the metric registry and tables (`metrics`), figures (`plots`), contact sheets of the
images (`contact_sheet`), and plug-ins: `pickscore` (PickScore, the paper's Diffusion-DPO metric),
`dreamsim` (DreamSim, its style-LoRA metric)."""
