"""What the `wig` commands share: argument types, the runtime and sampling flags, a method's
settings as flags, and the checks that run before torch is imported."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

from wig.errors import WigError
from wig.settings import STEPS, type_name


def int_in(low: int, high: int | None = None, what: str = "an integer"):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value >= high):
            bound = f"≥ {low}" if high is None else f"in [{low}, {high})"
            raise argparse.ArgumentTypeError(f"{what} must be {bound}, got {value}")
        return value

    return parse


SEED = int_in(0, 2**64, "a seed")  # what torch.Generator.manual_seed takes
POSITIVE = int_in(1, what="a positive integer")
DEVICE = re.compile(r"^(auto|cpu|mps|(cuda|xpu)(:\d+)?)$")


def device_name(text: str) -> str:
    if not DEVICE.match(text):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}: auto, cpu, cuda, cuda:N, mps, xpu or xpu:N")
    return text


def add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        type=device_name,
        help="torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1, …",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "float16", "bfloat16"),
        help="weights/activations dtype; auto = float32 on CPU, float16 on GPU",
    )
    p.add_argument(
        "--threads", type=int_in(0, what="--threads"), default=0, help="torch CPU threads (0: torch's default)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--negative-prompt", default="", help="negative prompt for the ∅ branch (default empty)")
    p.add_argument("--steps", type=POSITIVE, default=50, help="sampling steps (default 50)")
    p.add_argument(
        "--height",
        type=POSITIVE,
        default=None,
        help="image height, a multiple of the model's size step (8 for SD; default: the model's)",
    )
    p.add_argument(
        "--width",
        type=POSITIVE,
        default=None,
        help="image width, a multiple of the model's size step (8 for SD; default: the model's)",
    )


def add_settings(p: argparse.ArgumentParser, registry, methods=None) -> None:
    """One flag per setting of the command's methods (``methods``, default all of ``registry``:
    ``--scale``, ``--omega``, ``--rank``, …): its type, doc and, per method, its default; a flag
    the chosen method lacks is refused. A setting's accepted values belong to each method that
    has it: the flag takes the union of its owners' choices (free if any owner's is free) and the
    chosen method checks its own, so two methods sharing a name never narrow each other's."""
    methods = sorted(registry) if methods is None else sorted(methods)
    fields: dict[str, dict[str, dataclasses.Field]] = {}
    for method in methods:
        for d in dataclasses.fields(registry[method]):
            fields.setdefault(d.name, {})[method] = d
    for name in sorted(fields):
        owners = fields[name]
        f = next(iter(owners.values()))
        defaults = ", ".join(f"{m} {d.default}" for m, d in owners.items())
        flag = f"--{name.replace('_', '-')}"
        if flag in p._option_string_actions:  # a plug-in's setting named like a command flag (--steps)
            flag = f"--setting-{name.replace('_', '-')}"
        dest = f"setting_{name}"
        if type_name(f) == "bool":
            # --x / --no-x: a setting that defaults to True (e.g. a flip augmentation) can be turned off
            help_ = f"{f.metadata['doc']} (default: {defaults})"
            p.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_)
            continue
        if type_name(f) == STEPS:  # --checkpoints 5 250 1000
            help_ = f"{f.metadata['doc']} (default: {defaults})"
            p.add_argument(flag, dest=dest, type=int, nargs="*", default=None, metavar="STEP", help=help_)
            continue
        kind = {"float": float, "int": int}.get(type_name(f), str)
        own = [d.metadata.get("choices") for d in owners.values()]
        choices = None if not all(own) else list(dict.fromkeys(c for cs in own for c in cs))
        docs = dict.fromkeys(d.metadata["doc"] for d in owners.values())
        doc = next(iter(docs)) if len(docs) == 1 else "; ".join(f"{m}: {d.metadata['doc']}" for m, d in owners.items())
        p.add_argument(
            flag,
            dest=dest,
            type=kind,
            default=None,
            choices=choices if kind is str else None,
            help=f"{doc} (default: {defaults})",
        )


def settings_given(args, registry) -> dict:
    values = {name: getattr(args, f"setting_{name}", None) for name in registry.fields()}
    return {name: value for name, value in values.items() if value is not None}


def runtime(args):
    """Torch threads from --threads (0 keeps torch's default)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)


def run_method(args):
    """The personalization method (with its settings) that wrote the run folder ``--run``."""
    from wig.personalization import make as make_method

    if any(getattr(args, f, None) is not None for f in ("lora", "weak_lora", "denoiser", "base")):
        raise WigError("--run attaches the run's own checkpoints: give it without --lora/--weak-lora/--denoiser/--base")
    path = args.run / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise WigError(f"not a fine-tune run folder: {path} cannot be read ({err})") from None
    settings = {k: v for k, v in config.items() if k not in ("instance_prompt", "class_prompt", "seed")}
    try:
        return make_method(**settings)
    except (WigError, TypeError) as err:
        raise WigError(f"{path}: {err}") from None


def check_empty_folder(out) -> None:
    """A command that writes a folder refuses one that exists with files in it."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise WigError(f"output exists and is not an empty folder: {out}")


def check_study_folder(study_dir: Path) -> None:
    if not (study_dir / "study.json").is_file():
        raise WigError(f"{study_dir}: no study.json there (rule user_study writes results/user_study/sets)")
