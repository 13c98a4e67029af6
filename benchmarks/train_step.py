"""Our DreamBooth-LoRA training step vs a minimal loop written directly against diffusers + peft.

Same model, LoRA (rank, targets), optimizer, batch (instance + class image) and resolution.
The reference does what diffusers' train_dreambooth_lora.py does by default: encode both
prompts and both images every step. Ours evaluates the frozen text encoder and VAE encoder once
and samples the cached latent distribution each step (identical in distribution). Per-step time
is the median over the steps of a run; runs alternate (ours, reference) for --repeats rounds.

    python benchmarks/train_step.py                                   # tiny twin, CPU
    python benchmarks/train_step.py --config benchmarks/sd15_arch.json --resolution 512 \
        --device cuda --dtype float16 --mixed-precision fp16           # SD 1.5 scale, GPU

Peak memory: CUDA ``max_memory_allocated`` per variant; on the CPU, peak RSS of a fresh
process running that variant (model included).
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

import torch
import torch.nn.functional as F

from wig.concepts import read_images
from wig.models.families import default_config
from wig.models.families.sd import SD, build_tiny_sd
from wig.models.pipelines import load_pipeline
from wig.personalization import Subject, make
from wig.personalization.training import pixel_tensor

ROOT = Path(__file__).resolve().parents[1]
DOG = ROOT / "resources/datasets/demo/images/brown_dog"
INSTANCE, CLASS = "a photo of sks dog", "a photo of dog"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def ours(pipe, images, args, out: Path) -> float:
    method = make(
        "db-lora",
        steps=args.steps,
        weak_step=1,
        lr=1e-4,
        resolution=args.resolution,
        mixed_precision=args.mixed_precision,
    )
    log = method.train(pipe, Subject(images, INSTANCE, images, CLASS), out, progress=False, overwrite=True)
    seconds = log["seconds"].to_list()
    return statistics.median(b - a for a, b in zip(seconds[1:], seconds[2:]))  # skip the checkpoint step


def reference(pipe, images, args) -> float:
    """The minimal loop: peft LoRA on the UNet, VAE + text encoder run every step."""
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    unet, vae, te, tok = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    device = unet.device
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=list(SD.lora_targets)),
        adapter_name="ref",
    )
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    opt = torch.optim.AdamW(params, lr=1e-4)
    pixels = pixel_tensor(images, args.resolution).to(device, vae.dtype)
    ids = tok(
        [INSTANCE, CLASS], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(device)
    amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.mixed_precision)
    times = []
    try:
        for step in range(args.steps):
            _sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                batch = pixels[[step % len(pixels), (step + 1) % len(pixels)]]
                latents = vae.encode(batch).latent_dist.sample() * vae.config.scaling_factor
                embeds = te(ids)[0]
            noise = torch.randn_like(latents)
            t = torch.randint(0, sched.config.num_train_timesteps, (2,), device=device)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                pred = unet(sched.add_noise(latents, noise, t), t, encoder_hidden_states=embeds).sample
            losses = F.mse_loss(pred.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))
            (losses[0] + losses[1]).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            _sync(device)
            times.append(time.perf_counter() - t0)
    finally:
        unet.delete_adapters("ref")
    return statistics.median(times[1:])


def _peak(variant, model, args) -> float:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        pipe = load_pipeline(str(model), device=device, dtype=args.dtype)
        torch.cuda.reset_peak_memory_stats()
        with tempfile.TemporaryDirectory() as tmp:
            _run(variant, pipe, args, Path(tmp))
        return torch.cuda.max_memory_allocated() / 2**20
    cmd = [
        sys.executable,
        __file__,
        "--_probe",
        variant,
        "--model",
        str(model),
        "--steps",
        "3",
        "--resolution",
        str(args.resolution),
        "--threads",
        str(args.threads),
        "--dtype",
        args.dtype,
    ]
    return float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def _run(variant, pipe, args, tmp: Path) -> float:
    images = read_images(DOG)
    return ours(pipe, images, args, tmp / "run") if variant == "ours" else reference(pipe, images, args)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="diffusers model folder (default: build a twin from --config)")
    p.add_argument("--config", help="twin config JSON (default: wig's tiny SD config)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--_probe", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    if args._probe:
        pipe = load_pipeline(args.model, device="cpu", dtype=args.dtype)
        with tempfile.TemporaryDirectory() as tmp:
            _run(args._probe, pipe, args, Path(tmp))
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = Path(args.model) if args.model else tmp / "model"
        if not args.model:
            config = json.loads(Path(args.config).read_text()) if args.config else default_config("sd")
            build_tiny_sd(model, config=config)
        pipe = load_pipeline(str(model), device=args.device, dtype=args.dtype)
        times = {"ours": [], "reference": []}
        for _ in range(args.repeats):
            for variant in times:
                times[variant].append(_run(variant, pipe, args, tmp))
        peak = {variant: _peak(variant, model, args) for variant in times}

    device = pipe.unet.device
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"device: {dev}; dtype {pipe.unet.dtype}; mixed precision {args.mixed_precision}; batch 1 instance + 1 class; "
        f"{args.resolution}px; {args.steps} steps x {args.repeats} runs"
    )
    for k, v in med.items():
        print(f"  {k:10s} {v * 1000:8.1f} ms/step   peak {peak[k]:.0f} MiB")
    print(f"ours/reference step time   {med['ours'] / med['reference']:.3f}   (goal <= 1.05)")
    print(f"ours/reference peak memory {peak['ours'] / peak['reference']:.3f}")


if __name__ == "__main__":
    main()
