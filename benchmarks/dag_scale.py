"""How the workflow scales: `snakemake -n` per preset, a no-op rerun of the demo, and the
model-load share of a generation job at paper settings.

    python benchmarks/dag_scale.py            # run from the repository root after `make demo`

Model-load share, estimated (no paper-size checkpoint or GPU needed), stated assumptions:
  * loading scales with the bytes of the weights: L = L_tiny × bytes(SD 1.5, fp16) / bytes(tiny);
    the tiny load is mostly fixed Python overhead, so this over-estimates L (conservative);
  * sampling scales with UNet FLOPs: I = I_tiny × (FLOPs per step at 64×64 latents × 50 steps) /
    (FLOPs per step of the tiny run × its steps), FLOPs counted by torch's FlopCounterMode on the
    meta device (SD 1.5's architecture from benchmarks/sd15_arch.json, no weights);
  * a job samples 31 prompts × seeds_per_job images after one load: share = L / (L + n·I).
Both L_tiny and I_tiny are measured here, on the same machine, in this run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--cores", "4"]


def _timed(cmd) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def _unet_flops(config: dict, latent: int) -> float:
    """FLOPs of one batched CFG step (batch 2) of a UNet with ``config``, counted on meta tensors."""
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = UNet2DConditionModel(**config["unet"])
        x = torch.empty(2, 4, latent, latent)
        text = torch.empty(2, 77, config["unet"]["cross_attention_dim"])
        with FlopCounterMode(display=False) as counter:
            unet(x, torch.tensor([500, 500]), encoder_hidden_states=text)
    return counter.get_total_flops()


def model_load_share(seeds_per_job: int, prompts: int = 31) -> dict:
    from wig.guidance import Guidance
    from wig.models.families import default_config
    from wig.models.families.sd import build_tiny_sd
    from wig.models.pipelines import load_pipeline
    from wig.sampling.sampler import sample

    tiny_cfg = default_config("sd")
    paper_cfg = json.loads((ROOT / "benchmarks/sd15_arch.json").read_text())
    steps_tiny, steps_paper = 10, 50
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_sd(tmp)
        tiny_bytes = sum(p.stat().st_size for p in Path(tmp).rglob("*.safetensors"))
        t0 = time.perf_counter()
        pipe = load_pipeline(tmp, device="cpu", dtype="float32")
        load_tiny = time.perf_counter() - t0
        gens = [torch.Generator("cpu").manual_seed(i) for i in range(4)]
        sample(pipe, ["a photo of sks dog"] * 4, Guidance("cfg"), gens, steps=2, progress=False)  # warm-up
        t0 = time.perf_counter()
        sample(pipe, ["a photo of sks dog"] * 4, Guidance("cfg"), gens, steps=steps_tiny, progress=False)
        image_tiny = (time.perf_counter() - t0) / 4
    with torch.device("meta"):
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        n_params = sum(
            p.numel()
            for m in (
                UNet2DConditionModel(**paper_cfg["unet"]),
                AutoencoderKL(**paper_cfg["vae"]),
                CLIPTextModel(CLIPTextConfig(**paper_cfg["text_encoder"])),
            )
            for p in m.parameters()
        )
    paper_bytes = 2 * n_params  # fp16
    flops_ratio = (_unet_flops(paper_cfg, 64) * steps_paper) / (_unet_flops(tiny_cfg, 32) * steps_tiny)
    load = load_tiny * paper_bytes / tiny_bytes
    image = image_tiny * flops_ratio
    n = prompts * seeds_per_job
    return {
        "load_tiny_s": load_tiny,
        "image_tiny_s": image_tiny,
        "bytes_ratio": paper_bytes / tiny_bytes,
        "flops_ratio": flops_ratio,
        "load_s": load,
        "image_s": image,
        "images": n,
        "share": load / (load + n * image),
    }


def main():
    torch.set_num_threads(2)
    for preset in sorted((ROOT / "config/presets").glob("*.yaml")):
        seconds = _timed([*SNAKEMAKE, "-n", "--configfile", str(preset.relative_to(ROOT))])
        print(f"snakemake -n {preset.name:18s} {seconds:6.2f} s   (goal < 20 s)")
    seconds = _timed([*SNAKEMAKE])
    print(f"no-op rerun of the demo        {seconds:6.2f} s   (goal < 15 s; run `make demo` first)")
    for k in (1, 8):
        r = model_load_share(k)
        print(
            f"model-load share, seeds_per_job={k}: {100 * r['share']:.2f} %  (goal <= 10 %)  "
            f"[L_tiny {r['load_tiny_s']:.2f} s × bytes ratio {r['bytes_ratio']:.0f} = {r['load_s']:.0f} s; "
            f"I_tiny {r['image_tiny_s']:.3f} s × FLOP ratio {r['flops_ratio']:.0f} = {r['image_s']:.0f} s/image; "
            f"{r['images']} images per job]"
        )


if __name__ == "__main__":
    main()
