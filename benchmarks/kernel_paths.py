"""Does a demo fine-tune depend on which CPU kernels run it? (issue 32: the demo's numbers moved
between two 2-core machines, everything downstream of LoRA training and nothing upstream).

Trains one subject of the demo (the shipped synthetic base, the demo's db-lora settings, its
rendered images) once per environment, each in a fresh process with one torch thread, and
prints each LoRA's sha256 and its largest difference from the first run's. The environments
change only which kernels the libraries pick on this CPU:

    default              what the machine picks (AVX-512 where it has it)
    default (again)      the same, a second time: is one machine deterministic?
    ATEN avx2            ATEN_CPU_CAPABILITY=avx2: torch's own vectorised kernels at AVX2
    oneDNN AVX2          ONEDNN_MAX_CPU_ISA=AVX2: oneDNN's convolutions at AVX2
    MKL AVX2             MKL_CBWR=AVX2 (MKL's conditional numerical reproducibility branch)
    pinned               all three, what `make demo` sets (wig.kernels.PINNED)

    python benchmarks/kernel_paths.py --steps 1000      # the demo's length (≈ 1 min a run on 2 cores)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "resources/models/synthetic-base"
SUBJECT = "yellow_magenta_triangle"

ENVIRONMENTS = {
    "default": {},
    "default (again)": {},
    "ATEN avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "oneDNN AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "MKL AVX2": {"MKL_CBWR": "AVX2"},
    "pinned": "pinned",
}


def train_one(out: Path, steps: int) -> None:
    """One demo fine-tune into ``out`` (run in a child process: the environment picks the kernels)."""
    import torch

    from wig.concepts import read_images
    from wig.models.pipelines import load_pipeline
    from wig.personalization import Subject, make
    from wig.synthetic.world import render_images

    torch.set_num_threads(1)
    render_images(out / "world", n_images=5, size=32, seed=0)
    pipe = load_pipeline(str(BASE), device="cpu", dtype="float32")
    method = make(
        "db-lora", steps=steps, weak_step=min(250, steps - 1), rank=8, lr=3e-3, resolution=32, prior_weight=0.0
    )
    subject = Subject(read_images(out / "world" / SUBJECT), f"a sks {SUBJECT.replace('_', ' ')}")
    log = method.train(pipe, subject, out / "run", seed=0, progress=False)
    print(json.dumps({"loss": float(log["loss"][-1]), "capability": torch.backends.cpu.get_cpu_capability()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        train_one(args.child, args.steps)
        return

    import torch
    from safetensors.torch import load_file

    from wig.kernels import PINNED

    first = None
    print(f"{'environment':<17} {'cpu kernels':<11} {'final loss':>11}  {'LoRA sha256':<16} max |Δ| vs first")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, extra) in enumerate(ENVIRONMENTS.items()):
            extra = PINNED if extra == "pinned" else extra
            out = Path(tmp) / str(i)
            env = {k: v for k, v in os.environ.items() if k not in {*PINNED, "ATEN_CPU_CAPABILITY"}} | extra
            proc = subprocess.run(
                [sys.executable, __file__, "--steps", str(args.steps), "--child", str(out)],
                env=env,
                capture_output=True,
                text=True,
            )
            if proc.returncode:
                sys.exit(proc.stderr[-2000:])
            info = json.loads(proc.stdout.strip().splitlines()[-1])
            path = out / "run/full/pytorch_lora_weights.safetensors"
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            state = load_file(str(path))
            first = first or state
            diff = max(float((state[k] - first[k]).abs().max()) for k in state)
            print(f"{name:<17} {info['capability']:<11} {info['loss']:>11.6f}  {digest} {diff:.3g}")
    del torch


if __name__ == "__main__":
    main()
