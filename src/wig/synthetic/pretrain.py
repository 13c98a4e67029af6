"""The synthetic world's base model, pretrained from scratch on rendered scenes (`wig.synthetic.world`).

The result is a stock ``StableDiffusionPipeline`` folder (AutoencoderKL, CLIPTextModel with
CLIP's tokenizer, UNet2DConditionModel, DDIMScheduler): the SD family of `wig.models.families` samples,
fine-tunes and guides it with the very code paths a real checkpoint takes. Two stages, each a
rule of its own (a UNet change keeps the autoencoder):

  vae    AutoencoderKL on scenes of plain and two-tone objects (it is the world's image codec:
         a subject's pattern must survive it; only the text-to-image stage never sees patterns),
         loss MSE + 1e-6 KL; then ``scaling_factor`` = 1 / std of its latents, as SD's 0.18215.
  model  UNet + text encoder from random init, jointly, on captions of *plain* objects, the
         autoencoder frozen; the text encoder is saved in float16 (its token table is most of
         the folder's bytes). The UNet predicts v (SD 2's ``v_prediction``) or x0 (``sample``):
         ε-prediction gave noise at this budget (../shared/notes/synthetic-testbed.md); v and x0
         reached the same accuracy at 2000 steps, and v is what stock SD 2 trains. Captions drop
         the colour, the background or everything (the unconditional branch CFG needs) at rates
         of the config.

Everything random comes from the config's seed: same config → the same weights on the CPU.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from wig.atomic import atomic_dir
from wig.errors import WigError
from wig.models.tiny import clip_tokenizer, seeded
from wig.synthetic.world import PALETTE, PATTERNS, SHAPES, Layout, Scene, caption, render_array

_COLOURS = list(PALETTE)


@dataclass(frozen=True)
class Captions:
    """How often a caption leaves a part unsaid."""

    drop_colour: float = 0.2
    drop_background: float = 0.1
    empty: float = 0.1  # the unconditional branch


def random_scene(rng: np.random.Generator, layout: Layout, patterned: float = 0.0) -> Scene:
    """A uniformly drawn scene; with probability ``patterned`` a two-tone object of a random pattern."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour, background, colour2 = (_COLOURS[i] for i in rng.choice(len(_COLOURS), 3, replace=False))
    cx, cy, radius = layout.draw(rng)
    if rng.random() < patterned:
        pattern = list(PATTERNS)[rng.integers(len(PATTERNS))]
        return Scene(shape, colour, background, cx, cy, radius, pattern, colour2, layout.size)
    return Scene(shape, colour, background, cx, cy, radius, size=layout.size)


def random_caption(rng: np.random.Generator, scene: Scene, captions: Captions) -> str:
    if rng.random() < captions.empty:
        return ""
    return caption(
        scene, colour=rng.random() >= captions.drop_colour, background=rng.random() >= captions.drop_background
    )


def pixels(scenes: list[Scene]) -> torch.Tensor:
    """Scenes → (N, 3, S, S) in [-1, 1], as the pipeline's image processor normalises."""
    arr = np.stack([render_array(s) for s in scenes]).astype(np.float32)
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def _lr_lambda(warmup: int, steps: int):
    """Linear warm-up, then cosine decay to 10 % of the peak."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return f


def _layout(config: dict) -> Layout:
    return Layout(size=config["size"])


def _check(config: dict, stage: str) -> dict:
    for key in ("size", "seed", stage):
        if key not in config:
            raise WigError(f"synthetic base config has no {key!r}")
    return config[stage]


def train_vae(config: dict, out: str | os.PathLike, progress: bool = True) -> pl.DataFrame:
    """Stage 1: the autoencoder; writes ``out`` (diffusers folder) + ``out/log.parquet``."""
    from diffusers import AutoencoderKL

    settings = _check(config, "vae_training")
    with seeded(config["seed"] + 1):
        vae = AutoencoderKL(**config["vae"])
    rng = np.random.default_rng(config["seed"])
    gen = torch.Generator().manual_seed(config["seed"])
    layout = _layout(config)
    steps, batch = settings["steps"], settings["batch_size"]
    opt = torch.optim.AdamW(vae.parameters(), lr=settings["lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(settings.get("warmup", 0), steps))
    rows, start = [], time.perf_counter()
    vae.train()
    for step in tqdm(range(1, steps + 1), desc="pretrain vae", disable=not progress):
        x = pixels([random_scene(rng, layout, patterned=0.5) for _ in range(batch)])
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen)
        rec = F.mse_loss(vae.decode(z).sample, x)
        kl = dist.kl().mean() / x[0].numel()
        loss = rec + settings.get("kl_weight", 1e-6) * kl
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        rows.append(
            {
                "step": step,
                "loss": loss.item(),
                "reconstruction": rec.item(),
                "kl": kl.item(),
                "seconds": time.perf_counter() - start,
            }
        )
    vae.eval()
    with torch.no_grad():  # SD's convention: latents × scaling_factor have unit variance
        x = pixels([random_scene(rng, layout, patterned=0.5) for _ in range(256)])
        std = vae.encode(x).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    log = pl.DataFrame(rows)
    with atomic_dir(out, overwrite=True) as tmp:
        vae.save_pretrained(tmp, safe_serialization=True)
        log.write_parquet(tmp / "log.parquet")
    return log


def train_base(config: dict, vae_dir: str | os.PathLike, out: str | os.PathLike, progress: bool = True) -> pl.DataFrame:
    """Stage 2: UNet + text encoder on captioned plain scenes; writes a StableDiffusionPipeline
    folder to ``out`` with the training log beside it in ``out/log.parquet``."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    settings = _check(config, "training")
    kind = config["scheduler"].get("prediction_type")
    if kind not in ("sample", "v_prediction"):
        raise WigError(
            f"the synthetic base predicts x0 or v (ε gives noise at this budget): scheduler.prediction_type "
            f"must be 'sample' or 'v_prediction', got {kind!r}"
        )
    vae = AutoencoderKL.from_pretrained(vae_dir).requires_grad_(False).eval()
    vae.register_to_config(_name_or_path="vae")  # not the stage folder's path: same config, same bytes
    with seeded(config["seed"]):
        unet = UNet2DConditionModel(**config["unet"])
    with seeded(config["seed"] + 2):
        text_encoder = CLIPTextModel(CLIPTextConfig(**config["text_encoder"]))
    tokenizer = clip_tokenizer()
    # the world's captions are short: pad to the encoder's positions, not CLIP's 77
    tokenizer.model_max_length = config["text_encoder"]["max_position_embeddings"]
    sampler = DDIMScheduler(**config["scheduler"])
    noise_scheduler = DDPMScheduler.from_config(sampler.config)
    captions = Captions(**settings.get("captions", {}))
    rng = np.random.default_rng(config["seed"] + 3)
    gen = torch.Generator().manual_seed(config["seed"] + 3)
    layout = _layout(config)
    steps, batch = settings["steps"], settings["batch_size"]
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=settings["lr"], weight_decay=settings.get("weight_decay", 0.0))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(settings.get("warmup", 0), steps))
    scaling = vae.config.scaling_factor
    rows, start = [], time.perf_counter()
    unet.train(), text_encoder.train()
    for step in tqdm(range(1, steps + 1), desc="pretrain base", disable=not progress):
        scenes = [random_scene(rng, layout) for _ in range(batch)]
        texts = [random_caption(rng, s, captions) for s in scenes]
        with torch.no_grad():
            dist = vae.encode(pixels(scenes)).latent_dist
            latents = (dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen)) * scaling
        ids = tokenizer(
            texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,), generator=gen)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=text_encoder(ids)[0]).sample
        target = latents if kind == "sample" else noise_scheduler.get_velocity(latents, noise, t)
        loss = F.mse_loss(pred, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        rows.append(
            {"step": step, "loss": loss.item(), "lr": sched.get_last_lr()[0], "seconds": time.perf_counter() - start}
        )
    unet.eval(), text_encoder.eval()
    # stored at half precision: CLIP's 49408 × 64 token table is 97 % of the encoder's bytes and the
    # world's captions train about 20 of its rows; the shipped base must stay under 20 MB. Loading
    # casts it back to the pipeline's dtype.
    text_encoder.to(torch.float16)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sampler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    log = pl.DataFrame(rows)
    with atomic_dir(out, overwrite=True) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        log.write_parquet(Path(tmp) / "log.parquet")
    return log
