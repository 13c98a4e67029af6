"""Evaluation: the metric encoders (`encoders`), embedding files (`embeddings`), the metric registry
and tables (`metrics`), figures (`plots`) and contact sheets of the images (`contact_sheet`)."""
