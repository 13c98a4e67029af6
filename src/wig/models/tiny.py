"""What the tiny random-init twins' builders share: CLIP's real tokenizer and a Gemma tokenizer
built offline, seeded module init. Each family builds its own twins (`Family.build_tiny`, in its
module of `wig.models.families`) with the same classes and file layout as its real checkpoint, so a
twin is saved with `save_pretrained` and loaded back through the very `from_pretrained` path a
real model uses.
"""

from __future__ import annotations

import gzip
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch


@lru_cache(maxsize=1)
def _clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary and merges, rebuilt from the BPE file open_clip ships.

    Same construction as open_clip's SimpleTokenizer, hence the same 49408 ids as the
    tokenizer of every CLIP-based Stable Diffusion checkpoint.
    """
    import open_clip.tokenizer as oct

    bpe_path = Path(oct.__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(oct.bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """A CLIPTokenizer with CLIP's real vocabulary, built offline (``pad_token="!"``: SDXL's
    ``tokenizer_2``, which pads with "!" where the first pads with end-of-text)."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_bpe()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=77, pad_token=pad_token)


def gemma_tokenizer():
    """A character-level GemmaTokenizer built offline: Gemma's own pipeline (spaces as "▁", BPE
    with byte fallback, <bos> first) over printable ASCII and the 256 byte tokens, so every
    prompt encodes, an identifier like "sks" included."""
    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    pieces = specials + [f"<0x{b:02X}>" for b in range(256)] + ["▁"] + [chr(c) for c in range(33, 127)]
    return GemmaTokenizer(vocab={p: i for i, p in enumerate(pieces)}, merges=[], add_bos_token=True)


def tuples(value):
    # JSON lists → the tuples AutoencoderDC's config expects (nested for the qkv multiscales)
    return tuple(tuples(v) for v in value) if isinstance(value, list) else value


@contextmanager
def seeded(seed: int):
    """Module init under a fixed seed, leaving the caller's global generator untouched."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)
