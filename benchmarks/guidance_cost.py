"""What guidance costs: PG/CFG, AG/CFG, SAG/CFG and DreamBlend/CFG wall time and peak memory, ours vs
stock diffusers.

Every ratio is measured in this one run, on the same model, batch, resolution and steps;
variants are interleaved over the repeats and the median is reported, so slow drift of the
machine hits all of them alike.

    python benchmarks/guidance_cost.py                       # tiny SD twin, CPU
    python benchmarks/guidance_cost.py --family sana         # tiny SANA twin, CPU
    python benchmarks/guidance_cost.py --family sdxl         # tiny SDXL twin, CPU
    python benchmarks/guidance_cost.py --personalization db-lora-ti      # PG/CFG, SAG/CFG with TI
    python benchmarks/guidance_cost.py --personalization classdiffusion  # ... with ClassDiffusion
    python benchmarks/guidance_cost.py --finetune full       # a full fine-tune (DPO's case): θ' beside θ
    python benchmarks/guidance_cost.py --config benchmarks/sd15_arch.json --height 512 \
        --width 512 --steps 20 --batch 4 --device cuda --dtype float16   # SD 1.5 scale, GPU

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` per variant; on the CPU torch keeps
no such counter, so each variant runs once more in a fresh process and its peak RSS
(``ru_maxrss``, model included) is compared.

DreamBlend runs two CFG trajectories (the underfit checkpoint's reference, the overfit one's
result: a random weak LoRA and the random full one here) and, while t ≥ ``until`` (0.5: half the
steps), a gradient pass of the result's prompt branch through the denoiser: ``dreamblend_e0``
(strength 0) is the two trajectories alone, ``dreamblend`` adds the guidance.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from wig.guidance import Guidance
from wig.models.families import build_tiny, default_config, family_of, tiny_kinds
from wig.models.families.sd import SD
from wig.models.pipelines import load_pipeline
from wig.personalization.lora import attach_loras, random_lora
from wig.sampling.sampler import Request, decode, sample_latents

SCALE = {"sd": 7.5, "sana": 4.5, "sdxl": 5.0}  # each family's usual CFG λ (SDXL: its pipeline's default)


def _variants(scale):
    return {
        "cfg": Guidance("cfg", scale),
        "pg": Guidance("pg", scale, omega=0.5),
        "ag": Guidance("ag", scale, ag_scale=2.0),
        "sag": Guidance("sag", scale),
        "dreamblend_e0": Guidance("dreamblend", scale),
        "dreamblend": Guidance("dreamblend", scale, strength=0.5, until=0.5),
    }


PROMPT = "a photo of sks dog on the beach"
CLASS_PROMPT = "a photo of dog on the beach"  # SAG's subject-agnostic c₀


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _prepare(args, workdir: Path):
    model = Path(args.model) if args.model else workdir / "model"
    if not args.model:
        config = json.loads(Path(args.config).read_text()) if args.config else default_config(args.family)
        build_tiny(args.family, model, config=config)
    pipe = load_pipeline(str(model), device=args.device, dtype=args.dtype)
    lora = workdir / "lora" / "pytorch_lora_weights.safetensors"
    if not lora.exists():
        cpu = load_pipeline(str(model), device="cpu", dtype="float32")
        random_lora(cpu, lora.parent, rank=4, std=0.05, seed=0)
        random_lora(cpu, _weak_of(lora).parent, rank=4, std=0.05, seed=1)  # DreamBlend's underfit checkpoint
    attach_loras(pipe, lora, _weak_of(lora))
    return model, lora, pipe


def _weak_of(lora: Path) -> Path:
    return Path(lora).parent.parent / "weak" / Path(lora).name


def _request(args, batch):
    return Request(
        prompts=[PROMPT] * batch,
        generators=[torch.Generator("cpu").manual_seed(i) for i in range(batch)],
        steps=args.steps,
        height=args.height,
        width=args.width,
        extra_texts={"class_prompt": [CLASS_PROMPT] * batch},
    )


def _time_ours(pipe, guidance, args, weights=None, prompt=PROMPT):
    device = family_of(pipe).denoiser(pipe).device
    request = _request(args, args.batch)
    request.prompts = [prompt] * args.batch
    _sync(device)
    t0 = time.perf_counter()
    images = decode(pipe, sample_latents(pipe, guidance, request, progress=False, weights=weights), "np")
    _sync(device)
    return time.perf_counter() - t0, images


@torch.no_grad()
def _pg_two_passes(pipe, guidance, args):
    """PG the obvious way: weak and strong branch as two network calls per step, the LoRA
    weight set per call with ``set_adapters``."""
    family = family_of(pipe)
    model = family.denoiser(pipe)
    device = model.device
    r = _request(args, args.batch)
    _sync(device)
    t0 = time.perf_counter()
    cond = family.encode(pipe, r.prompts, cond=True)
    uncond = family.encode(pipe, [""] * len(r.prompts), cond=False)
    sched = pipe.scheduler
    sched.set_timesteps(r.steps, device=device)
    h = (r.height or model.config.sample_size * pipe.vae_scale_factor) // pipe.vae_scale_factor
    w = (r.width or model.config.sample_size * pipe.vae_scale_factor) // pipe.vae_scale_factor
    x = randn_tensor(
        (len(r.prompts), model.config.in_channels, h, w),
        generator=r.generators,
        device=device,
        dtype=family.latent_dtype(pipe, cond),
    )
    x = x * sched.init_noise_sigma
    for t in sched.timesteps:
        xin = sched.scale_model_input(x, t)
        pipe.set_adapters(["full"], adapter_weights=[guidance.omega])
        e_u = family.predict(pipe, xin, t, uncond)
        pipe.set_adapters(["full"], adapter_weights=[1.0])
        e_c = family.predict(pipe, xin, t, cond)
        x = sched.step(e_u + guidance.scale * (e_c - e_u), t, x, return_dict=False)[0]
    decode(pipe, x, "np")
    _sync(device)
    return time.perf_counter() - t0


def _time_stock(stock, args):
    family = family_of(stock)
    device = family.denoiser(stock).device
    _sync(device)
    t0 = time.perf_counter()
    r = _request(args, args.batch)
    images = stock(
        r.prompts,
        guidance_scale=args.scale,
        num_inference_steps=r.steps,
        height=r.height,
        width=r.width,
        generator=r.generators,
        output_type="np",
        **family.stock_call,
    ).images
    _sync(device)
    return time.perf_counter() - t0, images


def _cuda_peak(pipe, guidance, args):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    sample_latents(pipe, guidance, _request(args, args.batch), progress=False)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def _cpu_peak(variant, model, lora, args, tuned=None):
    """Peak RSS (MiB) of a fresh process that loads the model and samples once."""
    cmd = [
        sys.executable,
        __file__,
        "--_probe",
        variant,
        "--model",
        str(model),
        *(["--_lora", str(lora)] if lora is not None else ["--_tuned", str(tuned)]),
        "--steps",
        str(args.steps),
        "--batch",
        str(args.batch),
        "--device",
        "cpu",
        "--dtype",
        args.dtype,
        "--threads",
        str(args.threads),
        "--scale",
        str(args.scale),
    ]
    for name in ("height", "width"):
        if getattr(args, name):
            cmd += [f"--{name}", str(getattr(args, name))]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def _probe(args):
    if args._tuned:
        pipe, weights = _full_pipe(args._probe, args.model, args._tuned, args)
        guidance = _full_variants(args.scale)[args._probe]
    else:
        pipe, weights = load_pipeline(args.model, device="cpu", dtype=args.dtype), None
        attach_loras(pipe, args._lora, _weak_of(args._lora))
        guidance = _variants(args.scale)[args._probe]
    sample_latents(pipe, guidance, _request(args, args.batch), progress=False, weights=weights)
    print(_peak_rss_mib())


def _peak_rss_mib() -> float:
    """This process's peak RSS: VmHWM (reset by exec), not ru_maxrss, which Linux carries across
    exec, so a probe started by a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _personalized(args, model: Path, workdir: Path):
    """PG/CFG and SAG/CFG wall time with a run of another personalization method attached (its
    own branch weights: TI's token rows, ClassDiffusion's per-sample weight differences). The run
    is a real 2-step training of the method on the demo dog, so its files are the method's own."""
    from wig.concepts import read_images
    from wig.personalization import Subject, make

    method = make(args.personalization, steps=2, weak_step=1, resolution=64)
    prompt = f"a photo of {method.identifier('sks')} dog on the beach"
    cpu = load_pipeline(str(model), device="cpu", dtype="float32")
    images = read_images(Path(__file__).resolve().parents[1] / "resources/datasets/demo/images/brown_dog")
    method.train(cpu, Subject(images, f"a photo of {method.identifier('sks')} dog"), workdir / "run", progress=False)
    pipe = load_pipeline(str(model), device=args.device, dtype=args.dtype)
    weights = method.attach(pipe, workdir / "run")
    denoiser = family_of(pipe).denoiser(pipe)
    native = denoiser.config.sample_size * pipe.vae_scale_factor
    args.height, args.width = args.height or native, args.width or native
    variants = {k: v for k, v in _variants(args.scale).items() if k in ("cfg", "pg", "sag")}
    times = {name: [] for name in variants}
    _time_ours(pipe, variants["cfg"], args, weights, prompt)  # warm-up
    for _ in range(args.repeats):
        for name, guidance in variants.items():
            times[name].append(_time_ours(pipe, guidance, args, weights, prompt)[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.personalization} on {model.name}; {args.steps} steps; batch {args.batch}; median of {args.repeats}")
    for name in times:
        print(f"  {name:14s} {med[name]:8.3f} s")
    print(f"PG/CFG wall time         {med['pg'] / med['cfg']:.3f}   (goal <= 1.02)")
    print(f"SAG/CFG wall time        {med['sag'] / med['cfg']:.3f}   (goal <= 1.55)")


def _tuned_denoiser(model: Path, out: Path) -> Path:
    """A random "full fine-tune" of the model's denoiser (every tensor moved by 5 % of its spread),
    saved as diffusers saves a UNet/transformer: what Diffusion-DPO publishes."""
    cpu = load_pipeline(str(model), device="cpu", dtype="float32")
    denoiser = family_of(cpu).denoiser(cpu)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in denoiser.state_dict().values():
            if tensor.is_floating_point() and tensor.numel() > 1:
                tensor += 0.05 * tensor.std() * torch.randn(tensor.shape, generator=gen)
    denoiser.save_pretrained(out)
    return out


def _full_pipe(variant, model, tuned, args):
    """``cfg_alone``: the fine-tune loaded as the pipeline's only denoiser (CFG with that model,
    nothing else in memory); otherwise the base with the fine-tune attached beside it."""
    from wig.personalization.full_weights import attach_full_weights, read_finetune

    pipe = load_pipeline(str(model), device=args.device, dtype=args.dtype)
    if variant == "cfg_alone":
        denoiser = family_of(pipe).denoiser(pipe)
        denoiser.load_state_dict(read_finetune(denoiser, tuned))
        return pipe, None
    return pipe, attach_full_weights(pipe, tuned)


def _full_variants(scale):
    return {
        "cfg_alone": Guidance("cfg", scale),
        "cfg": Guidance("cfg", scale),
        "pg_w0": Guidance("pg", scale, omega=0.0),
        "pg": Guidance("pg", scale, omega=0.5),
    }


def _full(args, model: Path, workdir: Path):
    """PG/CFG wall time and peak memory with a full fine-tune (`wig.personalization.full_weights`)
    against CFG with the fine-tuned model alone. For the wall times "alone" is the pipeline with θ'
    swapped in as its denoiser (the same module object, so nothing is held twice); for the peak
    memory each variant runs in a fresh process that loads only what it needs."""
    import gc

    tuned = _tuned_denoiser(model, workdir / "tuned")
    variants = _full_variants(args.scale)
    pipe, weights = _full_pipe("pg", model, tuned, args)
    family = family_of(pipe)
    denoiser = family.denoiser(pipe)
    device = denoiser.device
    native = denoiser.config.sample_size * pipe.vae_scale_factor
    args.height, args.width = args.height or native, args.width or native
    size = sum(t.numel() * t.element_size() for t in denoiser.state_dict().values()) / 2**20

    def run(pipe, weights, denoiser, name, guidance):
        if name != "cfg_alone":
            return _time_ours(pipe, guidance, args, weights)
        setattr(pipe, family.component, weights.tuned)  # θ' as the pipeline's only denoiser
        try:
            return _time_ours(pipe, guidance, args)
        finally:
            setattr(pipe, family.component, denoiser)

    times = {name: [] for name in variants}
    for name, guidance in variants.items():  # warm-up
        run(pipe, weights, denoiser, name, guidance)
    for _ in range(args.repeats):
        for name, guidance in variants.items():
            times[name].append(run(pipe, weights, denoiser, name, guidance)[0])
    alone, attached = (run(pipe, weights, denoiser, name, variants["cfg"])[1] for name in ("cfg_alone", "cfg"))
    same = bool(np.array_equal(alone, attached))
    del pipe, weights, denoiser
    gc.collect()
    if device.type == "cuda":
        peak = {}
        for name, guidance in variants.items():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            p, w = _full_pipe(name, model, tuned, args)
            sample_latents(p, guidance, _request(args, args.batch), progress=False, weights=w)
            torch.cuda.synchronize()
            peak[name] = torch.cuda.max_memory_allocated() / 2**20
            del p, w
        peak_kind = "CUDA max_memory_allocated, model included"
    else:
        peak = {name: _cpu_peak(name, model, None, args, tuned) for name in variants}
        peak_kind = "peak RSS (VmHWM) of a fresh process"
    med = {k: statistics.median(v) for k, v in times.items()}
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(
        f"full fine-tune of the denoiser ({size:.1f} MiB); device: {dev}; "
        f"batch {args.batch}; {args.height}px; {args.steps} steps; median of {args.repeats}; peak: {peak_kind}"
    )
    for name in times:
        print(f"  {name:10s} {med[name]:8.3f} s   peak {peak[name]:9.1f} MiB")
    print(f"CFG attached / CFG alone wall time {med['cfg'] / med['cfg_alone']:.3f}   images identical: {same}")
    print(f"PG(ω=0.5)/CFG alone wall time      {med['pg'] / med['cfg_alone']:.3f}")
    print(f"PG(ω=0)/CFG alone wall time        {med['pg_w0'] / med['cfg_alone']:.3f}")
    extra = peak["pg"] - peak["cfg_alone"]
    print(
        f"PG/CFG alone peak memory           {peak['pg'] / peak['cfg_alone']:.3f}   (+{extra:.1f} MiB = "
        f"{extra / size:.2f} × the denoiser's {size:.1f} MiB)"
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="diffusers model folder (default: build a twin from --config)")
    p.add_argument(
        "--family",
        choices=sorted(k for k, t in tiny_kinds().items() if not t.pretrained),
        default="sd",
        help="family of the twin to build",
    )
    p.add_argument("--config", help="twin config JSON (default: wig's tiny config of --family)")
    p.add_argument("--scale", type=float, help="CFG λ (default: 7.5 for SD, 4.5 for SANA, 5.0 for SDXL)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=2, help="images per sampling call")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--personalization",
        default="db-lora",
        help="the fine-tune's method: db-lora (a random LoRA; also ours vs stock and memory) or another "
        "registered method (a 2-step run of it; PG/CFG and SAG/CFG)",
    )
    p.add_argument(
        "--finetune",
        choices=("lora", "full"),
        default="lora",
        help="full: a full fine-tune of the denoiser attached as weights (PG/CFG against CFG with that model alone)",
    )
    p.add_argument("--_probe", help=argparse.SUPPRESS)
    p.add_argument("--_tuned", help=argparse.SUPPRESS)
    p.add_argument("--_lora", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.scale is None:
        args.scale = SCALE[args.family]
    variants = _variants(args.scale)
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    if args._probe:
        return _probe(args)

    if args.finetune == "full":
        with tempfile.TemporaryDirectory() as tmp:
            model, _, _ = _prepare(args, Path(tmp))
            return _full(args, model, Path(tmp))

    if args.personalization != "db-lora":
        with tempfile.TemporaryDirectory() as tmp:
            model, _, _ = _prepare(args, Path(tmp))
            return _personalized(args, model, Path(tmp))

    with tempfile.TemporaryDirectory() as tmp:
        model, lora, pipe = _prepare(args, Path(tmp))
        family = family_of(pipe)
        denoiser = family.denoiser(pipe)
        device = denoiser.device
        native = denoiser.config.sample_size * pipe.vae_scale_factor  # SanaPipeline's default is 1024
        args.height, args.width = args.height or native, args.width or native
        extra = {"safety_checker": None} if family is SD else {}
        stock = type(pipe).from_pretrained(str(model), dtype=denoiser.dtype, **extra)
        stock.scheduler = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
        stock.load_lora_weights(str(lora))
        stock.set_progress_bar_config(disable=True)
        stock.to(device)

        times = {name: [] for name in [*variants, "pg_2pass", "stock_cfg"]}
        _time_ours(pipe, variants["cfg"], args)  # warm-up (allocator, kernels)
        _time_stock(stock, args)
        for _ in range(args.repeats):
            for name, guidance in variants.items():
                times[name].append(_time_ours(pipe, guidance, args)[0])
            times["pg_2pass"].append(_pg_two_passes(pipe, variants["pg"], args))
            elapsed, stock_images = _time_stock(stock, args)
            times["stock_cfg"].append(elapsed)
        med = {k: statistics.median(v) for k, v in times.items()}
        _, ours_images = _time_ours(pipe, variants["cfg"], args)
        max_diff = int(np.abs((ours_images * 255).round() - (stock_images * 255).round()).max())

        if device.type == "cuda":
            peak = {name: _cuda_peak(pipe, g, args) for name, g in variants.items()}
            peak_kind = "CUDA max_memory_allocated"
        else:
            peak = {name: _cpu_peak(name, model, lora, args) for name in variants}
            peak_kind = "peak RSS of a fresh process"

    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    h = args.height
    print(
        f"{family.name} ({type(pipe).__name__}, {type(pipe.scheduler).__name__}); device: {dev}; "
        f"dtype {denoiser.dtype}; batch {args.batch}; {h}px; {args.steps} steps; λ {args.scale}; "
        f"median of {args.repeats}"
    )
    for name in times:
        print(f"  {name:14s} {med[name]:8.3f} s")
    print(f"PG/CFG wall time         {med['pg'] / med['cfg']:.3f}   (goal <= 1.02)")
    print(f"AG/CFG wall time         {med['ag'] / med['cfg']:.3f}   (goal <= 1.55)")
    print(f"SAG/CFG wall time        {med['sag'] / med['cfg']:.3f}   (goal <= 1.55; the PG paper's Table 8: 1.46)")
    print(
        f"DreamBlend/CFG wall time {med['dreamblend'] / med['cfg']:.3f}   "
        f"(strength 0: {med['dreamblend_e0'] / med['cfg']:.3f})"
    )
    print(f"ours/stock CFG wall time {med['cfg'] / med['stock_cfg']:.3f}   (goal <= 1.03)")
    print(f"PG batched / two passes  {med['pg'] / med['pg_2pass']:.3f}   (< 1: the batched hook wins)")
    print(f"ours vs stock CFG images max |diff| = {max_diff} (uint8)")
    print(f"peak memory ({peak_kind}): " + ", ".join(f"{k} {v:.0f} MiB" for k, v in peak.items()))
    print(f"PG/CFG peak memory       {peak['pg'] / peak['cfg']:.3f}   (goal <= 1.02)")
    print(f"AG/CFG peak memory       {peak['ag'] / peak['cfg']:.3f}")
    print(
        f"DreamBlend/CFG peak memory {peak['dreamblend'] / peak['cfg']:.3f}   "
        f"(strength 0: {peak['dreamblend_e0'] / peak['cfg']:.3f}; the gradient pass holds one branch's activations)"
    )


if __name__ == "__main__":
    main()
