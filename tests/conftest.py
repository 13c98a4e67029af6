"""Shared fixtures: one tiny SD, SANA and SDXL twin and random LoRAs per test session (per xdist worker)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
import yaml

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]

# Small enough for 2 cores, large enough that every code path (cross-attention at two
# resolutions, VAE up/down sampling) runs: 32 px images, 16x16 latents.
H = W = 32
STEPS = 8
PROMPTS = ["a photo of sks dog", "a sks dog on the beach"]
SEEDS = [0, 7]


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    from wig.models.families.sd import build_tiny_sd

    out = tmp_path_factory.mktemp("tiny-sd")
    build_tiny_sd(out)
    return out


@pytest.fixture(scope="session")
def tiny_sana(tmp_path_factory):
    from wig.models.families.sana import build_tiny_sana

    out = tmp_path_factory.mktemp("tiny-sana")
    build_tiny_sana(out)
    return out


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory):
    from wig.models.families.sdxl import build_tiny_sdxl

    out = tmp_path_factory.mktemp("tiny-sdxl")
    build_tiny_sdxl(out)
    return out


@pytest.fixture(scope="session")
def sdxl_lora_path(tiny_sdxl, tmp_path_factory):
    """A random LoRA of the SDXL twin's UNet (alpha = rank, diffusers' lora.down/up keys)."""
    from wig.models.pipelines import load_pipeline
    from wig.personalization.lora import random_lora

    pipe = load_pipeline(str(tiny_sdxl), device="cpu", dtype="float32")
    return random_lora(pipe, tmp_path_factory.mktemp("sdxl-lora"), std=0.3, seed=1)


@pytest.fixture(scope="session")
def lora_path(tiny_sd, tmp_path_factory):
    """A random LoRA large enough to change the image (alpha = rank, so its scaling is 1)."""
    from wig.models.pipelines import load_pipeline
    from wig.personalization.lora import random_lora

    pipe = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    return random_lora(pipe, tmp_path_factory.mktemp("lora"), std=0.3, seed=1)


@pytest.fixture(scope="session")
def sana_lora_path(tiny_sana, tmp_path_factory):
    """A random LoRA of the SANA twin's transformer (alpha = rank)."""
    from wig.models.pipelines import load_pipeline
    from wig.personalization.lora import random_lora

    pipe = load_pipeline(str(tiny_sana), device="cpu", dtype="float32")
    return random_lora(pipe, tmp_path_factory.mktemp("sana-lora"), std=0.3, seed=1)


@pytest.fixture(scope="session")
def weak_lora_path(tiny_sd, tmp_path_factory):
    from wig.models.pipelines import load_pipeline
    from wig.personalization.lora import random_lora

    pipe = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    return random_lora(pipe, tmp_path_factory.mktemp("weak"), std=0.2, seed=2)


def generators(seeds=SEEDS):
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def guider_example(model_dir, lora_dir) -> str:
    """The README's library example (PG as a stock diffusers guider), made runnable here: the twin's
    and the LoRA's folders for the hub names, the CPU and float32 for CUDA and float16. It leaves
    the image in ``image``."""
    readme = (ROOT / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "PersonalizationGuidance(" in b]
    code = (
        block.replace('"stabilityai/stable-diffusion-xl-base-1.0"', repr(str(model_dir)))
        .replace('"my-sdxl-dreambooth-lora/"', repr(str(lora_dir)))
        .replace("torch.float16", "torch.float32")
        .replace('pipe.to("cuda")', 'pipe.to("cpu")')
    )
    assert code.count(str(model_dir)) == 1 and code.count(str(lora_dir)) == 1, "the README example changed shape"
    return code


def to_uint8(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def reference_loop(pipe, branch_fns, combine, renoise_uncond=False, timed=False, prompts=PROMPTS):
    """A hand-written sampling loop of an SD pipeline that never touches wig's sampler (diffusers'
    ``encode_prompt``, ``randn_tensor`` and scheduler). Each branch is a separate UNet call,
    branch_fns[i](x, t, cond_embeds, uncond_embeds) -> prediction;
    ``timed``: ``combine`` also takes the step's diffusion time t / 1000."""
    from diffusers.utils.torch_utils import randn_tensor

    cond, uncond = pipe.encode_prompt(prompts, "cpu", 1, True, negative_prompt=[""] * len(prompts))
    sched = copy.deepcopy(pipe.scheduler)
    sched.set_timesteps(STEPS)
    x = randn_tensor((len(prompts), 4, H // 2, W // 2), generator=generators(), dtype=cond.dtype)
    x = x * sched.init_noise_sigma
    for t in sched.timesteps:
        outs = [fn(x, t, cond, uncond) for fn in branch_fns]
        guided = combine(*outs, time=float(t) / 1000) if timed else combine(*outs)
        if not renoise_uncond:
            x = sched.step(guided, t, x, return_dict=False)[0]
        else:  # CFG++ DDIM (Chung et al. 2024): x̂0 from the guided noise, re-noise with e_u
            prev = t - sched.config.num_train_timesteps // sched.num_inference_steps
            a_t = sched.alphas_cumprod[t]
            a_prev = sched.alphas_cumprod[prev] if prev >= 0 else sched.final_alpha_cumprod
            x0 = (x - (1 - a_t).sqrt() * guided) / a_t.sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * outs[0]
    return x


def sdxl_reference_loop(stock, prompts, seeds, size: int, steps: int, scale: float, uncond_unet):
    """A hand-written SDXL sampling loop that never touches wig's sampler or a guider: the stock
    classic pipeline's prompt encoding (zeros for the null prompt: force_zeros_for_empty_prompt),
    noise, size ids and scheduler steps; the conditional branch on ``stock.unet`` as loaded, the
    unconditional one on ``uncond_unet(stock)`` (a callable returning the prediction). Returns
    the final latents."""
    from diffusers.utils.torch_utils import randn_tensor

    cond, uncond, pooled, uncond_pooled = stock.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=True)
    assert not uncond.any() and not uncond_pooled.any()
    ids = torch.tensor([[size, size, 0, 0, size, size]] * len(prompts), dtype=cond.dtype)
    scheduler = copy.deepcopy(stock.scheduler)
    scheduler.set_timesteps(steps)
    factor = stock.vae_scale_factor
    x = randn_tensor((len(prompts), 4, size // factor, size // factor), generator=generators(seeds), dtype=cond.dtype)
    x = x * scheduler.init_noise_sigma
    weak = uncond_unet(stock)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(x, t)
            c = stock.unet(x_in, t, cond, added_cond_kwargs={"text_embeds": pooled, "time_ids": ids})[0]
            u = weak(x_in, t, uncond, added_cond_kwargs={"text_embeds": uncond_pooled, "time_ids": ids})
            x = scheduler.step(u + scale * (c - u), t, x, return_dict=False)[0]
    return x


def unet_without_lora(stock):
    """``sdxl_reference_loop``'s unconditional UNet: the stock UNet with its adapters disabled."""

    def forward(*args, **kwargs):
        stock.unet.disable_adapters()
        try:
            return stock.unet(*args, **kwargs)[0]
        finally:
            stock.unet.enable_adapters()

    return forward


def lora_written_in(model_dir, lora_file, omega: float, component: str = "unet"):
    """A second copy of a pipeline's denoiser (``component``) with θ + ω·B·A written into its
    Linear weights (no PEFT), from a diffusers LoRA file in either key style (SD's
    ``lora.down/up``, PEFT's ``lora_A/B``); the random LoRAs here have alpha = rank, scaling 1."""
    from diffusers import SD3Transformer2DModel, UNet2DConditionModel
    from safetensors.torch import load_file

    cls = {"unet": UNet2DConditionModel, "transformer": SD3Transformer2DModel}[component]
    model = cls.from_pretrained(str(model_dir), subfolder=component)
    modules = dict(model.named_modules())
    state = load_file(str(lora_file))
    assert not any("alpha" in k for k in state)
    n = 0
    for key, down in state.items():
        for a, b in ((".lora.down.weight", ".lora.up.weight"), (".lora_A.weight", ".lora_B.weight")):
            if key.endswith(a):
                up = state[key.removesuffix(a) + b]
                modules[key.removeprefix(f"{component}.").removesuffix(a)].weight.data += omega * (up @ down)
                n += 1
    assert n > 0
    return model


def unet_with_lora_written_in(model_dir, lora_file, omega: float):
    """``sdxl_reference_loop``'s unconditional UNet: `lora_written_in`, called as the loop calls it."""

    def build(stock):
        unet = lora_written_in(model_dir, lora_file, omega)
        return lambda *args, **kwargs: unet(*args, **kwargs)[0]

    return build


def point_row(method: str, **values) -> dict:
    """A grid point's manifest/score columns for hand-made tables: ``method``, every registered
    guidance parameter at the registry's default, then ``values`` (so a new plug-in's column never
    breaks a hand-made table)."""
    from wig.guidance import columns

    return {"method": method, **{name: f.default for name, f in columns().items()}, **values}


TIERS = ("check", "workflow", "cluster", "browser", "install")  # pyproject.toml's markers; `make check` runs the first


def tier_of(item) -> str | None:
    """The tier a test is in: its closest tier marker (a test's own mark overrides its file's)."""
    for mark in item.iter_markers():
        if mark.name in TIERS:
            return mark.name
    return None


def pytest_addoption(parser):
    # written --tier=NAME: pytest reads a bare `workflow` as the repository's workflow/ folder
    parser.addoption("--tier", choices=TIERS, help="run only the tests of this tier (make check: --tier=check)")


def pytest_collection_modifyitems(config, items):
    """Refuse a test without a tier: a file sets ``pytestmark = pytest.mark.<tier>``, so a new
    file that forgets it cannot drop silently out of `make check` or land in it by accident.
    ``--tier`` keeps one tier's tests (by `tier_of`, so a test marked apart from its file goes
    where its own mark says)."""
    untiered = sorted({str(item.path) for item in items if tier_of(item) is None})
    if untiered:
        raise pytest.UsageError(
            f"test files without a tier ({' | '.join(TIERS)}): {', '.join(untiered)}; "
            "set pytestmark = pytest.mark.<tier> at the top of each"
        )
    if wanted := config.getoption("--tier"):
        kept = [item for item in items if tier_of(item) == wanted]
        dropped = [item for item in items if tier_of(item) != wanted]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = kept


def copy_workflow(workdir, config: dict) -> Path:
    """``workdir`` made a runnable copy of the workflow (workflow/, config/, resources/) with
    ``config`` as its config/config.yaml."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("workflow", "config", "resources"):
        shutil.copytree(ROOT / name, workdir / name, dirs_exist_ok=True)
    write_config(workdir, config)
    return workdir


def module_snakefile() -> str:
    """docs/workflow.md's project Snakefile (wig used as a Snakemake module), pointing at this
    checkout's workflow/Snakefile."""
    page = (ROOT / "docs/workflow.md").read_text()
    (block,) = [b for b in re.findall(r"```snakemake\n(.*?)```", page, re.S) if "module wig:" in b]
    assert block.count('"/path/to/wig/workflow/Snakefile"') == 1, "docs/workflow.md's module changed shape"
    return block.replace('"/path/to/wig/workflow/Snakefile"', repr(str(ROOT / "workflow/Snakefile")).replace("'", '"'))


def deploy_project(project, config: dict) -> Path:
    """``project`` made what `snakedeploy deploy-workflow` makes of this checkout: a copy of its
    config/ (``config`` as config/config.yaml) and profiles/, and a workflow/Snakefile that uses the
    checkout's workflow as a module (docs/workflow.md "Deploy"); nothing else of the checkout —
    no rules, scripts or resources/."""
    project = Path(project)
    project.mkdir(parents=True, exist_ok=True)
    for name in ("config", "profiles"):
        shutil.copytree(ROOT / name, project / name, dirs_exist_ok=True)
    (project / "workflow").mkdir(exist_ok=True)
    (project / "workflow/Snakefile").write_text(module_snakefile())
    write_config(project, config)
    return project


def results_of(workdir) -> Path:
    """The folder the study configured in ``workdir``'s config/config.yaml writes everything into:
    <results>/<study>/ (the schema's defaults where the config leaves them out)."""
    config = yaml.safe_load((Path(workdir) / "config/config.yaml").read_text())
    return Path(workdir) / config.get("results", "results") / config.get("study", "study")


def write_config(workdir, config: dict) -> None:
    (Path(workdir) / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def run_snakemake(workdir, *args, env=None) -> subprocess.CompletedProcess:
    """``snakemake --cores 2 *args`` in ``workdir``, as a user runs it (a subprocess, offline)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", *args], cwd=workdir, capture_output=True, text=True, env=env
    )


def plan(config: dict, workdir) -> list[tuple[str, dict]]:
    """The jobs a run of ``config`` would do now — (rule, wildcards) — planned by Snakemake in this
    process (its API, no subprocess): plug-ins registered by a test are in the registries the
    workflow's study reads. The workflow is copied into ``workdir``; the environment the
    workflow sets while parsing (its CPU kernel caps) is restored afterwards."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (
        ConfigSettings,
        DAGSettings,
        OutputSettings,
        ResourceSettings,
        StorageSettings,
    )

    workdir = copy_workflow(workdir, config)
    environ = dict(os.environ)
    try:
        with SnakemakeApi(OutputSettings()) as api:
            api_workflow = api.workflow(
                resource_settings=ResourceSettings(cores=1),
                config_settings=ConfigSettings(),
                storage_settings=StorageSettings(),
                snakefile=workdir / "workflow/Snakefile",
                workdir=workdir,
            )
            api_workflow.dag(DAGSettings())
            workflow = api_workflow._workflow
            workflow._prepare_dag(forceall=False, ignore_incomplete=True, lock_warn_only=True, nolock=True)
            workflow._build_dag()
            return [(job.rule.name, dict(job.wildcards_dict)) for job in workflow.dag.needrun_jobs()]
    finally:
        os.environ.clear()
        os.environ.update(environ)


def small_config() -> dict:
    """The small study of .test/config/small.yaml (runnable by hand, see its header)."""
    return yaml.safe_load((ROOT / ".test/config/small.yaml").read_text())


@pytest.fixture(scope="session")
def small_study(tmp_path_factory):
    """The small study after one complete run on 3 fake GPU ids: (workdir, config, as_built), where
    as_built maps each table's path below results/ to its bytes right after that run (scenarios edit
    and rerun the study; the cluster test compares its SLURM run with the tables as built).
    Session-scoped, and its tests share the xdist group `small-study`: one worker runs the study
    once (a module-scoped fixture was torn down and rebuilt between interleaved modules, ≈ 400 s
    twice in one CI run)."""
    config = small_config()
    config["runtime"]["gpus"] = [0, 1, 2]  # fake device ids: not params, no job reruns for them
    workdir = copy_workflow(tmp_path_factory.mktemp("small-study"), config)
    proc = run_snakemake(workdir, "--cores", "6", "--resources", "gpu=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = results_of(workdir)
    as_built = {p.relative_to(results).as_posix(): p.read_bytes() for p in results.glob("*/*/tables/*.parquet")}
    return workdir, config, as_built


def edit_config(config: dict, **changes) -> dict:
    """A copy of ``config`` with ``a__b=value`` setting ``config["a"]["b"]``."""
    new = yaml.safe_load(yaml.safe_dump(config))
    for dotted, value in changes.items():
        *path, key = dotted.split("__")
        target = new
        for part in path:
            target = target.setdefault(part, {})  # a section the config leaves to its defaults
        target[key] = value
    return new


def make_user_study(
    folder,
    seed: int = 0,
    n_sets: int = 4,
    attention: int = 1,
    entries=None,
    exclusion=None,
    gold: int = 0,
    secret: bytes | None = None,
) -> Path:
    """A user-study folder (`wig.user_study.design.build_study`) over fabricated images: per entry
    (default one, ``toy/db-lora``, methods CFG, PG, AG) ``n_sets`` sets of flat-colour images, two
    references each; ``attention`` repeats; ``gold`` gold sets per entry (a held-out photo of the
    first set's concept beside other sets' images). ``secret``: the study's key (default: made
    from the operating system's generator, as a real study's; a fixed one makes ids and order the
    same every run)."""
    from PIL import Image

    from wig.user_study.design import QUESTIONS, attention_sets, build_study

    folder = Path(folder)
    entries = entries or {"toy/db-lora": ["CFG", "PG", "AG"]}
    source = folder.with_name(folder.name + "-sources")
    source.mkdir(parents=True, exist_ok=True)
    sets, k = [], 0
    for entry, labels in entries.items():
        for i in range(n_sets):
            paths = {}
            for label in [*labels, "ref0", "ref1"]:
                k += 1
                path = source / f"{k:04d}-{label}.png"
                Image.new("RGB", (8, 8), ((k * 37) % 256, (k * 91) % 256, (k * 13) % 256)).save(path)
                paths[label] = str(path)
            sets.append(
                {
                    "entry": entry,
                    "concept": f"concept{i}",
                    "prompt_index": i,
                    "prompt": f"a photo of sks thing number {i}",
                    "seed": i,
                    "images": {label: paths[label] for label in labels},
                    "references": [paths["ref0"], paths["ref1"]],
                }
            )
    golds = []
    for entry, labels in entries.items():
        mine = [s for s in sets if s["entry"] == entry]
        for g in range(gold):
            k += 1
            answer = source / f"{k:04d}-held-out.png"
            Image.new("RGB", (8, 8), ((k * 37) % 256, (k * 91) % 256, (k * 13) % 256)).save(answer)
            base = mine[g % len(mine)]
            decoys = [mine[(g + 1 + j) % len(mine)]["images"][labels[j % len(labels)]] for j in range(len(labels) - 1)]
            golds.append({**base, "answer": str(answer), "decoys": decoys})
    design = {
        "seed": seed,
        "questions": QUESTIONS,
        "exclusion": exclusion or {"min_consistency": 0.5, "complete": True},
        "entries": entries,
        "attention": attention_sets(len(sets), attention, seed),
        "sets": sets,
        "gold": golds,
    }
    return build_study(design, folder, secret=secret)


class StudyServer:
    """``wig serve-study`` in a subprocess on a free loopback port; its rater links read from stdout."""

    def __init__(self, folder: Path, db: Path, raters: int):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wig.cli", "serve-study", str(folder), "--db", str(db), "--port", "0"]
            + ["--raters", str(raters)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.tokens, deadline = {}, time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"serve-study exited: {self.proc.stderr.read()}")
            if m := re.match(r"rater (\d+): (http://[^/]+)/r/(\w+)", line):
                self.base, self.tokens[int(m[1])] = m[2], m[3]
            if line.startswith("serving on"):
                return
        raise AssertionError("serve-study did not start in 60 s")

    def call(self, token: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.base}/api/{token}/{path}", data=data, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)


def png_chunks(data: bytes) -> list[str]:
    """The chunk types of a PNG file's bytes, in order, each chunk's CRC checked: what a served or
    written image carries besides its pixels (``IHDR``, ``IDAT``, ``IEND`` alone: nothing)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = [], 8
    while at < len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        kind = data[at + 4 : at + 8]
        crc = int.from_bytes(data[at + 8 + length : at + 12 + length], "big")
        assert zlib.crc32(kind + data[at + 8 : at + 8 + length]) == crc, kind
        chunks.append(kind.decode())
        at += 12 + length
    return chunks
