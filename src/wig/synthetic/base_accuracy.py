"""Is the synthetic world's base good enough for the study to mean anything? Its accuracy on world
prompts under CFG, read back by the oracle (rule base_accuracy).

Apart from ``wig.synthetic.pretrain`` because it samples with guidance: pretraining must not rerun when the
guidance code changes (rules hash their scripts' imports, ``wig.provenance``).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm

from wig.guidance.methods.cfg import CFG
from wig.sampling.sampler import sample
from wig.synthetic.oracle import text_fidelity
from wig.synthetic.world import PALETTE, SHAPES, prompt_attributes


def accuracy_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` full captions (colour, shape, background) drawn uniformly, colour ≠ background."""
    rng = np.random.default_rng(seed)
    colours = list(PALETTE)
    out = []
    for _ in range(n):
        colour, background = (colours[i] for i in rng.choice(len(colours), 2, replace=False))
        out.append(f"a {colour} {SHAPES[rng.integers(len(SHAPES))]} on a {background} background")
    return out


def base_accuracy(
    pipe, scales, n: int = 64, seed: int = 0, steps: int = 20, batch_size: int = 32, progress: bool = True
) -> pl.DataFrame:
    """How well the base model follows world prompts under CFG: per guidance scale λ, the oracle's
    accuracy on background, object colour and shape over ``n`` random full captions (image i
    sampled with seed ``seed + i``), plus their mean (``text``)."""
    prompts = accuracy_prompts(n, seed)
    rows = []
    for scale in tqdm(scales, desc="base accuracy", disable=not progress):
        scores = []
        for first in range(0, n, batch_size):
            chunk = prompts[first : first + batch_size]
            gens = [torch.Generator("cpu").manual_seed(seed + first + i) for i in range(len(chunk))]
            images = sample(pipe, chunk, CFG(scale=scale), gens, progress=False, steps=steps)
            scores += [text_fidelity(im, **prompt_attributes(p)) for im, p in zip(images, chunk)]
        row = {"scale": float(scale)}
        for attr in ("background", "colour", "shape", "text"):
            row[attr] = float(np.mean([s[attr] for s in scores]))
        rows.append(row | {"n_images": len(scores), "steps": steps})
    return pl.DataFrame(rows)
