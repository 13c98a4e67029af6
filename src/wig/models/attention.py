"""Cross-attention maps of a diffusers denoiser, captured by attention processors.

`capture_cross_attention(model)` wraps the processor of every cross-attention layer (an
``Attention`` module attending to the text) in a `CaptureProcessor`: the layer's output is the
wrapped (stock) processor's, bit for bit, so capturing never moves a sample; beside it the
processor computes the layer's attention probabilities softmax(q·kᵀ/√d) as
``Attention.get_attention_scores`` does, averages them over heads and keeps them per layer while
the store is recording. Used by DreamBlend's cross-attention guidance (the maps of a reference
trajectory, and the edit's with gradients) and by the attention-collapse diagnostic. The layers
are diffusers' own modules and processors (``set_attn_processor``), not patched forwards.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


@dataclass
class MapStore:
    """Per layer name, the head-averaged probabilities (batch, query pixels, text tokens) of the
    forwards run while ``recording``; `clear` before each forward whose maps you want."""

    recording: bool = False
    maps: dict[str, torch.Tensor] = field(default_factory=dict)

    def clear(self) -> None:
        self.maps = {}


def attention_probs(
    attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb=None, attention_mask=None
):
    """softmax(q·kᵀ·scale + mask) per head (batch, heads, query length, key length) of a
    cross-attention layer, with the input handling of diffusers' ``AttnProcessor2_0`` (spatial and
    group norm, 4-D inputs, the cross norm, q/k norms, the additive mask a text encoder's padding
    gives: SANA's) and the arithmetic of ``Attention.get_attention_scores``."""
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    if hidden_states.ndim == 4:
        b, c, h, w = hidden_states.shape
        hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    if attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    batch = hidden_states.shape[0]
    query, key = attn.to_q(hidden_states), attn.to_k(encoder_hidden_states)
    head_dim = key.shape[-1] // attn.heads
    query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    q, k = query.reshape(batch * attn.heads, -1, head_dim), key.reshape(batch * attn.heads, -1, head_dim)
    if attention_mask is not None:  # (batch · heads, 1, keys), added to every query's scores
        attention_mask = attn.prepare_attention_mask(attention_mask, k.shape[1], batch)
    probs = attn.get_attention_scores(q, k, attention_mask)
    return probs.view(batch, attn.heads, probs.shape[1], probs.shape[2])


class CaptureProcessor:
    """The wrapped processor's output; the head-averaged cross-attention probabilities into the
    store while it records (self-attention passes through untouched)."""

    def __init__(self, name: str, inner, store: MapStore):
        self.name, self.inner, self.store = name, inner, store

    def __call__(self, attn, hidden_states, *args, **kwargs):
        # the arguments reach the wrapped processor as they came (processors differ in what they take)
        named = dict(zip(("encoder_hidden_states", "attention_mask", "temb"), args)) | kwargs
        text = named.get("encoder_hidden_states")
        if self.store.recording and text is not None:
            probs = attention_probs(attn, hidden_states, text, named.get("temb"), named.get("attention_mask"))
            self.store.maps[self.name] = probs.mean(dim=1)
        return self.inner(attn, hidden_states, *args, **kwargs)


def cross_attention_layers(model) -> dict[str, object]:
    """The denoiser's cross-attention modules (``Attention`` with ``is_cross_attention``) by name."""
    from diffusers.models.attention_processor import Attention

    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, Attention) and module.is_cross_attention
    }


@contextmanager
def capture_cross_attention(model):
    """Within the block, ``model``'s cross-attention layers record into the `MapStore` yielded
    (while its ``recording`` is set); their processors are restored afterwards."""
    layers = cross_attention_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no cross-attention layer to capture")
    store = MapStore()
    saved = {name: module.processor for name, module in layers.items()}
    try:
        for name, module in layers.items():
            module.set_processor(CaptureProcessor(name, saved[name], store))
        yield store
    finally:
        for name, module in layers.items():
            module.set_processor(saved[name])
