"""`wig collapse`: attention collapse per checkpoint of a fine-tune run (DreamBlend's diagnostic)."""

from __future__ import annotations

import argparse
from pathlib import Path

from wig.atomic import replace_file, tmp_path
from wig.cli.options import SEED, add_runtime, add_sampling, run_method, runtime
from wig.errors import WigError

NAME = "collapse"
ORDER = 40  # its place in `wig --help`
EXTRA = "workflow"  # what it imports beyond the core install (wig.extras; pyproject.toml)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "collapse",
        help="attention collapse per checkpoint of a fine-tune run (DreamBlend's diagnostic)",
        description="For each checkpoint of a run (weak, full, or a step it kept with checkpoints: [...]) sample "
        "each prompt with CFG, re-noise the sample to --probe and measure how much of every prompt token's "
        "cross-attention lies in the subject's region (the --top share of pixels its tokens attend to most): "
        "about --top when a token ignores the subject, 1 when it has collapsed onto it. Writes one row per "
        "(checkpoint, prompt, seed, token) as Parquet and prints the mean per checkpoint.",
    )
    p.add_argument("--model", required=True, help="the base model the run fine-tuned")
    p.add_argument("--run", required=True, type=Path, help="a fine-tune run folder (wig train's --out)")
    p.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        help="weak, full or a step the run kept (repeat: e.g. --checkpoint 5 --checkpoint 250 --checkpoint 1000)",
    )
    p.add_argument("--subject", default="sks", help="the identifier as the prompts write it (default sks)")
    p.add_argument("--prompt", required=True, action="append", help="a prompt naming the subject (repeat)")
    p.add_argument("--seed", type=SEED, action="append", default=None, help="seed (repeat; default 0)")
    p.add_argument("--scale", type=float, default=7.5, help="CFG λ (default 7.5)")
    p.add_argument("--probe", type=float, default=0.5, help="the diffusion time the maps are read at (default 0.5)")
    p.add_argument("--top", type=float, default=0.25, help="the subject region's share of pixels (default 0.25)")
    add_sampling(p)
    p.add_argument("--out", required=True, type=Path, help="output Parquet file")
    add_runtime(p)
    return p


def run(args) -> None:
    from wig.branches import FULL, WEAK, step_adapter
    from wig.diagnostics.attention_collapse import attention_collapse, collapse_summary
    from wig.models.pipelines import load_pipeline

    method = run_method(args)
    labels = {}
    for name in args.checkpoint:
        if name in (FULL, WEAK):
            labels[name] = name
        elif name.isdigit():
            labels[f"step {int(name)}"] = step_adapter(int(name))
        else:
            raise WigError(f"--checkpoint {name!r}: weak, full or a step number")
    steps = [int(name) for name in args.checkpoint if name.isdigit()]
    runtime(args)
    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype)
    weights = method.attach(pipe, args.run, weak=WEAK in labels.values())
    if steps:
        method.attach_steps(pipe, args.run, steps)
    try:
        table = attention_collapse(
            pipe,
            args.prompt,
            args.subject,
            labels,
            seeds=args.seed or [0],
            steps=args.steps,
            scale=args.scale,
            probe=args.probe,
            top=args.top,
            weights=weights,
            negative_prompt=args.negative_prompt,
            height=args.height,
            width=args.width,
        )
    except ValueError as err:
        raise WigError(str(err)) from None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.write_parquet(tmp_path(args.out))
    replace_file(tmp_path(args.out), args.out)
    for row in collapse_summary(table).iter_rows(named=True):
        print(f"{row['checkpoint']:>12s}  concentration {row['concentration']:.3f}  ({row['n_tokens']} tokens)")
