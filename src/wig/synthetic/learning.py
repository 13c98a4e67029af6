"""Did the fine-tune learn the subject? The check every PG result in the synthetic world rests on
(rule learning): on prompts like its training captions — the instance prompt alone and on each
training background — the subject's images with the fine-tune, unguided and under CFG, against
the base without it under CFG, read by the oracle. Identity is the pattern: the base draws the
class's shape from the class noun in the prompt, so its shape IoU is high with or without the
subject; its *pattern* accuracy is what stays near chance (a plain object of a uniformly random palette
colour other than the background's matches the subject's two colours on 1/7 of its pixels).

Apart from `wig.synthetic.oracle` because it samples with guidance (rules hash their scripts'
imports): scoring must not rerun when the guidance code changes, this check must.
"""

from __future__ import annotations

import polars as pl
import torch

from wig.guidance.methods.cfg import CFG
from wig.guidance.methods.none import NoGuidance
from wig.sampling.sampler import sample
from wig.synthetic.oracle import subject_fidelity
from wig.synthetic.world import subject_named

ARMS = ("fine-tune, unguided", "fine-tune, CFG", "base, CFG")


def training_prompts(instance_prompt: str, subject_words: str, backgrounds: tuple[str, ...]) -> list[str]:
    """The instance prompt ("a sks triangle") and the subject on each training background."""
    caption = instance_prompt.format(subject_words)
    return [caption] + [f"{caption} on a {bg} background" for bg in backgrounds]


def _images(pipe, prompts, guidance, seeds, weights, sampling):
    out = []
    for seed in seeds:
        gens = [torch.Generator("cpu").manual_seed(seed) for _ in prompts]
        out += sample(
            pipe,
            prompts,
            guidance,
            gens,
            progress=False,
            weights=weights,
            steps=sampling["steps"],
            height=sampling["height"],
            width=sampling["width"],
            negative_prompt=sampling["negative_prompt"],
        )
    return out


def _rows(images, arm, concept, fseed, subject) -> list[dict]:
    return [{"arm": arm, "concept": concept, "finetune_seed": fseed, **subject_fidelity(im, subject)} for im in images]


def learning_check(
    load, attach, runs, instance_prompt: str, identifier_of, scale: float, seeds, sampling
) -> pl.DataFrame:
    """Per image: arm, concept, LoRA seed (null for the base), shape IoU, pattern, subject fidelity.

    ``load()`` gives a fresh pipeline; ``attach(pipe, run)`` attaches a run's fine-tune and returns
    its branch weights; ``runs``: (concept, LoRA seed, run folder); ``identifier_of(concept)`` the
    words that name the subject ("sks triangle"). Image i of a prompt is sampled with seed i, the
    same noise in every arm."""
    rows = []
    base = load()
    for concept in dict.fromkeys(c for c, _, _ in runs):
        subject = subject_named(concept)
        prompts = training_prompts(instance_prompt, identifier_of(concept), subject.train_backgrounds)
        rows += _rows(_images(base, prompts, CFG(scale=scale), seeds, None, sampling), ARMS[2], concept, None, subject)
    for concept, fseed, run in runs:
        subject = subject_named(concept)
        prompts = training_prompts(instance_prompt, identifier_of(concept), subject.train_backgrounds)
        pipe = load()
        weights = attach(pipe, run)
        for arm, guidance in zip(ARMS[:2], (NoGuidance(), CFG(scale=scale))):
            rows += _rows(_images(pipe, prompts, guidance, seeds, weights, sampling), arm, concept, fseed, subject)
    return pl.DataFrame(rows, schema_overrides={"finetune_seed": pl.Int64})


def summary(images: pl.DataFrame) -> pl.DataFrame:
    """Per arm: the mean over subjects of each subject's mean shape IoU, pattern and subject
    fidelity, the lowest subject's, and the image count."""
    per_subject = images.group_by("arm", "concept").agg(pl.col("shape_iou", "pattern", "subject").mean())
    out = per_subject.group_by("arm").agg(
        pl.col("shape_iou", "pattern", "subject").mean(),
        pl.col("subject").min().alias("subject_worst"),
        pl.len().alias("n_subjects"),
    )
    counts = images.group_by("arm").agg(pl.len().alias("n_images"))
    order = {arm: i for i, arm in enumerate(ARMS)}
    return (
        out.join(counts, on="arm")
        .with_columns(pl.col("arm").replace_strict(order, return_dtype=pl.Int64).alias("_order"))
        .sort("_order")
        .drop("_order")
    )
