"""A learned image encoder of the synthetic world: the stand-in for DINO that the study can check.

Real DINO scores are read as subject fidelity, but nothing says how well they track it. In the
synthetic world the oracle reads identity from pixels exactly, so an embedding metric computed the
way DINO's is (mean cosine to the subject's reference images) can be set beside it: how often does
it rank methods and grid points as the oracle does? This module trains that encoder (rule
train_encoder); `wig.evaluation.plugins.scene` loads it as the ``scene`` encoder kind.

The network: four 3×3 conv stages (32→16→8 px, GroupNorm, SiLU), global average pooling, a linear
projection to the embedding (no activation, so cosines spread over [-1, 1] as a ViT's CLS token's
do). It is trained on freshly rendered scenes — half of them two-tone objects of every pattern, so
the embedding has to see patterns, which pretraining of the base never shows — to classify what the
renderer drew from the embedding alone: shape, first colour, pattern (or none), second colour (or
none) and background, one linear head each, summed cross-entropy. Light Gaussian pixel noise and
±1 px shifts keep it from keying on the renderer's exact edges. The labels are the renderer's, not
the oracle's: the encoder never sees an oracle score, so agreement with it is not built in.

Everything random comes from ``seed``: same settings → the same weights on the CPU.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import nn
from torch.nn import functional as F

from wig.errors import WigError
from wig.synthetic.world import PALETTE, PATTERNS, SHAPES, Layout, Scene, render_array

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
DEFAULTS = {"steps": 2000, "batch_size": 64, "lr": 2e-3, "width": 16, "dim": 64, "size": 32, "seed": 0}
_COLOURS = list(PALETTE)
_PATTERNS = list(PATTERNS)
# label heads: name → classes (index 0 of pattern and colour2 = "none": a plain object)
HEADS = {
    "shape": len(SHAPES),
    "colour": len(_COLOURS),
    "pattern": len(_PATTERNS) + 1,
    "colour2": len(_COLOURS) + 1,
    "background": len(_COLOURS),
}


class SceneNet(nn.Module):
    """conv stages → pooled features → embedding (``forward``); label heads on the embedding."""

    def __init__(self, width: int = 32, dim: int = 64):
        super().__init__()

        def stage(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())

        w = width
        self.features = nn.Sequential(
            stage(3, w, 1), stage(w, 2 * w, 2), stage(2 * w, 2 * w, 1), stage(2 * w, 4 * w, 2)
        )
        self.project = nn.Linear(4 * w, dim)
        self.heads = nn.ModuleDict({name: nn.Linear(dim, n) for name, n in HEADS.items()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) in [-1, 1] → (N, dim) embeddings."""
        return self.project(self.features(x).mean(dim=(2, 3)))


def settings_of(spec: dict) -> dict:
    """The training settings of an encoder entry: ``train:`` over the defaults, with its ``seed``."""
    unknown = set(spec.get("train") or {}) - set(DEFAULTS)
    if unknown:
        raise WigError(f"encoders.scene.train: unknown setting(s) {sorted(unknown)}; choose from {sorted(DEFAULTS)}")
    return {**DEFAULTS, **(spec.get("train") or {}), "seed": spec.get("seed", 0)}


def _scene(rng: np.random.Generator, layout: Layout) -> tuple[Scene, dict]:
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour, background, colour2 = (_COLOURS[i] for i in rng.choice(len(_COLOURS), 3, replace=False))
    cx, cy, radius = layout.draw(rng)
    labels = {"shape": SHAPES.index(shape), "colour": _COLOURS.index(colour), "background": _COLOURS.index(background)}
    if rng.random() < 0.5:
        pattern = _PATTERNS[rng.integers(len(_PATTERNS))]
        scene = Scene(shape, colour, background, cx, cy, radius, pattern, colour2, layout.size)
        return scene, labels | {"pattern": 1 + _PATTERNS.index(pattern), "colour2": 1 + _COLOURS.index(colour2)}
    return Scene(shape, colour, background, cx, cy, radius, size=layout.size), labels | {"pattern": 0, "colour2": 0}


def _batch(rng: np.random.Generator, layout: Layout, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    drawn = [_scene(rng, layout) for _ in range(n)]
    arr = np.stack([render_array(s) for s, _ in drawn]).astype(np.float32) / 127.5 - 1.0
    labels = {k: torch.tensor([lab[k] for _, lab in drawn]) for k in HEADS}
    return torch.from_numpy(arr).permute(0, 3, 1, 2), labels


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
    x = torch.roll(x, shifts=shift, dims=(2, 3))
    sigma = torch.rand(len(x), 1, 1, 1, generator=gen) * 0.1
    return x + sigma * torch.randn(x.shape, generator=gen)


def train_encoder(spec: dict, out: str | os.PathLike, progress: bool = True) -> pl.DataFrame:
    """Train the scene encoder an ``encoders.scene`` entry describes; writes ``out``: the weights
    (safetensors), ``config.json`` (its settings) and ``log.parquet`` (loss and held-out accuracy
    per head, every 100 steps)."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from wig.atomic import atomic_dir

    s = settings_of(spec)
    torch.manual_seed(s["seed"])
    net = SceneNet(s["width"], s["dim"])
    rng = np.random.default_rng(s["seed"])
    gen = torch.Generator().manual_seed(s["seed"])
    layout = Layout(size=s["size"])
    held_x, held_y = _batch(np.random.default_rng(s["seed"] + 1_000_003), layout, 512)
    opt = torch.optim.AdamW(net.parameters(), lr=s["lr"], weight_decay=1e-4)
    steps = s["steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)))
    rows, start = [], time.perf_counter()
    for step in tqdm(range(1, steps + 1), desc="train scene encoder", disable=not progress):
        net.train()
        x, y = _batch(rng, layout, s["batch_size"])
        z = net(_augment(x, gen))
        loss = sum(F.cross_entropy(head(z), y[name]) for name, head in net.heads.items())
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == steps:
            net.eval()
            with torch.no_grad():
                z = net(held_x)
                accuracy = {
                    f"{k}_accuracy": (h(z).argmax(1) == held_y[k]).float().mean().item() for k, h in net.heads.items()
                }
            rows.append({"step": step, "loss": loss.item(), **accuracy, "seconds": time.perf_counter() - start})
    log = pl.DataFrame(rows)
    with atomic_dir(out, overwrite=True) as tmp:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(Path(tmp) / WEIGHTS))
        (Path(tmp) / CONFIG).write_text(json.dumps(s, indent=2, sort_keys=True) + "\n")
        log.write_parquet(Path(tmp) / "log.parquet")
    return log


def load_net(folder: str | os.PathLike) -> SceneNet:
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        raise WigError(f"{folder}: not a scene encoder folder ({CONFIG} and {WEIGHTS})")
    s = json.loads((folder / CONFIG).read_text())
    net = SceneNet(s["width"], s["dim"])
    net.load_state_dict(load_file(str(folder / WEIGHTS)))
    return net.eval()


def save_random(out: str | os.PathLike, spec: dict) -> None:
    """An untrained encoder (a tiny twin: tests of the plumbing), in the trained one's layout."""
    from safetensors.torch import save_file

    s = settings_of(spec)
    net = SceneNet(s["width"], s["dim"])
    Path(out).mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(Path(out) / WEIGHTS))
    (Path(out) / CONFIG).write_text(json.dumps(s, indent=2, sort_keys=True) + "\n")
