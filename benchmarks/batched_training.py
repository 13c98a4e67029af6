"""What training many subjects in one forward buys: samples per second of K = 1, 4, 16 subjects in
one job (`wig.personalization.training.train_loras`) against K separate jobs of one subject each run
side by side on the same cores (two at a time, one thread each, as a 2-core workstation runs them),
and each variant's peak memory. Measured in this one run.

    python benchmarks/batched_training.py                                    # the synthetic base, CPU
    python benchmarks/batched_training.py --config benchmarks/sd15_arch.json --resolution 512 --steps 6
    python benchmarks/batched_training.py --config benchmarks/sd15_arch.json --resolution 512 \\
        --device cuda --dtype float16 --mixed-precision fp16                  # SD 1.5 scale, GPU

A sample is one image through the forward and backward (instance images only: no prior
preservation, the offline study's no-prior LoRAs). Step times are medians over a run's steps
after its first; peak memory is a fresh process's peak RSS on the CPU (model included) or
``max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from wig.concepts import read_images
from wig.models.families.sd import build_tiny_sd
from wig.models.pipelines import load_pipeline
from wig.personalization import Subject, make

ROOT = Path(__file__).resolve().parents[1]
DOG = ROOT / "resources/datasets/demo/images/brown_dog"
SYNTHETIC = ROOT / "resources/models/synthetic-base"


def _method(args):
    return make(
        "db-lora",
        steps=args.steps,
        weak_step=1,
        lr=1e-4,
        rank=8,
        resolution=args.resolution,
        prior_weight=0.0,
        mixed_precision=args.mixed_precision,
    )


def _train(model: str, k: int, args, out: Path) -> float:
    """One job of k subjects: its median seconds per step."""
    pipe = load_pipeline(model, device=args.device, dtype=args.dtype)
    images = read_images(DOG)
    subjects = [Subject(images, f"a photo of sks{i} dog") for i in range(k)]
    outs = [out / f"s{i}" for i in range(k)]
    logs = _method(args).train_many(pipe, subjects, outs, list(range(k)), progress=False, overwrite=True)
    seconds = logs[0]["seconds"].to_list()
    return statistics.median(b - a for a, b in zip(seconds[1:], seconds[2:]))


def _peak() -> float:
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated():
        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _child(model: str, k: int, args, threads: int) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--_child", str(k), "--model", model, "--threads", str(threads)]
    for name in ("steps", "resolution", "device", "dtype", "mixed_precision"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"a benchmark process failed ({proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="diffusers model folder (default: the shipped synthetic base)")
    p.add_argument("--config", help="build a random-init SD twin from this config instead (e.g. sd15_arch.json)")
    p.add_argument("--subjects", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--_child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args._child is not None:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            step = _train(args.model, args._child, args, Path(tmp))
            print(json.dumps({"step": step, "wall": time.perf_counter() - t0, "peak_mib": _peak()}))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(SYNTHETIC)
        if args.config:
            model = str(Path(tmp) / "model")
            build_tiny_sd(model, config=json.loads(Path(args.config).read_text()))
        print(
            f"model {args.model or args.config or 'synthetic base'}; {args.resolution} px; {args.steps} steps; "
            f"{args.device} {args.dtype}; {args.threads} threads"
        )
        # separate jobs as a workstation runs them: one per core, side by side, one thread each
        side_by_side = [_child(model, 1, args, threads=1) for _ in range(args.threads)]
        pair = [_result(proc) for proc in side_by_side]
        single = {"step": statistics.mean(r["step"] for r in pair), "peak_mib": max(r["peak_mib"] for r in pair)}
        for k in args.subjects:
            batched = _result(_child(model, k, args, threads=args.threads))
            # K separate jobs, `threads` at a time, each at the step time measured side by side
            separate_rate = min(k, args.threads) / single["step"]
            batched_rate = k / batched["step"]
            print(
                f"K {k:2d}: one job {batched['step'] * 1e3:7.1f} ms/step = {batched_rate:7.1f} samples/s, "
                f"peak {batched['peak_mib']:.0f} MiB | {k} separate jobs side by side {separate_rate:7.1f} samples/s, "
                f"peak {single['peak_mib']:.0f} MiB each | batched / separate {batched_rate / separate_rate:.2f}"
            )


if __name__ == "__main__":
    main()
