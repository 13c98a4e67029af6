"""Attention collapse per checkpoint (DreamBlend, Ram et al. 2024, its Fig. 2): as DreamBooth
fine-tuning goes on, every token's cross-attention lands on the subject, and a checkpoint that late
is too late to guide.

For each checkpoint (an attached adapter: the run's weak or full one, or a step<k> it kept) the
checkpoint samples each prompt with CFG; its own final latent is re-noised to the diffusion time
``probe`` (fixed noise) and its prompt branch run once with the cross-attention maps captured
(`wig.models.attention`). Per layer, the *subject's region* is the ``top`` share of pixels where
the subject's tokens (the identifier's) attend most; a token's *concentration* is the share of its
spatial attention (its map normalised over pixels) inside that region, averaged over layers. A
token that ignores the subject scores about ``top``; a collapsed one 1. The tokens measured are
the prompt's own: not the start, end or padding tokens, not the subject's.

Choices the paper leaves open (its text beyond the abstract and captions was not available here):
the probe time, the region's share and the re-noising of the checkpoint's own sample; each is a
parameter.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import polars as pl
import torch

from wig.branches import FULL, BranchWeights
from wig.guidance import PROMPT, Branch, baseline


class _CheckpointAsFineTune(BranchWeights):
    """``weights`` with the attached checkpoint ``adapter`` in the fine-tune's place (θ' := θ_k):
    CFG's own branches, at {FULL: 1}, then run at that checkpoint with the others off."""

    def __init__(self, weights: BranchWeights, adapter: str):
        self.weights, self.adapter = weights, adapter

    def attached(self, pipe) -> set[str]:
        return self.weights.attached(pipe) | {FULL}

    def prepare(self, pipe) -> None:
        self.weights.prepare(pipe)

    def text_encoder(self, pipe):
        return _Renamed(self.weights.text_encoder(pipe), self.adapter)

    def denoiser(self, pipe):
        return _Renamed(self.weights.denoiser(pipe), self.adapter)


class _Renamed:
    """A weights context whose ``set`` reads FULL as ``adapter``; everything else is the context's."""

    def __init__(self, context, adapter: str):
        self.context, self.adapter = context, adapter

    def __enter__(self):
        self.inner = self.context.__enter__()
        return self

    def __exit__(self, *exc):
        return self.context.__exit__(*exc)

    def set(self, scales, *args):
        self.inner.set({(self.adapter if k == FULL else k): v for k, v in scales.items()}, *args)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def token_positions(tokenizer, prompt: str, subject: str) -> tuple[list[int], list[int]]:
    """(the subject's token positions, the prompt's other token positions) in the encoded prompt:
    positions after the start token and before the end token; the subject is found as its token
    sequence (the first occurrence)."""
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    sub = tokenizer(subject, add_special_tokens=False).input_ids
    body = list(range(1, len(ids) - 1))
    for start in body:
        if ids[start : start + len(sub)] == sub:
            own = list(range(start, start + len(sub)))
            return own, [p for p in body if p not in own]
    raise ValueError(f"the subject {subject!r} is not among the tokens of {prompt!r}")


def concentration(
    maps: Mapping[str, torch.Tensor], subject: Sequence[int], others: Sequence[int], top: float
) -> np.ndarray:
    """Per token of ``others``: the share of its pixel-normalised map inside the subject's region
    (the ``top`` share of pixels where the mean of the subject tokens' normalised maps is largest),
    averaged over layers. ``maps``: layer → (pixels, tokens) for one image."""
    per_layer = []
    for m in maps.values():
        m = m.double()
        a = m / m.sum(dim=0, keepdim=True)
        s = a[:, list(subject)].mean(dim=1)
        k = max(1, int(round(top * len(s))))
        region = torch.zeros_like(s, dtype=torch.bool)
        region[torch.topk(s, k).indices] = True
        per_layer.append(a[region][:, list(others)].sum(dim=0).numpy())
    return np.mean(per_layer, axis=0)


@torch.no_grad()
def attention_collapse(
    pipe,
    prompts: Sequence[str],
    subject: str,
    checkpoints: Mapping[str, str],
    seeds: Sequence[int] = (0,),
    steps: int = 25,
    scale: float = 7.5,
    probe: float = 0.5,
    top: float = 0.25,
    weights=None,
    **sampling,
) -> pl.DataFrame:
    """One row per (checkpoint, prompt, seed, token): ``concentration`` on the subject's region.
    ``checkpoints`` maps a label (e.g. "step 250") to the attached adapter it names; ``subject``
    is the identifier as the prompts write it ("sks")."""
    from wig.branches import scales_of
    from wig.models.attention import capture_cross_attention
    from wig.models.families import family_of
    from wig.personalization.lora import LoraBranchWeights
    from wig.sampling.sampler import Request, sample_latents

    if not 0 < top < 1 or not 0 < probe < 1:
        raise ValueError(f"top and probe lie in (0, 1), got top {top}, probe {probe}")
    weights = weights or LoraBranchWeights()
    family = family_of(pipe)
    model, scheduler = family.denoiser(pipe), pipe.scheduler
    rows = []
    positions = [token_positions(pipe.tokenizer, p, subject) for p in prompts]
    for label, adapter in checkpoints.items():
        guidance = baseline()(scale=scale)  # CFG, the registry's baseline, at the checkpoint
        at_checkpoint = _CheckpointAsFineTune(weights, adapter)
        for seed in seeds:
            request = Request(
                list(prompts), [torch.Generator("cpu").manual_seed(seed) for _ in prompts], steps=steps, **sampling
            )
            x0 = sample_latents(pipe, guidance, request, progress=False, weights=at_checkpoint)
            t = torch.tensor(int(probe * scheduler.config.num_train_timesteps))
            noise = torch.randn(x0.shape, generator=torch.Generator("cpu").manual_seed(seed)).to(x0)
            x_t = scheduler.add_noise(x0, noise, t)
            text = family.encode(pipe, list(prompts))
            with weights.denoiser(pipe) as model_scales, capture_cross_attention(model) as store:
                model_scales.set(scales_of([Branch(PROMPT, {adapter: 1.0})], len(prompts), x0.device))
                store.recording = True
                model_scales.predict(family, pipe, scheduler.scale_model_input(x_t, t), t.to(x0.device), text)
            for i, (own, others) in enumerate(positions):
                values = concentration({k: v[i] for k, v in store.maps.items()}, own, others, top)
                for token, value in zip(others, values):
                    rows.append(
                        {
                            "checkpoint": label,
                            "prompt_index": i,
                            "prompt": prompts[i],
                            "seed": seed,
                            "token": int(token),
                            "concentration": float(value),
                        }
                    )
    return pl.DataFrame(rows)


def collapse_summary(table: pl.DataFrame) -> pl.DataFrame:
    """Per checkpoint: the mean concentration over prompts, seeds and tokens, in table order."""
    return table.group_by("checkpoint", maintain_order=True).agg(
        pl.col("concentration").mean().alias("concentration"), pl.len().alias("n_tokens")
    )
