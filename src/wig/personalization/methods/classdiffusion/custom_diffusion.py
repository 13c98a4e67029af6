"""Custom Diffusion training with ClassDiffusion's semantic preservation loss, its files, and the
exact per-sample realisation of θ + Σ_k s_k(θ_k − θ) for the trained tensors.

Training follows ``train_class_diffusion.py`` of Rbrq03/ClassDiffusion (itself diffusers'
``train_custom_diffusion.py`` plus SPL), run as their ``scripts/train_single.sh`` runs it:

- trained: every cross-attention (``attn2``) ``to_k`` and ``to_v`` weight of the UNet in full
  (``--freeze_model crossattn_kv``) and the input embedding of one new token, initialised from
  the embedding of ``initializer_token`` (their default "ktn");
- AdamW (β 0.9/0.999, weight decay 1e-2, ε 1e-8), constant learning rate lr × batch
  (``--scale_lr``: 1e-5 × 2), gradients clipped to 1.0, batch 2 instance images, no class images;
- data: horizontal flip (p 0.5), then Custom Diffusion's rescale augmentation — with p 0.66 the
  image shrinks to a random size in [R/3, R] and is pasted at a random place on a canvas of zeros (mid-grey in [-1, 1]),
  else it grows to [1.2R, 1.4R] and is cropped at random; "a far away"/"very small" or "zoomed
  in"/"close up" is prefixed to the prompt as their script does; the loss is the MSE masked to the
  pasted region at latent resolution (one latent pixel in from its border);
- loss = masked denoising MSE + spl_weight · (1 − cos(pool("a photo of a <new1> {class}"),
  pool("a photo of a {class}"))), ``pool`` the text encoder's ``pooler_output`` (no projection).

Their script zeroes the gradients of the other embedding rows but lets AdamW's weight decay
shrink the whole table; wig trains the new row alone (the table is left as it was). Everything
random comes from one seeded CPU generator, so a run is reproducible on the CPU bit for bit.
"""

from __future__ import annotations

import hashlib
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Mapping

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from wig.atomic import atomic_dir
from wig.branches import FULL, BranchWeights
from wig.errors import WigError
from wig.models.families import Text, family_of
from wig.personalization.hooks import NoScales, SampleScales, per_sample
from wig.personalization.methods.classdiffusion import NEEDS, supports_custom_diffusion
from wig.personalization.tokens import EMBEDDINGS_NAME, LearnedTokens, TokenRows, add_tokens, read_embeddings
from wig.readers import value_problem

PROCESSOR_SUFFIX = {"to_k": "processor.to_k_custom_diffusion.weight", "to_v": "processor.to_v_custom_diffusion.weight"}


class CustomDiffusionError(WigError):
    """A Custom Diffusion file that cannot be used with the model at hand."""


def trained_layers(unet) -> dict[str, torch.nn.Linear]:
    """The cross-attention key and value projections, by module name (``…attn2.to_k``)."""
    modules = dict(unet.named_modules())
    layers = {}
    for name, module in modules.items():
        if name.endswith("attn2") and getattr(module, "is_cross_attention", False):
            for proj in ("to_k", "to_v"):
                layers[f"{name}.{proj}"] = getattr(module, proj)
    return layers


def file_key(layer: str) -> str:
    """diffusers' Custom Diffusion key of a layer: ``…attn2.processor.to_k_custom_diffusion.weight``."""
    attn, proj = layer.rsplit(".", 1)
    return f"{attn}.{PROCESSOR_SUFFIX[proj]}"


def base_fingerprint(unet) -> str:
    """sha256 of the base's trained tensors (as fp16 bytes, in layer order, so one checkpoint
    loaded in fp32 or fp16 gives one fingerprint): a file records the base it was trained on, and
    attaching it to another is refused."""
    h = hashlib.sha256()
    for name, layer in sorted(trained_layers(unet).items()):
        h.update(name.encode())
        h.update(layer.weight.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return h.hexdigest()


def save_custom_diffusion(unet, path: Path, base: str) -> Path:
    state = {
        file_key(n): m.weight.detach().to("cpu", torch.float32).contiguous() for n, m in trained_layers(unet).items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # one metadata entry: safetensors writes its metadata map in no fixed order
    save_file(state, str(path), metadata={"base_sha256": base})
    return path


def read_deltas(unet, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """ΔW = W' − W per trained layer of a Custom Diffusion file, checked against ``unet``: every
    key a cross-attention key/value projection of this UNet with its shape, finite, and trained on
    this very base (the file's ``base_sha256`` metadata; a file without it is refused)."""
    path = Path(path)
    if not path.is_file():
        raise CustomDiffusionError(f"Custom Diffusion weights not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CustomDiffusionError(f"not a safetensors Custom Diffusion file: {path} ({err})") from None
    layers = {file_key(n): (n, m) for n, m in trained_layers(unet).items()}
    if not state:
        raise CustomDiffusionError(f"{path}: no tensors")
    deltas = {}
    for key, tensor in state.items():
        if key not in layers:
            raise CustomDiffusionError(f"{path}: {key} is not a cross-attention key/value projection of this UNet")
        name, layer = layers[key]
        if tuple(tensor.shape) != tuple(layer.weight.shape):
            raise CustomDiffusionError(
                f"{path}: {key} has shape {tuple(tensor.shape)}, the model's {name} {tuple(layer.weight.shape)} "
                "(a file for another base?)"
            )
        if (problem := value_problem(tensor)) is not None:
            raise CustomDiffusionError(f"{path}: {key} {problem}")
        deltas[name] = tensor.float() - layer.weight.detach().to("cpu", torch.float32)
    recorded = meta.get("base_sha256")
    if recorded is None:  # stored weights W', not ΔW: on any other base they would silently replace its layers
        raise CustomDiffusionError(
            f"{path}: no base_sha256 in its metadata, so the base it was trained on cannot be checked "
            "(wig writes it with every run; a file edited or re-saved without its metadata is refused)"
        )
    if recorded != base_fingerprint(unet):
        raise CustomDiffusionError(
            f"{path} was trained on another base model (its base sha256 {recorded[:12]}… differs from this "
            "model's cross-attention weights)"
        )
    return deltas


class DeltaScales(SampleScales):
    """Per-sample θ + Σ_k s_k·ΔW_k for the trained layers: a forward hook adds Σ_k s_k ΔW_k x to
    each layer's output. ``set`` takes the sampler's per-sample coefficient vectors."""

    def __init__(self, layers: Mapping[str, torch.nn.Linear], deltas: Mapping[str, Mapping[str, torch.Tensor]]):
        super().__init__()
        self.layers, self.deltas = dict(layers), {k: dict(v) for k, v in deltas.items()}  # ckpt -> layer -> ΔW

    @property
    def has_effect(self) -> bool:
        return bool(self.layers)

    def set(self, scales: Mapping[str, torch.Tensor]) -> None:
        self._scales = {name: vec for name, vec in scales.items() if name in self.deltas and bool((vec != 0).any())}

    def _hook(self, layer: str):
        def hook(module, args, out):
            (x,) = args[:1]
            for name, vec in self._scales.items():
                delta = self.deltas[name][layer]
                out = out + F.linear(x, delta.to(x.device, x.dtype)) * per_sample(vec, out)
            return out

        return hook

    def _hooks(self):
        return [(module, self._hook(name)) for name, module in self.layers.items()]


class DeltaBranchWeights(BranchWeights):
    """Branch weights of a fine-tune of whole tensors (`DeltaScales`) with learned token rows."""

    def __init__(
        self, deltas: Mapping[str, Mapping[str, torch.Tensor]], ids: list[int], rows: Mapping[str, torch.Tensor]
    ):
        self.deltas, self.ids, self.rows = {k: dict(v) for k, v in deltas.items()}, ids, dict(rows)

    def attached(self, pipe) -> set[str]:
        return set(self.deltas)

    def text_encoder(self, pipe) -> TokenRows:
        return TokenRows(pipe, self.ids, self.rows, NoScales())  # the text encoder's weights: unchanged

    def denoiser(self, pipe) -> DeltaScales:
        unet = family_of(pipe).denoiser(pipe)
        # once per sampling call, in the model's dtype: the hooks then add without a cast
        deltas = {k: {n: d.to(unet.device, unet.dtype) for n, d in v.items()} for k, v in self.deltas.items()}
        return DeltaScales(trained_layers(unet), deltas)


def attach_custom_diffusion(pipe, files: Mapping[str, Path], embeddings: Mapping[str, Path]) -> DeltaBranchWeights:
    """Read every checkpoint's weights and token row (all checked before the pipeline changes),
    add the token with the full checkpoint's row, and return the per-branch weights."""
    if not supports_custom_diffusion(family_of(pipe)):
        raise CustomDiffusionError(f"Custom Diffusion cannot run on the {family_of(pipe).name} family: {NEEDS}")
    unet = family_of(pipe).denoiser(pipe)
    deltas = {name: read_deltas(unet, path) for name, path in files.items()}
    rows, tokens = {}, None
    for name, path in embeddings.items():
        got, rows[name] = read_embeddings(path, pipe)
        if tokens is not None and got != tokens:
            raise CustomDiffusionError(f"{path}: tokens {got} differ from the full checkpoint's {tokens}")
        tokens = got
    ids = add_tokens(pipe, tokens, rows[FULL])
    return DeltaBranchWeights(deltas, ids, rows)


# --- training ------------------------------------------------------------------------------


def spl(modifier_pooled: torch.Tensor, class_pooled: torch.Tensor) -> torch.Tensor:
    """ClassDiffusion's semantic preservation loss: 1 − cos(pooled "<new> class", pooled "class")
    per row, averaged."""
    return (1 - F.cosine_similarity(modifier_pooled.float(), class_pooled.float(), dim=-1)).mean()


def pooled(pipe, texts: list[str], grad: bool) -> torch.Tensor:
    """The text encoder's ``pooler_output`` (the final layer norm's state at the pooled position)."""
    tok = pipe.tokenizer(
        texts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    with torch.set_grad_enabled(grad):
        return pipe.text_encoder(tok.input_ids.to(pipe.text_encoder.device)).pooler_output


def rescale(image, size: int, latent_size: int, gen: torch.Generator, enabled: bool):
    """Custom Diffusion's rescale augmentation of one PIL image → ((3, R, R) in [-1, 1], (1, r, r)
    mask, prompt prefix); their ``preprocess`` and ``__getitem__``, drawn from ``gen``."""
    from PIL import Image

    def randint(low, high):  # [low, high)
        return int(torch.randint(low, high, (1,), generator=gen))

    scale = size
    if enabled:
        small = float(torch.rand((), generator=gen)) < 0.66
        scale = randint(size // 3, size + 1) if small else randint(int(1.2 * size), int(1.4 * size))
    factor = size // latent_size
    outer, inner = (scale, size) if scale > size else (size, scale)
    top, left = randint(0, outer - inner + 1), randint(0, outer - inner + 1)
    pixels = (
        np.asarray(image.convert("RGB").resize((scale, scale), resample=Image.BILINEAR), dtype=np.float32) / 127.5 - 1.0
    )
    mask = np.zeros((latent_size, latent_size), dtype=np.float32)
    if scale > size:
        canvas = pixels[top : top + inner, left : left + inner]
        mask[:] = 1.0
    else:
        canvas = np.zeros((size, size, 3), dtype=np.float32)
        canvas[top : top + inner, left : left + inner] = pixels
        mask[top // factor + 1 : (top + scale) // factor - 1, left // factor + 1 : (left + scale) // factor - 1] = 1.0
    prefix = ""
    if scale < 0.6 * size:
        prefix = ("a far away ", "very small ")[randint(0, 2)]
    elif scale > size:
        prefix = ("zoomed in ", "close up ")[randint(0, 2)]
    return torch.from_numpy(np.ascontiguousarray(canvas)).permute(2, 0, 1), torch.from_numpy(mask)[None], prefix


LOG_SCHEMA = {
    "step": pl.Int64,
    "loss": pl.Float64,  # instance_loss + spl_weight * spl
    "instance_loss": pl.Float64,  # the masked denoising MSE
    "spl": pl.Float64,  # the semantic preservation loss (before its weight)
    "lr": pl.Float64,
    "seconds": pl.Float64,
}


def train_classdiffusion(pipe, subject, out, config, seed: int = 0, progress: bool = True, overwrite: bool = False):
    """One ClassDiffusion run on ``pipe`` (left as it was): ``out/{full,weak}/`` each with the
    Custom Diffusion weights and the token's embedding, ``log.parquet``, ``config.json``."""
    from PIL import ImageOps

    from wig.personalization.training import run_config

    family = family_of(pipe)
    if not supports_custom_diffusion(family):
        raise WigError(f"classdiffusion cannot train the {family.name} family: {NEEDS}")
    if not subject.images:
        raise WigError("no instance images")
    unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
    class_noun = _class_noun(subject.prompt, config.modifier_token)
    gen = torch.Generator("cpu").manual_seed(seed)
    scheduler = family.noise_scheduler(pipe)
    device = unet.device
    latent_size = config.resolution // pipe.vae_scale_factor
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
    layers = trained_layers(unet)
    originals = {n: m.weight.detach().clone() for n, m in layers.items()}
    base = base_fingerprint(unet)
    # their script: tokenizer.encode([token]) on a list converts the string as one vocabulary entry
    init_id = pipe.tokenizer.convert_tokens_to_ids(config.initializer_token)
    if init_id is None or init_id == pipe.tokenizer.unk_token_id:
        raise WigError(f"initializer_token {config.initializer_token!r} is not an entry of the tokenizer's vocabulary")
    init_row = text_encoder.get_input_embeddings().weight[init_id].detach().float().clone()[None]

    stack = ExitStack()
    try:
        tokens = stack.enter_context(LearnedTokens(pipe, [config.modifier_token], gen, init=init_row))
        params = []
        for m in layers.values():
            m.weight.data = m.weight.data.float()
            m.weight.requires_grad_(True)
            params.append(m.weight)
        # trained tensors in fp32; a half-precision model runs its forward under autocast
        autocast = torch.autocast(device.type, dtype=unet.dtype, enabled=unet.dtype != torch.float32)
        lr = config.lr * config.batch_size  # their --scale_lr (1 process, no accumulation)
        optimizer = torch.optim.AdamW(params + [tokens.rows], lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        spl_texts = [f"a photo of a {config.modifier_token} {class_noun}", f"a photo of a {class_noun}"]
        class_pool = pooled(pipe, spl_texts[1:], grad=False)
        order: list[int] = []
        rows = []
        start = time.perf_counter()
        if config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        with atomic_dir(out, overwrite=overwrite) as tmp:
            for step in tqdm(range(1, config.steps + 1), desc="train", disable=not progress):
                pixels, masks, prompts = [], [], []
                for _ in range(config.batch_size):
                    if not order:
                        order = torch.randperm(len(subject.images), generator=gen).tolist()
                    image = subject.images[order.pop()]
                    if config.hflip and float(torch.rand((), generator=gen)) < 0.5:
                        image = ImageOps.mirror(image)
                    px, mask, prefix = rescale(image, config.resolution, latent_size, gen, config.rescale)
                    pixels.append(px)
                    masks.append(mask)
                    prompts.append(prefix + subject.prompt)
                with torch.no_grad():
                    dist = vae.encode(torch.stack(pixels).to(device, vae.dtype)).latent_dist
                    eps = torch.randn(dist.mean.shape, generator=gen).to(device)
                    latents = (dist.mean + dist.std * eps).float() * vae.config.scaling_factor
                noise = torch.randn(latents.shape, generator=gen).to(device)
                noisy, t, target = family.noised(scheduler, latents, noise, gen)
                with autocast:
                    text = family.encode(pipe, prompts, grad=True)
                    pred = family.predict(pipe, noisy.to(unet.dtype), t, Text(text.embeds.to(unet.dtype)))
                    spl_value = spl(pooled(pipe, spl_texts[:1], grad=True), class_pool)
                mask = torch.stack(masks).to(device)
                err = F.mse_loss(pred.float(), target.float(), reduction="none")
                # as their script: summed over the latent channels, averaged over the masked pixels
                instance = ((err * mask).sum([1, 2, 3]) / mask.sum([1, 2, 3])).mean()
                loss = instance + config.spl_weight * spl_value
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params + [tokens.rows], config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                rows.append(
                    {
                        "step": step,
                        "loss": loss.item(),
                        "instance_loss": instance.item(),
                        "spl": spl_value.item(),
                        "lr": lr,
                        "seconds": time.perf_counter() - start,
                    }
                )
                if step == config.weak_step:
                    _save(unet, tokens, tmp / "weak", base)
                if step in config.checkpoints:
                    _save(unet, tokens, config.checkpoint_steps(tmp)[step], base)
            _save(unet, tokens, tmp / "full", base)
            log = pl.DataFrame(rows, schema=LOG_SCHEMA)
            log.write_parquet(tmp / "log.parquet")
            (tmp / "config.json").write_text(run_config(config, subject, seed, prior=False))
    finally:
        stack.close()
        if config.gradient_checkpointing:
            unet.disable_gradient_checkpointing()
        for name, m in layers.items():
            m.weight.requires_grad_(False)
            m.weight.data = originals[name]
        unet.eval()
    return log


def _save(unet, tokens, folder: Path, base: str) -> None:
    from wig.personalization.methods.classdiffusion import CUSTOM_DIFFUSION_WEIGHT_NAME

    save_custom_diffusion(unet, folder / CUSTOM_DIFFUSION_WEIGHT_NAME, base)
    tokens.save(folder / EMBEDDINGS_NAME, key=tokens.tokens[0])


def _class_noun(prompt: str, token: str) -> str:
    """The class noun after the token in the instance prompt ("a photo of <new1> dog" → "dog")."""
    _, found, rest = prompt.partition(token)
    if not found or not rest.strip():
        raise WigError(f"the instance prompt {prompt!r} must name the subject as '{token} <class noun>'")
    return rest.strip()
