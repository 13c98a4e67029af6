"""`wig` command line: tiny twins, concept preparation, class images, fine-tuning, guided sampling."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

from wig.atomic import atomic_dir, replace_file, tmp_path
from wig.errors import WigError
from wig.guidance import REGISTRY, make
from wig.personalization import REGISTRY as PERSONALIZATION
from wig.settings import STEPS, type_name

# Arguments are checked by argparse and `_check_args` before torch and diffusers are imported
# (6-12 s): a wrong argument is refused at once.


def _int_in(low: int, high: int | None = None, what: str = "an integer"):
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


_SEED = _int_in(0, 2**64, "a seed")  # what torch.Generator.manual_seed takes
_POSITIVE = _int_in(1, what="a positive integer")
_DEVICE = re.compile(r"^(auto|cpu|mps|(cuda|xpu)(:\d+)?)$")


def _trained() -> list[str]:
    """`wig train`'s methods: the registered ones that train (read when the parser is built, so a
    plug-in's too)."""
    return sorted(name for name, cls in PERSONALIZATION.items() if cls.trains)


def _encoder_kinds() -> dict:
    """`wig embed`'s encoder kinds (`wig.evaluation.encoders.ENCODERS`; no torch at import)."""
    from wig.evaluation.encoders import ENCODERS

    return dict(ENCODERS)


def _device(text: str) -> str:
    if not _DEVICE.match(text):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}: auto, cpu, cuda, cuda:N, mps, xpu or xpu:N")
    return text


def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        type=_device,
        help="torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1, …",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "float16", "bfloat16"),
        help="weights/activations dtype; auto = float32 on CPU, float16 on GPU",
    )
    p.add_argument(
        "--threads", type=_int_in(0, what="--threads"), default=0, help="torch CPU threads (0: torch's default)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--negative-prompt", default="", help="negative prompt for the ∅ branch (default empty)")
    p.add_argument("--steps", type=_POSITIVE, default=50, help="sampling steps (default 50)")
    p.add_argument(
        "--height",
        type=_POSITIVE,
        default=None,
        help="image height, a multiple of the model's size step (8 for SD; default: the model's)",
    )
    p.add_argument(
        "--width",
        type=_POSITIVE,
        default=None,
        help="image width, a multiple of the model's size step (8 for SD; default: the model's)",
    )


def _add_settings(p: argparse.ArgumentParser, registry, methods=None) -> None:
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


def _settings_given(args, registry) -> dict:
    values = {name: getattr(args, f"setting_{name}", None) for name in registry.fields()}
    return {name: value for name, value in values.items() if value is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wig",
        description="Personalization guidance for text-to-image diffusion models (PG, CFG, AG, CFG++).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "build-tiny",
        help="build a tiny random-init twin of a model family and save it with save_pretrained",
        description="Build a seeded random-init twin (same classes and layout as the real checkpoint) "
        "that stock diffusers loads with from_pretrained. Same seed → byte-identical files.",
    )
    from wig.models.families import FAMILIES, tiny_kinds

    twins = {k: t for k, t in tiny_kinds().items() if not t.pretrained}
    p.add_argument(
        "--family",
        required=True,
        choices=sorted(twins),
        help="the twin to build, by its model family's registered twins: "
        + "; ".join(f"{k} = {FAMILIES[t.family].summary}" for k, t in twins.items()),
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (a diffusers pipeline folder)")
    p.add_argument("--seed", type=_SEED, default=None, help="init seed (default: the config's)")
    p.add_argument("--config", type=Path, default=None, help="JSON config replacing the shipped tiny config")

    p = sub.add_parser(
        "random-lora",
        help="write a seeded random UNet LoRA in diffusers format (tests, benchmarks)",
        description="Write pytorch_lora_weights.safetensors with random A and B matrices, so that "
        "it visibly changes the model's output. A stand-in for a trained LoRA, never a result.",
    )
    p.add_argument("--model", required=True, help="diffusers model folder or hub name")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--rank", type=_POSITIVE, default=4, help="LoRA rank (default 4)")
    p.add_argument("--std", type=float, default=0.1, help="std of the random A and B entries (default 0.1)")
    p.add_argument("--seed", type=_SEED, default=0, help="seed (default 0)")

    p = sub.add_parser(
        "generate",
        help="generate images with a guidance method",
        description=f"Sample images with {'/'.join(REGISTRY)} guidance. All branches of a step run as "
        "one batched forward with per-sample LoRA scales. Prompts and seeds pair up one to one; a single "
        "prompt or seed is repeated to the other's length. Image i starts from the latent stock diffusers "
        "draws with generator=torch.Generator('cpu').manual_seed(seed_i).",
    )
    p.add_argument("--model", required=True, help="diffusers model folder or hub name (HF_HUB_OFFLINE is honoured)")
    p.add_argument(
        "--lora", type=Path, help="fine-tuned LoRA: folder with pytorch_lora_weights.safetensors, or the file"
    )
    p.add_argument(
        "--weak-lora",
        type=Path,
        help="weak (early) LoRA checkpoint, attached as adapter 'weak' for the methods that use it",
    )
    p.add_argument(
        "--denoiser",
        type=Path,
        help="a full fine-tune of the model's denoiser given as weights (Diffusion-DPO's unet/ folder, a pipeline "
        "folder or a .safetensors state dict): θω = θ + ω(θ' − θ) for every tensor",
    )
    p.add_argument(
        "--image",
        type=Path,
        action="append",
        help="the image to edit (an InstructPix2Pix model, with an image-edit guidance method): once, or once per "
        "image in prompt order",
    )
    p.add_argument(
        "--base",
        type=Path,
        help="for a model that is itself a fine-tune (InstructPix2Pix): the pretrained denoiser it was tuned from "
        "(SD 1.5's unet/), PG's θ; its first convolution is zero-padded to the model's input channels",
    )
    p.add_argument(
        "--run",
        type=Path,
        help="a fine-tune run folder (wig train's --out, any personalization method): attached as the method "
        "its config.json names does it (instead of --lora/--weak-lora)",
    )
    p.add_argument("--method", required=True, choices=sorted(REGISTRY), help="guidance method")
    p.add_argument("--prompt", required=True, action="append", help="prompt (repeat for a batch)")
    p.add_argument("--seed", type=_SEED, action="append", required=True, help="seed (repeat for a batch)")
    p.add_argument(
        "--extra-text",
        action="append",
        default=[],
        metavar="NAME=TEXT",
        help='a named text a method\'s branch is conditioned on (e.g. class_prompt="a dog on the beach"); '
        "once, or once per image in prompt order",
    )
    _add_sampling(p)
    p.add_argument(
        "--scheduler",
        default="auto",
        choices=("auto", "ddim", "model"),
        help="auto (default): DDIM for SD, the checkpoint's flow DPM-Solver for SANA; "
        "ddim; or the model's own scheduler",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output PNG; with several images a pattern with {index} and/or {seed}, e.g. out/{index:02d}.png",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (default: refuse)")
    _add_runtime(p)
    _add_settings(p, REGISTRY)  # last: a setting named like a command flag gets --setting-<name>

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
    p.add_argument("--seed", type=_SEED, action="append", default=None, help="seed (repeat; default 0)")
    p.add_argument("--scale", type=float, default=7.5, help="CFG λ (default 7.5)")
    p.add_argument("--probe", type=float, default=0.5, help="the diffusion time the maps are read at (default 0.5)")
    p.add_argument("--top", type=float, default=0.25, help="the subject region's share of pixels (default 0.25)")
    _add_sampling(p)
    p.add_argument("--out", required=True, type=Path, help="output Parquet file")
    _add_runtime(p)

    p = sub.add_parser(
        "prepare",
        help="validate and normalise a concept's reference images",
        description="Decode every image of a concept folder (jpg/jpeg/png/webp, any size), apply EXIF "
        "orientation, convert to 8-bit RGB (16-bit rescaled, transparency on white, CMYK converted) and "
        "write NN.png + manifest.parquet. A broken image fails with its name and writes nothing.",
    )
    p.add_argument("--concept-dir", required=True, type=Path, help="folder of the concept's images")
    p.add_argument("--out", required=True, type=Path, help="output folder (must not exist or be empty)")
    p.add_argument(
        "--max-pixels",
        type=_POSITIVE,
        default=None,
        help="refuse photos with more pixels (default 256,000,000: PIL's bomb guard at wig's limit)",
    )
    p.add_argument(
        "--max-side",
        type=_POSITIVE,
        default=None,
        help="keep photos at most this long on their long side (default 2048, LANCZOS)",
    )

    p = sub.add_parser(
        "class-images",
        help="generate prior-preservation images of a class with the base model",
        description="Sample COUNT images of PROMPT with CFG; image i uses seed SEED+i. Writes NNNN.png + "
        "manifest.parquet.",
    )
    p.add_argument("--model", required=True, help="diffusers model folder or hub name")
    p.add_argument("--prompt", required=True, help='class prompt, e.g. "a photo of dog"')
    p.add_argument("--count", type=_POSITIVE, required=True, help="number of images")
    p.add_argument("--seed", type=_SEED, default=0, help="seed of the first image (default 0)")
    p.add_argument("--scale", type=float, default=7.5, help="CFG scale (default 7.5)")
    p.add_argument("--batch-size", type=_POSITIVE, default=4, help="images per sampling call (default 4)")
    _add_sampling(p)
    p.add_argument("--out", required=True, type=Path, help="output folder")
    _add_runtime(p)

    p = sub.add_parser(
        "train",
        help="fine-tune on a concept's images with a personalization method: full and weak checkpoints and a log",
        description="Fine-tune the model on a concept's images (with prior preservation when class images are "
        f"given) with one of {'/'.join(_trained())}. One run writes OUT/full/ and OUT/weak/ (the "
        "method's checkpoints, e.g. a diffusers LoRA folder), OUT/log.parquet "
        "(step, loss, instance_loss, prior_loss, lr, seconds) and OUT/config.json. OUT appears only "
        "when the run completes.",
    )
    p.add_argument("--model", required=True, help="diffusers model folder or hub name")
    p.add_argument("--method", required=True, choices=_trained(), help="personalization method")
    p.add_argument(
        "--instance-dir", required=True, type=Path, help="the concept's images (a prepared folder or any image folder)"
    )
    p.add_argument("--instance-prompt", required=True, help='e.g. "a photo of sks dog"')
    p.add_argument("--class-dir", type=Path, help="class images for prior preservation")
    p.add_argument("--class-prompt", help='e.g. "a photo of dog" (needed with --class-dir)')
    p.add_argument("--seed", type=_SEED, default=0, help="seed (default 0)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    _add_runtime(p)
    _add_settings(p, PERSONALIZATION, _trained())

    p = sub.add_parser(
        "embed",
        help="embed the images of a prepared or generated folder (or prompt texts) as Parquet",
        description="Embed every image listed in FOLDER/manifest.parquet with an encoder (DINO, CLIP, PickScore), "
        "once per protocol, in batches; or, with --text, embed texts with a text encoder (CLIP, PickScore). Writes "
        "one Parquet file (schema in docs/formats.md).",
    )
    kinds = _encoder_kinds()
    p.add_argument("--kind", required=True, choices=sorted(kinds), help="encoder kind")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--tiny", type=Path, help="folder of a tiny twin built with --build-tiny")
    source.add_argument("--name", help="real checkpoint: " + "; ".join(f"{k}: {c.real}" for k, c in kinds.items()))
    p.add_argument(
        "--pretrained", help="a pretrained tag, for kinds that load by name + tag (open_clip's, e.g. openai)"
    )
    p.add_argument("--processor", help="a second hub repo with the preprocessor, for kinds that read one")
    p.add_argument("--build-tiny", action="store_true", help="first build the tiny twin into --tiny")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--images", type=Path, help="folder with manifest.parquet (wig prepare / a generation job)")
    what.add_argument(
        "--text",
        action="append",
        help="a text to embed (kinds with a text tower: "
        + ", ".join(k for k, c in kinds.items() if c.texts)
        + "; repeat)",
    )
    p.add_argument(
        "--protocol",
        action="append",
        choices=("dreammatcher", "standard"),
        help="preprocessing protocol (repeat; default dreammatcher)",
    )
    p.add_argument("--batch-size", type=_POSITIVE, default=32, help="images per forward (default 32)")
    p.add_argument("--out", required=True, type=Path, help="output .parquet file")
    _add_runtime(p)

    p = sub.add_parser(
        "plan",
        help="what a study config costs before it runs: fine-tuning steps, images, denoiser evaluations, hours",
        description="Count the fine-tuning steps, class images, images and denoiser evaluations a workflow config "
        "implies (all of them, made or not) and estimate the wall time at the rates the last run under --results "
        "measured (its runs' logs, its generation manifests). Run from the workflow's folder.",
    )
    p.add_argument("--configfile", required=True, type=Path, help="the study's config (as snakemake --configfile)")
    p.add_argument("--results", type=Path, default=Path("results"), help="a run's results folder to measure rates from")
    p.add_argument(
        "--directory",
        type=Path,
        default=None,
        help="the folder the config's relative paths (and --results) are read from, as snakemake --directory "
        "(default: the working directory)",
    )

    p = sub.add_parser(
        "serve-study",
        help="serve a blind user study (rule user_study's folder) to raters in the browser",
        description="Serve the sets of STUDY_DIR (rule user_study's results/user_study/sets) one at a time to raters "
        "who open their link: references, prompt, the images in an order of their own, subject and text questions "
        "with 'undecided'. Votes go to an SQLite database (one transaction per answer), resumed after a reload or a "
        "restart. Prints the admin page's link (progress per rater, more raters) and every rater's link.",
    )
    p.add_argument("study_dir", type=Path, metavar="STUDY_DIR", help="the study folder (its study.json and images/)")
    p.add_argument("--db", type=Path, help="the votes database (default: STUDY_DIR.votes.sqlite beside the folder)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument(
        "--public-url",
        help="the address raters open (https://study.example.org behind a proxy): the printed and admin links use it",
    )
    p.add_argument("--port", type=_int_in(0, 65536, "a port"), default=8765, help="0: a free port (printed)")
    p.add_argument(
        "--raters", type=_int_in(0, 10001, "a rater count"), default=0, help="make sure this many raters exist"
    )
    p.add_argument("--threads", type=_POSITIVE, default=8, help="request threads")

    p = sub.add_parser(
        "export-votes",
        help="a user study's votes as Parquet, each choice resolved to its method",
        description="Write the votes of STUDY_DIR's database as Parquet (wig.user_study.analysis.VOTE_SCHEMA): "
        "rater, set, entry, question, the chosen image and its method, where the rater saw it, attention checks.",
    )
    p.add_argument("study_dir", type=Path, metavar="STUDY_DIR", help="the study folder")
    p.add_argument("--db", type=Path, help="the votes database (default: STUDY_DIR.votes.sqlite beside the folder)")
    p.add_argument("--out", required=True, type=Path, help="output .parquet file")
    return parser


def _cmd_build_tiny(args) -> None:
    from wig.models.families import build_tiny, default_config

    if args.config is not None:
        try:
            config = json.loads(args.config.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise WigError(f"cannot read tiny-model config {args.config}: {err}") from None
    else:
        config = default_config(args.family)
    with atomic_dir(args.out) as tmp:
        build_tiny(args.family, tmp, config=config, seed=args.seed)


def _cmd_random_lora(args) -> None:
    from wig.models.pipelines import load_pipeline
    from wig.personalization.lora import random_lora

    pipe = load_pipeline(args.model, device="cpu", dtype="float32")
    with atomic_dir(args.out) as tmp:
        random_lora(pipe, tmp, rank=args.rank, std=args.std, seed=args.seed)


def _pair(prompts: list[str], seeds: list[int]) -> tuple[list[str], list[int]]:
    if len(prompts) == 1:
        prompts = prompts * len(seeds)
    if len(seeds) == 1:
        seeds = seeds * len(prompts)
    if len(prompts) != len(seeds):
        raise WigError(f"{len(prompts)} prompts and {len(seeds)} seeds: give one, or as many of each")
    return prompts, seeds


def _edit_images(args, n: int):
    """The images to edit, one per prompt (a single one is repeated), or None."""
    if not args.image:
        return None
    if len(args.image) not in (1, n):
        raise WigError(f"{len(args.image)} --image for {n} images: give one, or one per image")
    from wig.concepts import load_image

    images = [load_image(path) for path in args.image]
    return images * n if len(images) == 1 else images


def _extra_texts(args, n: int) -> dict[str, list[str]]:
    """``--extra-text NAME=TEXT`` flags → {name: one text per image}; every text the method's
    branches name must be given, once or once per image."""
    texts: dict[str, list[str]] = {}
    for item in args.extra_text:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise WigError(f"--extra-text takes NAME=TEXT, got {item!r}")
        texts.setdefault(name, []).append(text)
    needed = _guidance(args).extra_texts
    for name in needed:
        if name not in texts:
            raise WigError(f"--method {args.method} needs --extra-text {name}=TEXT")
    for name, values in texts.items():
        if name not in needed:
            raise WigError(f"--extra-text {name}: --method {args.method} uses no text {name!r}")
        if len(values) not in (1, n):
            raise WigError(
                f"--extra-text {name} is given {len(values)} times for {n} images: give it once or {n} times"
            )
        texts[name] = values * n if len(values) == 1 else values
    return texts


def _out_paths(pattern: str, seeds: list[int], overwrite: bool = False) -> list[Path]:
    if not pattern.lower().endswith(".png"):
        raise WigError(f"--out must be a .png path, got {pattern}")
    if len(seeds) > 1 and "{" not in pattern:
        raise WigError(f"{len(seeds)} images need an --out pattern with {{index}} or {{seed}}, got {pattern}")
    try:
        paths = [Path(pattern.format(index=i, seed=s)) for i, s in enumerate(seeds)]
    except (KeyError, IndexError, ValueError) as err:
        raise WigError(f"bad --out pattern {pattern!r}: {err}") from None
    if len(set(paths)) != len(paths):
        raise WigError(f"--out pattern {pattern!r} gives the same file to several images")
    for path in paths:
        if path.is_dir():
            raise WigError(f"--out {path} is a folder: name a .png file in it")
        if path.exists() and not overwrite:
            raise WigError(f"output exists: {path} (--overwrite replaces it)")
    return paths


def _cmd_generate(args) -> None:
    import torch
    from PIL.PngImagePlugin import PngInfo

    from wig.guidance import RESULT
    from wig.models.pipelines import load_pipeline
    from wig.personalization.lora import attach_loras, lora_file
    from wig.sampling.sampler import sample

    prompts, seeds = _pair(args.prompt, args.seed)
    paths = _out_paths(args.out, seeds, overwrite=args.overwrite)
    for path in (args.lora, args.weak_lora):
        if path is not None:
            lora_file(path)  # fail before the model load
    guidance = _guidance(args)
    extra_texts = _extra_texts(args, len(prompts))
    method = _run_method(args) if args.run is not None else None
    _runtime(args)
    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype, scheduler=args.scheduler)
    weights = None
    if method is not None:
        from wig.branches import WEAK, adapter_step

        weights = method.attach(pipe, args.run, weak=WEAK in guidance.required_adapters())
        steps = sorted(k for k in map(adapter_step, guidance.required_adapters()) if k is not None)
        if steps:  # DreamBlend's underfit/overfit at steps the run kept
            method.attach_steps(pipe, args.run, steps)
    elif args.denoiser is not None:
        from wig.personalization.full_weights import attach_full_weights

        weights = attach_full_weights(pipe, args.denoiser)
    elif args.base is not None:
        from wig.personalization.full_weights import attach_base

        weights = attach_base(pipe, args.base)
    else:
        attach_loras(pipe, args.lora, args.weak_lora)
    trajectories = sample(
        pipe,
        prompts,
        guidance,
        generators=[torch.Generator("cpu").manual_seed(s) for s in seeds],
        weights=weights,
        negative_prompt=args.negative_prompt,
        extra_texts=extra_texts,
        images=_edit_images(args, len(prompts)),
        steps=args.steps,
        height=args.height,
        width=args.width,
        progress=not args.quiet,
        trajectories=True,
    )
    images = trajectories.pop(RESULT)
    for name, companions in trajectories.items():  # DreamBlend's reference: <out>.reference.png beside
        for image, path in zip(companions, paths):
            beside = path.with_suffix(f".{name}.png")
            beside.parent.mkdir(parents=True, exist_ok=True)
            image.save(tmp_path(beside), format="PNG")
            replace_file(tmp_path(beside), beside)
    for image, path, prompt, seed in zip(images, paths, prompts, seeds):
        info = PngInfo()
        meta = {
            "prompt": prompt,
            "seed": seed,
            **guidance.settings(),
            "steps": args.steps,
            "model": str(args.model),
        }
        info.add_text("wig", json.dumps(meta))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp_path(path)
        image.save(tmp, format="PNG", pnginfo=info)
        replace_file(tmp, path)


def _guidance(args):
    """The method with the settings given on the command line (its defaults for the others)."""
    return make(args.method, **_settings_given(args, REGISTRY))


def _run_method(args):
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


def _personalization(args):
    """The personalization method with the settings given on the command line."""
    from wig.personalization import REGISTRY as METHODS
    from wig.personalization import make as make_method

    return make_method(args.method, **_settings_given(args, METHODS))


def _runtime(args):
    """Torch threads from --threads (0 keeps torch's default)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)


def _cmd_collapse(args) -> None:
    from wig.branches import FULL, WEAK, step_adapter
    from wig.evaluation.attention_collapse import attention_collapse, collapse_summary
    from wig.models.pipelines import load_pipeline

    method = _run_method(args)
    labels = {}
    for name in args.checkpoint:
        if name in (FULL, WEAK):
            labels[name] = name
        elif name.isdigit():
            labels[f"step {int(name)}"] = step_adapter(int(name))
        else:
            raise WigError(f"--checkpoint {name!r}: weak, full or a step number")
    steps = [int(name) for name in args.checkpoint if name.isdigit()]
    _runtime(args)
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


def _cmd_prepare(args) -> None:
    from wig.concepts import MAX_PIXELS, MAX_SIDE, prepare_concept

    manifest = prepare_concept(
        args.concept_dir, args.out, max_pixels=args.max_pixels or MAX_PIXELS, max_side=args.max_side or MAX_SIDE
    )
    print(f"{len(manifest)} images -> {args.out}")


def _cmd_class_images(args) -> None:
    from wig.models.pipelines import load_pipeline
    from wig.personalization.training import generate_class_images

    _runtime(args)
    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype)
    generate_class_images(
        pipe,
        args.prompt,
        args.count,
        args.out,
        seed=args.seed,
        steps=args.steps,
        scale=args.scale,
        height=args.height,
        width=args.width,
        batch_size=args.batch_size,
        negative_prompt=args.negative_prompt,
        progress=not args.quiet,
    )


def _cmd_train(args) -> None:
    from wig.concepts import read_images
    from wig.models.pipelines import load_pipeline
    from wig.personalization import Subject

    method = _personalization(args)
    if args.class_dir is not None and args.class_prompt is None:
        raise WigError("--class-dir needs --class-prompt")
    subject = Subject(
        read_images(args.instance_dir),
        args.instance_prompt,
        read_images(args.class_dir) if args.class_dir is not None else None,
        args.class_prompt,
    )
    _runtime(args)
    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype)
    log = method.train(pipe, subject, args.out, seed=args.seed, progress=not args.quiet)
    print(f"{method.name}: {method.steps} steps, final loss {log['loss'][-1]:.4f} -> {args.out}")


def _cmd_embed(args) -> None:
    from wig.evaluation.encoders import build_tiny_encoder, embed_images, embed_texts, load_encoder

    _runtime(args)
    if args.build_tiny:
        if args.tiny is None:
            raise WigError("--build-tiny needs --tiny FOLDER")
        with atomic_dir(args.tiny) as tmp:
            build_tiny_encoder(args.kind, tmp)
    spec = {"kind": args.kind, "tiny": True} if args.tiny else {"kind": args.kind, "name": args.name}
    for key in ("pretrained", "processor"):
        if getattr(args, key):
            spec[key] = getattr(args, key)
    encoder = load_encoder(spec, args.tiny, device=args.device)
    if args.text:
        frame = embed_texts(encoder, args.text)
    else:
        frame = embed_images(encoder, args.images, args.protocol or ["dreammatcher"], batch_size=args.batch_size)
    tmp = tmp_path(args.out)
    frame.write_parquet(tmp)
    replace_file(tmp, args.out)
    print(f"{len(frame)} rows ({encoder.id}) -> {args.out}")


def _cmd_plan(args) -> None:
    import contextlib

    configfile = args.configfile.resolve()
    if args.directory is not None and not args.directory.is_dir():
        raise WigError(f"--directory {args.directory}: no such folder")
    with contextlib.chdir(args.directory) if args.directory is not None else contextlib.nullcontext():
        _plan(configfile, args)


def _plan(configfile: Path, args) -> None:
    import yaml

    from wig.workflow.config_schema import read_config
    from wig.workflow.cost import estimate_lines, measured_rates, study_cost
    from wig.workflow.study import Study

    try:
        config = yaml.safe_load(configfile.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WigError(f"--configfile {args.configfile}: {first}") from None
    if not isinstance(config, dict):
        raise WigError(f"--configfile {args.configfile}: not a mapping of settings")
    read_config(config, where=f"--configfile {args.configfile}")  # the shipped schema, as the workflow reads it
    study = Study.from_config(config)
    cost = study_cost(study)
    for line in cost.lines() + estimate_lines(cost, measured_rates(study, args.results)):
        print(line)


def _cmd_serve_study(args) -> None:
    from wig.user_study.server import serve_study

    serve_study(args.study_dir, args.db, args.host, args.port, args.raters, args.threads, args.public_url)


def _cmd_export_votes(args) -> None:
    from wig.user_study.analysis import read_votes, vote_frame
    from wig.user_study.design import UserStudy
    from wig.user_study.server import default_db

    study = UserStudy.load(args.study_dir)
    rows, _ = read_votes(study, args.db or default_db(args.study_dir))
    frame = vote_frame(study, rows)
    tmp = tmp_path(args.out)
    frame.write_parquet(tmp)
    replace_file(tmp, args.out)
    print(f"{len(frame)} answers -> {args.out}")


COMMANDS = {
    "build-tiny": _cmd_build_tiny,
    "random-lora": _cmd_random_lora,
    "generate": _cmd_generate,
    "collapse": _cmd_collapse,
    "prepare": _cmd_prepare,
    "class-images": _cmd_class_images,
    "train": _cmd_train,
    "embed": _cmd_embed,
    "plan": _cmd_plan,
    "serve-study": _cmd_serve_study,
    "export-votes": _cmd_export_votes,
}
# commands that import neither torch nor diffusers (a server must start at once)
LIGHT = ("plan", "serve-study", "export-votes")


FOLDER_OUTPUTS = ("build-tiny", "random-lora", "prepare", "class-images", "train")


def _check_args(args) -> None:
    """What argparse cannot see, before any heavy import: a run must not train for an hour to
    find its output taken."""
    if args.command == "train":
        _personalization(args)
    if args.command == "generate":
        prompts, seeds = _pair(args.prompt, args.seed)
        _extra_texts(args, len(prompts))
        for flag in ("denoiser", "base"):
            if getattr(args, flag) is not None and not getattr(args, flag).exists():
                raise WigError(f"--{flag} not found: {getattr(args, flag)}")
        attached = [f"--{f}" for f in ("lora", "denoiser", "base") if getattr(args, f) is not None]
        if len(attached) > 1:
            raise WigError(f"{' and '.join(attached)}: attach one fine-tune")
        if args.image and len(args.image) not in (1, len(prompts)):
            raise WigError(f"{len(args.image)} --image for {len(prompts)} images: give one, or one per image")
        for path in args.image or ():
            if not path.is_file():
                raise WigError(f"--image not found: {path}")
        _out_paths(args.out, seeds, overwrite=args.overwrite)
    elif args.command in FOLDER_OUTPUTS:
        out = Path(args.out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise WigError(f"output exists and is not an empty folder: {out}")
    elif args.command in ("serve-study", "export-votes") and not (args.study_dir / "study.json").is_file():
        raise WigError(f"{args.study_dir}: no study.json there (rule user_study writes results/user_study/sets)")
    elif args.command == "embed" and Path(args.out).is_dir():
        raise WigError(f"--out {args.out} is a folder: name a .parquet file")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_args(args)
    except WigError as err:
        print(f"wig {args.command}: error: {err}", file=sys.stderr)
        return 1
    if args.command not in LIGHT:
        # library chatter (loading bars, "no text-encoder LoRA keys" notes) would bury our one-line
        # errors and the sampling progress bar
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        for log in (dlog, tlog):
            log.set_verbosity(log.CRITICAL)
            log.disable_progress_bar()
    try:
        COMMANDS[args.command](args)
    except WigError as err:
        print(f"wig {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
