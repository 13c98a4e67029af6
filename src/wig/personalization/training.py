"""DreamBooth-LoRA with prior preservation; one run writes a full and a weak checkpoint.

The recipe of diffusers' ``train_dreambooth_lora.py`` / ``train_dreambooth_lora_sana.py`` and the
paper: LoRA (rank 4) on the denoiser's attention projections (the family's targets: SD's UNet
to_q/to_k/to_v/to_out.0, SANA's transformer to_q/to_k/to_v), AdamW (lr 1e-4), constant
schedule, batch 1 instance image (+ 1 class image with prior preservation, loss = instance +
w · prior). The family fixes the noising and target (`wig.models.families`): SD a DDPM schedule with
the checkpoint's betas, ε or v target; SANA rectified flow at a uniform step of the
FlowMatchEuler training schedule, target ε − x0. SANA prompts are encoded as its pipeline
encodes them when sampling (with the complex human instruction; diffusers' script leaves it
off by default), so the LoRA learns the condition it is sampled with.

Everything random is drawn from one seeded CPU generator (data order, latent samples, noise,
timesteps; LoRA init from the global seed), so a run is reproducible on the CPU bit for bit.
The frozen parts are evaluated once: text embeddings of the two prompts and the VAE's latent
distribution of every image (sampling it each step is what encoding each step would give).
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, Sequence

import polars as pl
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from wig.atomic import atomic_dir
from wig.branches import FULL
from wig.concepts import save_png
from wig.errors import WigError
from wig.models.families import Text, family_of
from wig.personalization.lora import RoutedLora, save_lora

if TYPE_CHECKING:
    from wig.personalization.base import Subject, TrainingExtension

ADAPTER = "wig_train"


def pixel_tensor(images, resolution: int) -> torch.Tensor:
    """Images → (N, 3, R, R) in [-1, 1]: shorter side resized to R (bilinear), centre crop."""
    from torchvision.transforms import v2

    transform = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(resolution, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
            v2.CenterCrop(resolution),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5], [0.5]),
        ]
    )
    return torch.stack([transform(im) for im in images])


class _Data:
    """Instance (and class) latent distributions, drawn in a seeded order, epoch by epoch, with each
    image's own conditions where the family has them (`Family.image_conditions`: SDXL's size/crop ids)."""

    def __init__(self, family, vae, images, resolution: int, gen: torch.Generator):
        self.mean, self.std = family.latent_dist(vae, pixel_tensor(images, resolution))
        self.conditions = family.image_conditions(images, resolution)
        self.gen = gen
        self.order: list[int] = []
        self.last: int | None = None  # the image of the last draw

    def draw(self) -> torch.Tensor:
        if not self.order:
            self.order = torch.randperm(len(self.mean), generator=self.gen).tolist()
        i = self.last = self.order.pop()
        eps = torch.randn(self.mean[i].shape, generator=self.gen)
        return (self.mean[i] + self.std[i] * eps.to(self.mean.device)).unsqueeze(0)

    def last_conditions(self) -> torch.Tensor | None:
        return None if self.conditions is None else self.conditions[self.last : self.last + 1]


def train_lora(
    pipe,
    subject: Subject,
    out: str | os.PathLike,
    config: Any,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    extensions: Sequence[TrainingExtension] = (),
):
    """Train a DreamBooth LoRA on ``pipe``'s denoiser; write ``out/{full,weak}/``,
    ``out/log.parquet`` and ``out/config.json`` (the settings, the prompts and the seed).

    ``config``: the method's settings (`wig.personalization.methods.db_lora.DreamBoothLoRA`'s fields:
    rank, lr, steps, weak_step, prior_weight, …). ``pipe`` is a loaded (base) pipeline; it is
    left as it was (without the training adapter, and without whatever ``extensions`` added).
    Prior preservation runs when the subject has class images and ``prior_weight`` > 0.
    ``extensions`` add to the loop without a branch in it (`TrainingExtension`: textual
    inversion's pivot, `wig.personalization.methods.db_lora_ti.Pivot`, trains new token embeddings
    beside the LoRA and writes them beside each checkpoint's LoRA).
    Returns the training log as a polars DataFrame.
    """
    (log,) = train_loras(
        pipe, [subject], [out], config, [seed], progress=progress, overwrite=overwrite, extensions=extensions
    )
    return log


def train_loras(
    pipe,
    subjects: Sequence[Subject],
    outs: Sequence[str | os.PathLike],
    config: Any,
    seeds: Sequence[int],
    progress: bool = True,
    overwrite: bool = False,
    extensions: Sequence[TrainingExtension] = (),
) -> list[pl.DataFrame]:
    """`train_lora` for K subjects in one forward per step: subject k trains its own adapter,
    every sample of the batch goes through its own subject's adapter alone (a per-sample scale of
    1 on its adapter, 0 on the others, as the sampler scales branches), the loss is the sum of the
    subjects' losses, and clipping (per subject's parameters) and AdamW (elementwise) act per
    subject — so each subject's run is the run it would be alone, up to float summation order in
    the batched forward. Subject k's seed alone draws its data order, noise, timesteps and LoRA
    init, so its LoRA does not depend on its batch mates. Each ``outs[k]`` is the run folder
    `train_lora` writes; all appear together or none does (a failure leaves no subject's run).
    Returns the K training logs. ``extensions`` (textual inversion) train one subject at a time."""
    from accelerate import Accelerator
    from peft import LoraConfig

    k_subjects = len(subjects)
    if not (k_subjects == len(outs) == len(seeds)) or k_subjects == 0:
        raise WigError(f"one output folder and one seed per subject: {k_subjects} subjects, {len(outs)}, {len(seeds)}")
    if extensions and k_subjects > 1:
        raise WigError("training extensions (textual inversion) train one subject per job")
    priors = []
    for subject in subjects:
        prior = subject.class_images is not None and config.prior_weight > 0
        if prior and not subject.class_prompt:
            raise WigError("prior preservation needs a class prompt")
        if not subject.images:
            raise WigError("no instance images")
        priors.append(prior)
    family = family_of(pipe)
    model, vae = family.denoiser(pipe), pipe.vae
    if config.mixed_precision != "no" and model.device.type != "cuda":
        raise WigError(f"mixed precision {config.mixed_precision} needs a CUDA device, the model is on {model.device}")

    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=model.device.type == "cpu")
    device = accelerator.device
    noise_scheduler = family.noise_scheduler(pipe)
    gens = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    for module in (model, vae, *family.text_encoders(pipe)):
        module.requires_grad_(False)
    scaling = vae.config.scaling_factor
    adapters = [ADAPTER] if k_subjects == 1 else [f"{ADAPTER}{k}" for k in range(k_subjects)]

    data = []
    for subject, prior, gen in zip(subjects, priors, gens):
        inst = _Data(family, vae, subject.images, config.resolution, gen)
        cls = _Data(family, vae, subject.class_images, config.resolution, gen) if prior else None
        data.append((inst, cls))
    stack = ExitStack()  # what the run added to the pipeline, undone whatever happens
    try:
        for extension in extensions:  # before the first encoding: an extension may change the text
            extension.enter(pipe, gens[0], stack)
        class_texts = [family.encode(pipe, [s.class_prompt]) if p else None for s, p in zip(subjects, priors)]

        def encode_texts(grad: bool) -> Text:
            parts = []
            for subject, class_text in zip(subjects, class_texts):
                parts.append(family.encode(pipe, [subject.prompt], grad=grad))
                if class_text is not None:
                    parts.append(class_text)
            return Text.cat(parts)

        text = encode_texts(grad=False)
        for adapter, seed in zip(adapters, seeds):
            torch.manual_seed(seed)  # LoRA init (PEFT draws lora_A from the global generator)
            model.add_adapter(
                LoraConfig(
                    r=config.rank,
                    lora_alpha=config.rank,
                    init_lora_weights="gaussian",
                    target_modules=list(family.lora_targets),
                ),
                adapter_name=adapter,
            )
        if k_subjects > 1:
            model.set_adapters(adapters)  # all active and trainable; `RoutedLora` runs each on its samples
        if config.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        subject_params = [_adapter_params(model, adapter) for adapter in adapters]
        for params in subject_params:
            for p in params:  # trainable LoRA weights in fp32 even when the frozen model is fp16
                p.data = p.data.float()
        groups = [{"params": params} for params in subject_params]
        for extension in extensions:
            for group in extension.param_groups():
                groups.append(group)
                subject_params[0] = subject_params[0] + list(
                    group["params"]
                )  # clipped together, as the advanced script does
        optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8, fused=True)
        # one device per job: accelerate brings autocast, the fp16 grad scaler and unscaled clipping;
        # the model stays unwrapped (prepare() would patch its forward for the rest of the process)
        optimizer = accelerator.prepare(optimizer)
        model.to(device).train()
        # the batch: subject by subject, its instance sample then (with prior preservation) its class sample
        owner = [k for k, prior in enumerate(priors) for _ in range(2 if prior else 1)]
        if k_subjects > 1:  # each sample through its own subject's adapter alone
            routed = RoutedLora(model, {FULL: adapters})
            routed.set(owner)
            stack.enter_context(routed)

        rows: list[list[dict]] = [[] for _ in subjects]
        text_trained = False  # whether the prompt's last encoding holds the graph of trained parameters
        start = time.perf_counter()
        with ExitStack() as folders:
            tmps = [folders.enter_context(atomic_dir(out, overwrite=overwrite)) for out in outs]
            for step in tqdm(range(1, config.steps + 1), desc="train", disable=not progress):
                text_trains = any(extension.text_trains(step) for extension in extensions)
                if text_trains or text_trained:  # encoded again: with the graph while it trains, once when it stops
                    text = encode_texts(grad=text_trains)
                text_trained = text_trains
                noisy, ts, targets, conditions = [], [], [], []
                for (inst, cls), gen in zip(data, gens):  # each subject's draws from its own generator
                    latents, cond = inst.draw(), inst.last_conditions()
                    if cls is not None:
                        latents = torch.cat([latents, cls.draw()])
                        cond = None if cond is None else torch.cat([cond, cls.last_conditions()])
                    latents = (latents * scaling).to(device)
                    noise = torch.randn(latents.shape, generator=gen).to(device)
                    x, t, target = family.noised(noise_scheduler, latents, noise, gen)
                    noisy.append(x)
                    ts.append(t)
                    targets.append(target)
                    conditions.append(cond)
                noisy, t, target = torch.cat(noisy), torch.cat(ts), torch.cat(targets)
                with accelerator.autocast():
                    step_text = text
                    if conditions[0] is not None:
                        step_text = family.with_image_conditions(text, torch.cat(conditions))
                    pred = family.predict(pipe, noisy.to(model.dtype), t, step_text)
                losses = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
                subject_losses, first = [], 0
                for prior in priors:
                    loss = losses[first] + (config.prior_weight * losses[first + 1] if prior else 0.0)
                    subject_losses.append(loss)
                    first += 2 if prior else 1
                accelerator.backward(sum(subject_losses) if k_subjects > 1 else subject_losses[0])
                for params in subject_params:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                for extension in extensions:
                    extension.after_step(step)
                values = losses.detach().tolist()
                seconds = time.perf_counter() - start
                first = 0
                for k, prior in enumerate(priors):
                    rows[k].append(
                        {
                            "step": step,
                            "loss": subject_losses[k].item(),
                            "instance_loss": values[first],
                            "prior_loss": values[first + 1] if prior else None,
                            "lr": optimizer.param_groups[k]["lr"],
                            "seconds": seconds,
                        }
                    )
                    first += 2 if prior else 1
                for adapter, tmp in zip(adapters, tmps):
                    if step == config.weak_step:
                        _save(pipe, adapter, tmp / "weak", extensions)
                    if step in config.checkpoints:
                        _save(pipe, adapter, config.checkpoint_steps(tmp)[step], extensions)
            logs = []
            for adapter, tmp, subject, seed, prior, subject_rows in zip(adapters, tmps, subjects, seeds, priors, rows):
                _save(pipe, adapter, tmp / "full", extensions)
                log = pl.DataFrame(subject_rows, schema=LOG_SCHEMA)
                log.write_parquet(tmp / "log.parquet")
                (tmp / "config.json").write_text(run_config(config, subject, seed, prior))
                logs.append(log)
    finally:
        stack.close()
        for adapter in adapters:
            if adapter in getattr(model, "peft_config", {}):
                model.delete_adapters(adapter)
        if config.gradient_checkpointing:
            model.disable_gradient_checkpointing()
        model.eval()
    return logs


def _adapter_params(model, adapter: str) -> list[torch.nn.Parameter]:
    """The trainable parameters of one LoRA adapter (PEFT names them ``….lora_A.<adapter>.weight``)."""
    params = [p for name, p in model.named_parameters() if f".{adapter}." in name and p.requires_grad]
    if not params:
        raise WigError(f"adapter {adapter} has no trainable parameters")
    return params


def _save(pipe, adapter: str, folder, extensions) -> None:
    save_lora(pipe, adapter, folder)
    for extension in extensions:
        extension.save(folder)


def run_config(method, subject: Subject, seed: int, prior: bool) -> str:
    """A run's ``config.json``: the method and its settings as the run used them, the prompts and
    the seed. Without prior preservation (no class images given) ``prior_weight`` is recorded as 0:
    no prior loss was computed, whatever the setting said."""
    import json

    settings = method.settings()
    if not prior and "prior_weight" in settings:
        settings["prior_weight"] = 0.0
    prompts = {"instance_prompt": subject.prompt, "class_prompt": subject.class_prompt if prior else None}
    return json.dumps({**settings, **prompts, "seed": seed}, indent=2, sort_keys=True)


LOG_SCHEMA = {
    "step": pl.Int64,
    "loss": pl.Float64,  # instance_loss + prior_weight * prior_loss
    "instance_loss": pl.Float64,
    "prior_loss": pl.Float64,  # null without prior preservation
    "lr": pl.Float64,
    "seconds": pl.Float64,  # wall time since the first step
}


@torch.no_grad()
def denoising_loss(pipe, images, prompt: str, resolution: int, n: int = 16, seed: int = 1234) -> float:
    """Mean training-objective MSE (ε/v or flow target, as the family trains) of ``pipe`` on
    ``images`` over ``n`` fixed (timestep, noise) draws per image: measured the same way before
    and after training."""
    family = family_of(pipe)
    scheduler = family.noise_scheduler(pipe)
    gen = torch.Generator("cpu").manual_seed(seed)
    model = family.denoiser(pipe)
    device = model.device
    mean, std = family.latent_dist(pipe.vae, pixel_tensor(images, resolution))
    conditions = family.image_conditions(images, resolution)
    text = Text.cat([family.encode(pipe, [prompt])] * n)
    total = 0.0
    for i in range(len(mean)):
        eps = torch.randn((n, *mean[i].shape), generator=gen).to(device)
        latents = (mean[i] + std[i] * eps) * pipe.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=gen).to(device)
        noisy, t, target = family.noised(scheduler, latents, noise, gen)
        image_text = text if conditions is None else family.with_image_conditions(text, conditions[[i] * n])
        pred = family.predict(pipe, noisy.to(model.dtype), t, image_text)
        total += F.mse_loss(pred.float(), target.float()).item()
    return total / len(mean)


def generate_class_images(
    pipe,
    prompt: str,
    count: int,
    out: str | os.PathLike,
    seed: int = 0,
    steps: int = 50,
    scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    batch_size: int = 4,
    negative_prompt: str = "",
    progress: bool = True,
    overwrite: bool = False,
):
    """Prior-preservation images of a class with the base model: ``NNNN.png`` + manifest.

    Sampled by the stock pipeline call (as diffusers' DreamBooth script does), so the guidance
    code under study never feeds back into training. Image i is what ``wig generate --method cfg
    --seed <seed + i>`` gives.
    """
    if count < 1:
        raise WigError(f"count must be ≥ 1, got {count}")
    extra = family_of(pipe).stock_call
    # SDXL: an empty negative is the zero condition, as in wig's sampler (`wig.models.families.SDXL`)
    zeros = negative_prompt == "" and getattr(pipe.config, "force_zeros_for_empty_prompt", False)
    rows = []
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for first in tqdm(range(0, count, batch_size), desc="class images", disable=not progress):
            seeds = list(range(seed + first, seed + min(count, first + batch_size)))
            images = pipe(
                [prompt] * len(seeds),
                negative_prompt=None if zeros else [negative_prompt] * len(seeds),
                guidance_scale=scale,
                num_inference_steps=steps,
                height=height,
                width=width,
                generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                **extra,
            ).images
            for s, image in zip(seeds, images):
                name = f"{s - seed:04d}.png"
                rows.append({"path": name, "prompt": prompt, "seed": s, "sha256": save_png(image, tmp / name)})
        pl.DataFrame(
            rows, schema={"path": pl.String, "prompt": pl.String, "seed": pl.Int64, "sha256": pl.String}
        ).write_parquet(tmp / "manifest.parquet")
