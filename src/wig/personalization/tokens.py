"""Learned token embeddings (textual inversion): new tokens in the tokenizer whose input
embeddings are trained, saved as a safetensors file stock diffusers loads, and attached per
checkpoint.

Training follows the ``TokenEmbeddingsHandler`` of diffusers'
``train_dreambooth_lora_sd15_advanced.py`` (from replicate's cog-sdxl): the new rows start as
Gaussian noise at the standard deviation of the existing embedding table, and after every
optimiser step they are rescaled by (σ_table / σ_new)^0.1, which keeps their norm near the
vocabulary's. The script trains the whole embedding table and copies the old rows back after each
step; wig trains only the new rows, as their own parameter injected into the embedding layer's
output (a forward hook). AdamW and its decoupled weight decay act element-wise, so the new rows
move exactly as in the script, without gradients and optimiser state for the 49 408 old rows.

The file holds one tensor, ``clip_l``: (number of tokens, width) in token order, as the script
writes it; the tokens are recorded in the file's metadata. Stock diffusers loads it as the
script's model card says::

    pipe.load_textual_inversion(load_file(path)["clip_l"], token=["<s0>", "<s1>"],
                                text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from wig.branches import FULL
from wig.errors import WigError
from wig.personalization.lora import LoraBranchWeights, LoraScales
from wig.readers import value_problem

EMBEDDINGS_KEY = "clip_l"  # the advanced DreamBooth script's key for the (first) text encoder
EMBEDDINGS_NAME = "learned_embeds.safetensors"  # diffusers' textual-inversion file name


class TokenError(WigError):
    """A token-embedding file that cannot be used with the model at hand."""


def new_tokens(count: int) -> list[str]:
    """The advanced DreamBooth script's names for the new tokens of one concept: <s0>, <s1>, …"""
    return [f"<s{i}>" for i in range(count)]


def _embedding_layer(text_encoder) -> torch.nn.Embedding:
    return text_encoder.get_input_embeddings()


def check_new(tokenizer, tokens: Sequence[str], what: str) -> None:
    """Refuse tokens the tokenizer already has (their embedding would be overwritten or shadowed)."""
    vocab = tokenizer.get_vocab()
    taken = [t for t in tokens if t in vocab]
    if taken:
        raise TokenError(f"{what}: token {taken[0]} already exists in the tokenizer's vocabulary")


def add_tokens(pipe, tokens: Sequence[str], rows: torch.Tensor) -> list[int]:
    """Add ``tokens`` to the tokenizer (as diffusers' ``load_textual_inversion`` does) and set
    their input embeddings to ``rows``; returns their ids."""
    pipe.tokenizer.add_tokens(list(tokens))
    ids = pipe.tokenizer.convert_tokens_to_ids(list(tokens))
    pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer))
    layer = _embedding_layer(pipe.text_encoder)
    with torch.no_grad():
        layer.weight[ids] = rows.to(layer.weight.device, layer.weight.dtype)
    return ids


def read_embeddings(
    path: str | os.PathLike, pipe, tokens: Sequence[str] | None = None
) -> tuple[list[str], torch.Tensor]:
    """The tokens and rows of an embeddings file, checked against ``pipe``'s text encoder: one
    finite (n, width) tensor whose width is the encoder's, tokens new to its tokenizer."""
    path = Path(path)
    if not path.is_file():
        raise TokenError(f"token embeddings not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys, meta = list(f.keys()), f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in keys}
    except (SafetensorError, OSError, ValueError) as err:
        raise TokenError(f"not a safetensors token-embedding file: {path} ({err})") from None
    if len(tensors) != 1:
        raise TokenError(f"{path}: expected one embedding tensor, found {len(tensors)} ({', '.join(keys) or 'none'})")
    ((key, rows),) = tensors.items()
    if rows.ndim == 1:
        rows = rows.unsqueeze(0)
    width = _embedding_layer(pipe.text_encoder).weight.shape[1]
    if rows.ndim != 2 or rows.shape[1] != width:
        raise TokenError(
            f"{path}: embeddings of shape {tuple(rows.shape)} do not fit the text encoder, whose width is {width}"
        )
    if (problem := value_problem(rows)) is not None:
        raise TokenError(f"{path}: the embedding tensor {key} {problem}")
    if tokens is None and meta.get("tokens"):
        tokens = meta["tokens"].split(",")
    elif tokens is None:  # a file keyed by its token (diffusers' format) or the advanced script's clip_l
        tokens = new_tokens(rows.shape[0]) if key == EMBEDDINGS_KEY else [key]
    if len(tokens) != rows.shape[0]:
        raise TokenError(f"{path}: {rows.shape[0]} embeddings for {len(tokens)} tokens ({', '.join(tokens)})")
    check_new(pipe.tokenizer, tokens, str(path))
    return list(tokens), rows.float()


def save_embeddings(
    rows: torch.Tensor, tokens: Sequence[str], path: str | os.PathLike, key: str = EMBEDDINGS_KEY
) -> Path:
    """One tensor under ``key`` (the advanced script's ``clip_l``; a single token's own name, as
    diffusers' Custom Diffusion script writes ``<new1>``), the tokens in the metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensor = rows.detach().to("cpu", torch.float32).contiguous()
    save_file({key: tensor}, str(path), metadata={"tokens": ",".join(tokens)})
    return path


class LearnedTokens:
    """New tokens trained as input embeddings during one run (see the module docstring).

    ``with LearnedTokens(pipe, tokens, gen) as lt:`` adds the tokens to a copy of the tokenizer
    and the text encoder's table and injects ``lt.rows`` (the trainable parameter) into the
    embedding layer's output; on exit the pipeline's tokenizer and table are as they were.
    """

    def __init__(self, pipe, tokens: Sequence[str], gen: torch.Generator, init: torch.Tensor | None = None):
        """``init``: the rows to start from (default: Gaussian at the table's σ, drawn from ``gen``)."""
        self.pipe, self.tokens, self.gen, self.init = pipe, list(tokens), gen, init
        self._handle = None

    def __enter__(self):
        import copy

        pipe = self.pipe
        check_new(pipe.tokenizer, self.tokens, "textual inversion")
        layer = _embedding_layer(pipe.text_encoder)
        self._tokenizer, self._n_vocab = pipe.tokenizer, layer.weight.shape[0]
        self.std = float(layer.weight.detach().float().std())
        width = layer.weight.shape[1]
        if self.init is not None:
            init = self.init.detach().float().clone().reshape(len(self.tokens), width)
        else:
            init = torch.randn((len(self.tokens), width), generator=self.gen) * self.std
        pipe.tokenizer = copy.deepcopy(pipe.tokenizer)
        try:
            self.ids = add_tokens(pipe, self.tokens, init)
        except BaseException:
            self._restore()
            raise
        self.first = min(self.ids)
        if self.ids != list(range(self.first, self.first + len(self.ids))):
            self._restore()
            raise TokenError(f"new tokens {self.tokens} did not get consecutive ids: {self.ids}")
        device = _embedding_layer(pipe.text_encoder).weight.device
        self.rows = torch.nn.Parameter(init.to(device))
        self._handle = _embedding_layer(pipe.text_encoder).register_forward_hook(self._inject)
        return self

    def _inject(self, module, args, out):
        ids = args[0]
        new = ids >= self.first
        if not bool(new.any()):
            return None
        picked = self.rows[(ids - self.first).clamp(min=0)].to(out.dtype)
        return torch.where(new.unsqueeze(-1), picked, out)

    @torch.no_grad()
    def after_step(self) -> None:
        """The script's renormalisation: rows × (σ_table / σ_rows)^0.1."""
        self.rows.mul_((self.std / self.rows.float().std()) ** 0.1)

    def save(self, path: str | os.PathLike, key: str = EMBEDDINGS_KEY) -> Path:
        return save_embeddings(self.rows, self.tokens, path, key=key)

    def _restore(self) -> None:
        self.pipe.tokenizer = self._tokenizer
        if _embedding_layer(self.pipe.text_encoder).weight.shape[0] != self._n_vocab:
            self.pipe.text_encoder.resize_token_embeddings(self._n_vocab)

    def __exit__(self, *exc):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._restore()
        return False


class TokenRows:
    """Per-branch token embeddings in the sampler's text encoder: a branch uses the rows of the
    checkpoint with the largest coefficient (the weak checkpoint's rows in AG's weak branch); a
    branch at the pretrained weights has no rows of its own for the new tokens and uses the
    full checkpoint's (the ∅ branch never contains them)."""

    def __init__(self, pipe, ids: list[int], rows: Mapping[str, torch.Tensor], inner):
        self.pipe, self.ids, self.rows, self.inner = pipe, ids, dict(rows), inner

    @property
    def has_effect(self) -> bool:
        return len(self.rows) > 1 or self.inner.has_effect

    def set(self, scales: Mapping[str, torch.Tensor]) -> None:
        self.inner.set(scales)
        weights = {name: float(vec.max()) for name, vec in scales.items() if name in self.rows}
        name = max(weights, key=weights.get) if weights and max(weights.values()) > 0 else FULL
        self._write(self.rows[name])

    @torch.no_grad()
    def _write(self, rows: torch.Tensor) -> None:
        layer = _embedding_layer(self.pipe.text_encoder)
        layer.weight[self.ids] = rows.to(layer.weight.device, layer.weight.dtype)

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, *exc):
        self._write(self.rows[FULL])
        return self.inner.__exit__(*exc)


class TokenBranchWeights(LoraBranchWeights):
    """LoRA branch weights plus each checkpoint's token embeddings in the text encoder (`TokenRows`)."""

    def __init__(self, ids: list[int], rows: Mapping[str, torch.Tensor]):
        self.ids, self.rows = ids, dict(rows)

    def text_encoder(self, pipe) -> TokenRows:
        return TokenRows(pipe, self.ids, self.rows, LoraScales([pipe.text_encoder]))
