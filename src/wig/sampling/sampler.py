"""The guidance sampler: every branch of a step in ONE batched forward.

For P images and K branches the batch is branch-major, ``[branch 0 × P, branch 1 × P, …]``,
the layout stock diffusers uses for CFG (``[uncond × P, cond × P]``), so `cfg` reproduces
``StableDiffusionPipeline.__call__`` and ``SanaPipeline.__call__`` operation for operation (the
family-specific calls live in `wig.models.families`). Branches differ only in the coefficients
of the attached checkpoints, which a personalization method realises per sample
(`wig.branches.BranchWeights`; for a LoRA, per-sample adapter scales,
`wig.personalization.lora.LoraBranchWeights`): no second UNet or transformer is held in memory.

Usable from plain diffusers code::

    pipe = StableDiffusionPipeline.from_pretrained(...)
    pipe.load_lora_weights(path, adapter_name="full")
    images = sample(pipe, ["a sks dog on the beach"], Guidance("pg", scale=7.5, omega=0.0),
                    generators=[torch.Generator("cpu").manual_seed(0)])
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import torch
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from wig.branches import FULL, WEAK, BranchWeights, adapter_step, scales_of
from wig.errors import WigError
from wig.guidance import NEGATIVE, PROMPT, RESULT, GuidanceMethod
from wig.models.families import NonFiniteError, Text, check_finite, check_options, family_of
from wig.personalization.lora import LoraBranchWeights


class SamplingError(WigError):
    """A request the sampler cannot honour (method needs a LoRA, scheduler lacks DDIM, …)."""


@dataclass
class Request:
    prompts: list[str]
    generators: list[torch.Generator]
    negative_prompt: str = ""
    steps: int = 50
    height: int | None = None
    width: int | None = None
    eta: float = 0.0
    text_options: dict = field(default_factory=dict)  # family text settings (SANA: max_sequence_length, …)
    # per sample, the extra texts a method's branches name (`GuidanceMethod.extra_texts`)
    extra_texts: dict = field(default_factory=dict)
    # per sample, the image to edit, for families that take one (InstructPix2Pix); it sets the size
    images: list | None = None


def _check(pipe, guidance: GuidanceMethod, request: Request, weights: BranchWeights) -> None:
    if len(request.prompts) != len(request.generators):
        raise SamplingError(
            f"{len(request.prompts)} prompts but {len(request.generators)} generators: one generator per image"
        )
    if request.steps < 1:
        raise SamplingError(f"steps must be ≥ 1, got {request.steps}")
    loaded = weights.attached(pipe)
    what = {FULL: "a fine-tune (LoRA or full weights)", WEAK: "the weak (early) checkpoint"}
    flags = {FULL: "--lora, --denoiser or --run", WEAK: "--weak-lora, or --run of a trained method"}
    missing = sorted(guidance.required_adapters() - loaded)
    if missing:
        adapter = missing[0]
        if (step := adapter_step(adapter)) is not None:
            what[adapter] = f"the run's checkpoint at step {step}"
            flags[adapter] = f"a run that kept it (checkpoints: [{step}]), attached with attach_steps"
        raise SamplingError(
            f"method {guidance.method} needs {what.get(adapter, 'a checkpoint')} loaded as adapter {adapter!r} "
            f"({flags.get(adapter, 'attach it')})"
        )
    for name in guidance.extra_texts:
        if len(request.extra_texts.get(name, ())) != len(request.prompts):
            raise SamplingError(
                f"{guidance.method} needs the extra text {name!r} for each of the {len(request.prompts)} prompts"
            )
    if guidance.companions and request.eta != 0:
        raise SamplingError(
            f"{guidance.method} samples its trajectories from shared noise and needs a deterministic sampler (eta 0)"
        )
    if guidance.requires_ddim and type(pipe.scheduler).__name__ != "DDIMScheduler":
        raise SamplingError(
            f"{guidance.method} re-noises a DDIM step and needs a DDIMScheduler, got {type(pipe.scheduler).__name__}"
        )
    family = family_of(pipe)
    if family.image_input and len(request.images or ()) != len(request.prompts):
        raise SamplingError(f"a {family.name} pipeline edits an image: give one image per prompt (images=...)")
    if not family.image_input and request.images is not None:
        raise SamplingError(f"a {family.name} pipeline takes no input image")
    if guidance.requires_image and not family.image_input:
        raise SamplingError(
            f"{guidance.method} guides an image edit: it needs an InstructPix2Pix pipeline, not {family.name}"
        )
    try:
        check_options(family_of(pipe), request.text_options)
    except WigError as err:
        raise SamplingError(str(err)) from None
    step = family_of(pipe).size_step(pipe)
    for name in ("height", "width"):
        size = getattr(request, name)
        if size is not None and (size < step or size % step):
            nearest = sorted({max(step, size // step * step), max(step, -(-size // step) * step)})
            raise SamplingError(
                f"{name} {size} is not a positive multiple of {step}, this model's size step "
                f"(its latent stride × patch): use {' or '.join(map(str, nearest))}"
            )


def _ddim_pp_step(scheduler, guided: torch.Tensor, renoise: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM update with x̂0 from ``guided`` and re-noising with ``renoise``.

    Same timestep arithmetic as ``DDIMScheduler.step`` (η = 0); the only change is which
    prediction supplies the noise direction (CFG++, Chung et al. 2024, Alg. 1).
    """
    cfg = scheduler.config
    prev_t = t - cfg.num_train_timesteps // scheduler.num_inference_steps
    a_t = scheduler.alphas_cumprod[t]
    a_prev = scheduler.alphas_cumprod[prev_t] if prev_t >= 0 else scheduler.final_alpha_cumprod
    x0, _ = _x0_eps(guided, x, a_t, cfg.prediction_type)
    _, eps = _x0_eps(renoise, x, a_t, cfg.prediction_type)
    if cfg.clip_sample:
        x0 = x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
    return a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps


def _x0_eps(pred: torch.Tensor, x: torch.Tensor, a_t, prediction_type: str):
    if prediction_type == "epsilon":
        return (x - (1 - a_t) ** 0.5 * pred) / a_t**0.5, pred
    if prediction_type == "v_prediction":
        return a_t**0.5 * x - (1 - a_t) ** 0.5 * pred, a_t**0.5 * pred + (1 - a_t) ** 0.5 * x
    if prediction_type == "sample":
        return pred, (x - a_t**0.5 * pred) / (1 - a_t) ** 0.5
    raise SamplingError(f"unsupported prediction type {prediction_type!r}")


def sample_latents(
    pipe, guidance: GuidanceMethod, request: Request, progress: bool = True, weights: BranchWeights | None = None
) -> torch.Tensor:
    """Run the guided reverse process; returns the final latents (P, C, h, w).

    ``weights`` realises each branch's checkpoint coefficients (what the personalization
    method's ``attach`` returned; default: the pipeline's LoRA adapters, which it leaves active
    at weight 1 — per-branch scales are applied inside).
    """
    return sample_trajectories(pipe, guidance, request, progress=progress, weights=weights)[RESULT]


@torch.no_grad()
def sample_trajectories(
    pipe, guidance: GuidanceMethod, request: Request, progress: bool = True, weights: BranchWeights | None = None
) -> dict[str, torch.Tensor]:
    """`sample_latents` with the final latents of the method's companion trajectories too (by name;
    the result under `RESULT`)."""
    weights = weights or LoraBranchWeights()
    _check(pipe, guidance, request, weights)
    family = family_of(pipe)
    model, scheduler = family.denoiser(pipe), pipe.scheduler
    weights.prepare(pipe)
    device = model.device
    branches = guidance.branches()
    n = len(request.prompts)
    default = model.config.sample_size * pipe.vae_scale_factor
    height = default if request.height is None else request.height
    width = default if request.width is None else request.width
    image_latents = family.image_latents(pipe, request.images) if family.image_input else None
    if image_latents is not None:  # the stock pipeline draws at the input image's size
        size = tuple(side * pipe.vae_scale_factor for side in image_latents.shape[-2:])
        if (request.height or size[0], request.width or size[1]) != size:
            raise SamplingError(f"an edit has its input image's size {size[1]}×{size[0]}: give no height/width")
        height, width = size

    with weights.text_encoder(pipe) as text_scales:
        # one encoder pass per distinct text condition (and per weight set if the fine-tune changes the text encoder)
        cache: dict = {}
        parts = []
        for b in branches:
            key = (b.text, tuple(sorted(b.scales.items())) if text_scales.has_effect else None)
            key += (b.image,) if image_latents is not None else ()
            if key not in cache:
                if b.text == PROMPT:
                    texts = request.prompts
                elif b.text == NEGATIVE:
                    texts = [request.negative_prompt] * n
                else:
                    texts = list(request.extra_texts[b.text])
                # the branch's weights matter only when the fine-tune changes the text encoder
                text_scales.set(scales_of([b], n, family.text_encoders(pipe)[0].device))
                cache[key] = family.encode(pipe, texts, cond=b.text != NEGATIVE, **request.text_options)
                if image_latents is not None:
                    cache[key].image = image_latents if b.image else torch.zeros_like(image_latents)
            parts.append(cache[key])
    text = Text.cat(parts)

    scheduler.set_timesteps(request.steps, device=device)
    channels = pipe.vae.config.latent_channels if family.image_input else model.config.in_channels
    shape = (n, channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    latents = randn_tensor(shape, generator=request.generators, device=device, dtype=family.latent_dtype(pipe, text))
    latents = latents * scheduler.init_noise_sigma
    step_kwargs = {}
    step_params = set(inspect.signature(scheduler.step).parameters)
    if "eta" in step_params:
        step_kwargs["eta"] = request.eta
    if "generator" in step_params:
        step_kwargs["generator"] = request.generators

    final = _loop(pipe, guidance, request, weights, parts, latents, step_kwargs, progress)
    for latents in final.values():
        try:
            check_finite(latents, "final latents")
        except NonFiniteError as err:
            raise _diverged(err, request) from None
    return final


def _loop(pipe, guidance, request, weights, parts, noise, step_kwargs, progress) -> dict[str, torch.Tensor]:
    """The reverse process: the result and the method's companion trajectories (DreamBlend's
    reference; most methods have none) from the same initial noise. Per step, each trajectory's
    branches run as one batched forward, branch-major, so a trajectory whose latent is not steered
    is that of a one-trajectory method with the same branches, bit for bit. A method that `guides`
    a step gets the companions' cross-attention maps of the step (recorded by `_MapRecorder`, the
    loop's one hook) and moves the result's latent before its forward (`guide_latent`). All
    trajectories step together through the scheduler (elementwise per sample); a method whose
    re-noising prediction differs from its guided one (CFG++) takes the DDIM++ update."""
    family, scheduler = family_of(pipe), pipe.scheduler
    model, device = family.denoiser(pipe), noise.device
    branches = guidance.branches()
    n = len(request.prompts)
    names = [*guidance.companions, RESULT]
    members = {name: [j for j, b in enumerate(branches) if b.trajectory == name] for name in names}
    for name, js in members.items():
        if not js:
            raise SamplingError(f"{guidance.method}: no branch denoises its trajectory {name!r}")
    texts = {name: Text.cat([parts[j] for j in js]) for name, js in members.items()}
    scales = {name: scales_of([branches[j] for j in js], n, device) for name, js in members.items()}
    latents = {name: noise for name in names}
    if "generator" in step_kwargs and len(names) > 1:  # one generator per sample of the stacked trajectories
        step_kwargs = {**step_kwargs, "generator": list(request.generators) * len(names)}

    with weights.denoiser(pipe) as model_scales, _MapRecorder(model, guidance) as recorder:

        def forward(x, t, branch_ids, scale_set, text):
            k = len(branch_ids)
            x_in = scheduler.scale_model_input(torch.cat([x] * k) if k > 1 else x, t)
            if len(names) > 1 or scale_set is not scales[RESULT]:  # one trajectory: its scales stay set
                model_scales.set(scale_set)
            return model_scales.predict(family, pipe, x_in, t, text)

        model_scales.set(scales[RESULT])
        for i, t in enumerate(tqdm(scheduler.timesteps, desc=f"{guidance.method}", disable=not progress, leave=False)):
            time = float(t) / scheduler.config.num_train_timesteps
            guiding = recorder.guides(i, time)
            outs, maps = {}, {}
            for name in names:
                js = members[name]
                if name == RESULT and guiding:

                    def maps_of(x, branch_id, t=t):
                        with recorder.recording(), torch.enable_grad():
                            forward(x, t, [branch_id], scales_of([branches[branch_id]], n, device), parts[branch_id])
                        return recorder.maps()

                    latents[RESULT] = guidance.guide_latent(latents[RESULT], maps, maps_of, step=i, time=time)
                with recorder.recording(guiding and name != RESULT):
                    outs[name] = forward(latents[name], t, js, scales[name], texts[name]).chunk(len(js))
                if guiding and name != RESULT:
                    maps[name] = recorder.maps_by_branch(js)
            if guidance.companions:
                guided = guidance.combine_trajectories(outs, step=i, time=time)
                renoise = guided
            else:
                result, again = guidance.combine(outs[RESULT], step=i, time=time)
                guided, renoise = {RESULT: result}, {RESULT: again}
            if any(renoise[name] is not guided[name] for name in names):  # CFG++: x̂0 from one, ε from the other
                latents = {
                    name: _ddim_pp_step(scheduler, guided[name], renoise[name], t, latents[name]) for name in names
                }
                continue
            if len(names) == 1:
                latents = {
                    RESULT: scheduler.step(guided[RESULT], t, latents[RESULT], **step_kwargs, return_dict=False)[0]
                }
                continue
            stacked = scheduler.step(
                torch.cat([guided[name] for name in names]),
                t,
                torch.cat([latents[name] for name in names]),
                **step_kwargs,
                return_dict=False,
            )[0]
            latents = dict(zip(names, stacked.chunk(len(names))))
    return latents


class _MapRecorder:
    """The sampling loop's hook for methods that steer a latent by cross-attention (DreamBlend):
    while open, the denoiser's cross-attention maps are captured (`wig.models.attention`) during
    the forwards run under `recording`. For a method that never `guides`, it does nothing and
    touches nothing (the attention processors stay the stock ones)."""

    def __init__(self, model, guidance: GuidanceMethod):
        self.model, self.guidance = model, guidance
        self.active = bool(guidance.companions)
        self.store = None

    def __enter__(self):
        if self.active:
            from wig.models.attention import capture_cross_attention

            self._context = capture_cross_attention(self.model)
            self.store = self._context.__enter__()
        return self

    def __exit__(self, *exc):
        if self.store is not None:
            return self._context.__exit__(*exc)
        return False

    def guides(self, step: int, time: float) -> bool:
        return self.active and self.guidance.guides(step, time)

    @contextmanager
    def recording(self, on: bool = True):
        """Record the maps of the forwards inside (cleared first), if ``on``."""
        if self.store is None or not on:
            yield
            return
        self.store.clear()
        self.store.recording = True
        try:
            yield
        finally:
            self.store.recording = False

    def maps(self) -> dict:
        return dict(self.store.maps)

    def maps_by_branch(self, branch_ids) -> dict:
        """The last recorded forward's maps split per branch (its batch is branch-major)."""
        k = len(branch_ids)
        return {j: {layer: m.chunk(k)[pos] for layer, m in self.store.maps.items()} for pos, j in enumerate(branch_ids)}


def _diverged(err: NonFiniteError, request: Request) -> SamplingError:
    """A non-finite sample, named by its seed (the generator's): a NaN/inf LoRA or an extreme
    scale makes an all-black PNG that must never be scored as a result."""
    seeds = [request.generators[i].initial_seed() for i in err.indices]
    return SamplingError(
        f"non-finite values (NaN/inf) in the {err.what} of seed(s) {seeds}: the sample "
        "diverged (a LoRA holding NaN/inf, or an extreme guidance scale?)"
    )


@torch.no_grad()
def decode(pipe, latents: torch.Tensor, output_type: str = "pil"):
    """Latents → images exactly as the stock pipeline post-processes them."""
    return family_of(pipe).decode(pipe, latents, output_type)


def sample(
    pipe,
    prompts: Sequence[str],
    guidance: GuidanceMethod,
    generators: Sequence[torch.Generator],
    progress: bool = True,
    output_type: str = "pil",
    weights: BranchWeights | None = None,
    trajectories: bool = False,
    **kwargs,
):
    """Guided images for ``prompts``, one generator per image. ``weights``: see `sample_latents`;
    ``trajectories``: return every trajectory's images by name (`sample_trajectories`: the
    result under `RESULT`, and a method's companions, e.g. DreamBlend's reference);
    ``kwargs``: see `Request`."""
    request = Request(prompts=list(prompts), generators=list(generators), **kwargs)
    latents = sample_trajectories(pipe, guidance, request, progress=progress, weights=weights)
    try:
        images = {name: decode(pipe, x, output_type) for name, x in latents.items()}
    except NonFiniteError as err:
        raise _diverged(err, request) from None
    return images if trajectories else images[RESULT]
