"""Tiny twins: seeded, byte-identical, loadable by stock diffusers, with CLIP's real tokenizer."""

import open_clip
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from wig.models.tiny import clip_tokenizer

pytestmark = pytest.mark.check


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_stock_from_pretrained_loads_the_twin(tiny_sd):
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd), safety_checker=None)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.vae_scale_factor == 2 and pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    n_params = sum(p.numel() for p in pipe.unet.parameters())
    assert 100_000 < n_params < 5_000_000


def test_tokenizer_matches_open_clip():
    texts = ["a sks dog on the beach", "A cat-toy, in the  SNOW!!", "an émoji 🐶 and 123", ""]
    ours = clip_tokenizer()(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    ref = open_clip.get_tokenizer("ViT-B-32")(texts)  # open_clip pads with 0, CLIPTokenizer with <|endoftext|>
    assert len(clip_tokenizer()) == 49408
    for row, ref_row in zip(ours.input_ids, ref):
        n = int((ref_row != 0).sum())
        assert torch.equal(row[:n], ref_row[:n])
        assert (row[n:] == 49407).all()
