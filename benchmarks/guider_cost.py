"""What PG costs as a stock diffusers guider: `PersonalizationGuidance` against diffusers' own
`ClassifierFreeGuidance` in the same modular SDXL pipeline, and both against wig's batched sampler.

A guider runs its conditions one after the other (one UNet call per condition per step, as every
diffusers guider does); wig's sampler runs all branches of a step in one batched forward. Every
ratio is measured in this one run, variants interleaved over the repeats, medians reported.

The guider's per-step bookkeeping (its prepare/cleanup calls, the scalings written and put back)
is measured first, on SDXL base's full UNet built on the meta device (no weights, 7,530 modules
with a LoRA on its attention): with its layer list cached per denoiser, and without (every step
walking the module tree, as before the cache).

    python benchmarks/guider_cost.py                         # tiny SDXL twin, CPU, batch 1 and 4
    python benchmarks/guider_cost.py --bookkeeping-only      # the per-step bookkeeping alone
    python benchmarks/guider_cost.py --model stabilityai/stable-diffusion-xl-base-1.0 \\
        --height 1024 --width 1024 --steps 30 --device cuda --dtype float16
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from diffusers import ModularPipeline
from diffusers.guiders import ClassifierFreeGuidance

from wig.guidance import Guidance
from wig.integrations.diffusers import PersonalizationGuidance
from wig.models.families.sdxl import build_tiny_sdxl
from wig.models.pipelines import load_pipeline
from wig.personalization.lora import attach_loras, random_lora
from wig.sampling.sampler import Request, decode, sample_latents

PROMPT = "a photo of sks dog on the beach"
COMPONENTS = ["unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bookkeeping(steps: int = 50, omega: float = 0.5) -> None:
    """Milliseconds a step of `PersonalizationGuidance` spends outside the denoiser on SDXL base's UNet."""
    import json

    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    config = json.loads((Path(__file__).parent / "sdxl_unet.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel(**{k: v for k, v in config.items() if not k.startswith("_")})
        unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]), "subject")
    modules = sum(1 for _ in unet.modules())

    def step(guider, i, uncached):
        if uncached:
            guider._layer_cache = None
        guider.set_state(step=i, num_inference_steps=steps, timestep=torch.tensor(999 - i))
        guider.prepare_inputs({"x": (torch.zeros(1), torch.zeros(1))})
        for _ in range(2):  # the conditional batch, then the unconditional one
            guider.prepare_models(unet)
            for hook in list(unet._forward_pre_hooks.values()):  # what the denoiser's call runs around its forward
                hook(unet, ())
            for hook in list(unet._forward_hooks.values()):
                hook(unet, (), None)
            guider.cleanup_models(unet)

    results = {}
    for name, uncached in (("cached", False), ("uncached", True)):
        guider = PersonalizationGuidance(guidance_scale=5.0, omega=omega)
        step(guider, 0, uncached)  # warm-up (and, cached, the one walk)
        t0 = time.perf_counter()
        for i in range(steps):
            step(guider, i, uncached)
        results[name] = (time.perf_counter() - t0) / steps * 1000
    print(
        f"guider bookkeeping, SDXL base UNet ({modules} modules, meta device), {steps} steps: "
        f"{results['cached']:.2f} ms/step with the layer list cached, {results['uncached']:.2f} ms/step walking "
        f"the modules each step ({results['uncached'] / results['cached']:.1f}×)"
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="SDXL diffusers folder or hub name (default: the tiny SDXL twin)")
    p.add_argument("--scale", type=float, default=5.0, help="λ (default 5.0, StableDiffusionXLPipeline's)")
    p.add_argument("--omega", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bookkeeping-only", action="store_true", help="measure the per-step bookkeeping alone")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    bookkeeping(omega=args.omega)
    if args.bookkeeping_only:
        return
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(Path(tmp) / "model")
        if not args.model:
            build_tiny_sdxl(model)
        lora = random_lora(load_pipeline(model, device="cpu", dtype="float32"), Path(tmp) / "lora", std=0.05)
        modular = ModularPipeline.from_pretrained(model)
        modular.load_components(names=COMPONENTS, torch_dtype=dtype)
        modular.to(device)
        modular.load_lora_weights(str(lora.parent), adapter_name="full")
        ours = load_pipeline(model, device=args.device, dtype=args.dtype)
        attach_loras(ours, lora)

        def guider_run(guider, batch):
            modular.update_components(guider=guider)
            gens = [torch.Generator("cpu").manual_seed(i) for i in range(batch)]
            _sync(device)
            t0 = time.perf_counter()
            modular(
                prompt=[PROMPT] * batch,
                num_inference_steps=args.steps,
                height=args.height,
                width=args.width,
                generator=gens,
                output="images",
            )
            _sync(device)
            return time.perf_counter() - t0

        def sampler_run(batch):
            request = Request(
                prompts=[PROMPT] * batch,
                generators=[torch.Generator("cpu").manual_seed(i) for i in range(batch)],
                steps=args.steps,
                height=args.height,
                width=args.width,
            )
            _sync(device)
            t0 = time.perf_counter()
            decode(
                ours, sample_latents(ours, Guidance("pg", args.scale, omega=args.omega), request, progress=False), "np"
            )
            _sync(device)
            return time.perf_counter() - t0

        variants = {
            "cfg_guider": lambda b: guider_run(ClassifierFreeGuidance(guidance_scale=args.scale), b),
            "pg_guider": lambda b: guider_run(PersonalizationGuidance(guidance_scale=args.scale, omega=args.omega), b),
            "pg_wig": sampler_run,
        }
        print(
            f"model {args.model or 'tiny SDXL twin'}, {args.height}×{args.width}, {args.steps} steps, "
            f"{args.device} {args.dtype}, {args.threads} threads, median of {args.repeats}"
        )
        for batch in args.batches:
            for run in variants.values():  # warm-up
                run(batch)
            times = {name: [] for name in variants}
            for _ in range(args.repeats):
                for name, run in variants.items():
                    times[name].append(run(batch))
            med = {name: statistics.median(ts) for name, ts in times.items()}
            print(
                f"batch {batch}: cfg guider {med['cfg_guider']:.3f} s, pg guider {med['pg_guider']:.3f} s, "
                f"wig pg {med['pg_wig']:.3f} s | PG guider / CFG guider {med['pg_guider'] / med['cfg_guider']:.3f}, "
                f"wig PG / PG guider {med['pg_wig'] / med['pg_guider']:.3f}"
            )


if __name__ == "__main__":
    main()
