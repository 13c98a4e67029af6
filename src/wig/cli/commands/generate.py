"""`wig generate`: images with a guidance method, every branch of a step in one batched forward."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from wig.atomic import replace_file, tmp_path
from wig.cli.options import SEED, add_runtime, add_sampling, add_settings, run_method, runtime, settings_given
from wig.errors import WigError
from wig.guidance import REGISTRY, make

NAME = "generate"
ORDER = 30  # its place in `wig --help`


def add_parser(sub) -> argparse.ArgumentParser:
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
    p.add_argument("--seed", type=SEED, action="append", required=True, help="seed (repeat for a batch)")
    p.add_argument(
        "--extra-text",
        action="append",
        default=[],
        metavar="NAME=TEXT",
        help='a named text a method\'s branch is conditioned on (e.g. class_prompt="a dog on the beach"); '
        "once, or once per image in prompt order",
    )
    add_sampling(p)
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
    add_runtime(p)
    add_settings(p, REGISTRY)  # last: a setting named like a command flag gets --setting-<name>
    return p


def check(args) -> None:
    """What argparse cannot see, before torch is imported: the texts, images and outputs."""
    prompts, seeds = pair(args.prompt, args.seed)
    texts_given(args, len(prompts))
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
    out_paths(args.out, seeds, overwrite=args.overwrite)


def run(args) -> None:
    import torch
    from PIL.PngImagePlugin import PngInfo

    from wig.guidance import RESULT
    from wig.models.pipelines import load_pipeline
    from wig.personalization.lora import attach_loras, lora_file
    from wig.sampling.sampler import sample

    prompts, seeds = pair(args.prompt, args.seed)
    paths = out_paths(args.out, seeds, overwrite=args.overwrite)
    for path in (args.lora, args.weak_lora):
        if path is not None:
            lora_file(path)  # fail before the model load
    guidance = chosen_guidance(args)
    extra_texts = texts_given(args, len(prompts))
    method = run_method(args) if args.run is not None else None
    runtime(args)
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
        images=edit_images(args, len(prompts)),
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


def chosen_guidance(args):
    """The method with the settings given on the command line (its defaults for the others)."""
    return make(args.method, **settings_given(args, REGISTRY))


def pair(prompts: list[str], seeds: list[int]) -> tuple[list[str], list[int]]:
    if len(prompts) == 1:
        prompts = prompts * len(seeds)
    if len(seeds) == 1:
        seeds = seeds * len(prompts)
    if len(prompts) != len(seeds):
        raise WigError(f"{len(prompts)} prompts and {len(seeds)} seeds: give one, or as many of each")
    return prompts, seeds


def edit_images(args, n: int):
    """The images to edit, one per prompt (a single one is repeated), or None."""
    if not args.image:
        return None
    if len(args.image) not in (1, n):
        raise WigError(f"{len(args.image)} --image for {n} images: give one, or one per image")
    from wig.concepts import load_image

    images = [load_image(path) for path in args.image]
    return images * n if len(images) == 1 else images


def texts_given(args, n: int) -> dict[str, list[str]]:
    """``--extra-text NAME=TEXT`` flags → {name: one text per image}; every text the method's
    branches name must be given, once or once per image."""
    texts: dict[str, list[str]] = {}
    for item in args.extra_text:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise WigError(f"--extra-text takes NAME=TEXT, got {item!r}")
        texts.setdefault(name, []).append(text)
    needed = chosen_guidance(args).extra_texts
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


def out_paths(pattern: str, seeds: list[int], overwrite: bool = False) -> list[Path]:
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
