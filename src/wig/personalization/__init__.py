"""Personalization: fine-tuning a model on a subject, and realising each guidance branch's weights."""
