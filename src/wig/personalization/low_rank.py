"""A full fine-tune as a low-rank difference: per layer, the rank-r SVD of θ' − θ (what LoRA-extraction
tools do), so θω = θ + ω·U_r S_r V_rᵀ is again a per-sample scale and every branch of a step runs in
one batched forward, as with a LoRA — at the price of an approximation, measured per layer and
printed, and refused above a tolerance (never silently used).

What is realised:
- ``Linear`` and ``Conv2d`` weights: the rank-r factors of the difference (a convolution's kernel
  flattened to (out, in·kh·kw); the down factor is a convolution of the layer's geometry, the up
  factor a 1×1 one);
- their biases and the affine parameters of ``GroupNorm``/``LayerNorm``: exactly (per-sample
  s·Δb, and s·(Δγ·x̂ + Δβ) with x̂ the layer's normalised input);
- any other differing tensor cannot be realised per sample: it is named and refused.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F

from wig.branches import FULL, BranchWeights
from wig.errors import WigError
from wig.personalization.hooks import NoScales, SampleScales, per_sample


class LowRankError(WigError):
    """A low-rank approximation that is refused (too coarse) or impossible (a tensor it cannot realise)."""


@dataclass(frozen=True)
class LayerError:
    """One factored weight: its rank and relative Frobenius error ‖Δ − Δ_r‖ / ‖Δ‖."""

    layer: str
    rank: int
    full_rank: int
    relative_error: float


@dataclass
class Factors:
    """A layer's rank-r difference (``up`` (out, r), ``down`` (r, in·kh·kw)) and exact vector deltas."""

    up: torch.Tensor | None = None
    down: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    weight: torch.Tensor | None = None  # a norm layer's Δγ


def extract(
    model: torch.nn.Module, tuned: Mapping[str, torch.Tensor], rank: int
) -> tuple[dict[str, Factors], list[LayerError]]:
    """The rank-``rank`` factors of ``tuned`` − ``model``'s weights, per layer, and their errors.
    Raises naming the first differing tensor no layer kind here can realise."""
    own = model.state_dict()
    differing = {name for name, tensor in own.items() if not torch.equal(tensor, tuned[name])}
    factors: dict[str, Factors] = {}
    errors: list[LayerError] = []
    covered: set[str] = set()
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            f = Factors()
            if f"{prefix}weight" in differing:
                if isinstance(module, torch.nn.Conv2d) and module.groups != 1:
                    raise LowRankError(f"low-rank: {name} is a grouped convolution; use full weights (low_rank 0)")
                delta = (tuned[f"{prefix}weight"].float() - module.weight.float()).flatten(1)
                u, s, vh = torch.linalg.svd(delta, full_matrices=False)
                r = min(rank, len(s))
                f.up, f.down = (u[:, :r] * s[:r]).to(module.weight.dtype), vh[:r].to(module.weight.dtype)
                total = float(s.square().sum())
                error = float(s[r:].square().sum() / total) ** 0.5 if total > 0 else 0.0
                errors.append(LayerError(name, r, len(s), error))
                covered.add(f"{prefix}weight")
            if module.bias is not None and f"{prefix}bias" in differing:
                f.bias = tuned[f"{prefix}bias"] - module.bias.detach()
                covered.add(f"{prefix}bias")
            if f.up is not None or f.bias is not None:
                factors[name] = f
        elif (
            isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and getattr(module, "weight", None) is not None
        ):
            keys = [k for k in (f"{prefix}weight", f"{prefix}bias") if k in differing]
            if keys:
                f = Factors(weight=tuned[f"{prefix}weight"] - module.weight.detach())
                if module.bias is not None:
                    f.bias = tuned[f"{prefix}bias"] - module.bias.detach()
                factors[name] = f
                covered.update(keys)
    left = [name for name in own if name in differing and name not in covered]
    if left:
        raise LowRankError(
            f"low-rank: the fine-tune changes {left[0]}, which is no Linear/Conv2d weight or bias and no norm "
            f"parameter ({len(left)} such tensors): use full weights (low_rank 0)"
        )
    return factors, errors


def report(errors: list[LayerError], tolerance: float, source: str, out=None) -> None:
    """Print every factored layer's relative error; refuse (naming the worst layer) above ``tolerance``."""
    out = out or sys.stderr
    print(f"low-rank approximation of {source}: relative error ‖Δ − Δ_r‖/‖Δ‖ per layer", file=out)
    for e in errors:
        print(f"  {e.layer:60s} rank {e.rank:4d} of {e.full_rank:5d}  {e.relative_error:.4f}", file=out)
    worst = max(errors, key=lambda e: e.relative_error, default=None)
    if worst is not None:
        print(f"  worst: {worst.layer} {worst.relative_error:.4f} (tolerance {tolerance})", file=out)
    if worst is not None and worst.relative_error > tolerance:
        raise LowRankError(
            f"{source}: the rank-{worst.rank} approximation of {worst.layer} has relative error "
            f"{worst.relative_error:.4f} > tolerance {tolerance}: raise low_rank or use full weights (low_rank 0)"
        )


class LowRankScales(SampleScales):
    """Per-sample θ + s·Δ_r: forward hooks add s·up(down(x)) (and the exact vector deltas)."""

    def __init__(self, model: torch.nn.Module, factors: Mapping[str, Factors]):
        super().__init__()
        self.modules = dict(model.named_modules())
        self.factors = factors

    has_effect = True

    def set(self, scales: Mapping[str, torch.Tensor]) -> None:
        vec = scales.get(FULL)
        self._scales = {} if vec is None or not bool((vec != 0).any()) else {FULL: vec}

    def _hook(self, name: str):
        module, f = self.modules[name], self.factors[name]

        def hook(mod, args, out):
            vec = self._scales.get(FULL)
            if vec is None:
                return None
            (x,) = args[:1]
            s = per_sample(vec, out)
            if isinstance(module, torch.nn.Linear):
                delta = F.linear(F.linear(x, f.down), f.up) if f.up is not None else 0
                bias = f.bias if f.bias is not None else 0
                return out + s * (delta + bias)
            if isinstance(module, torch.nn.Conv2d):
                delta = 0
                if f.up is not None:
                    kernel = f.down.view(-1, *module.weight.shape[1:])
                    mid = F.conv2d(x, kernel, None, module.stride, module.padding, module.dilation)
                    delta = F.conv2d(mid, f.up[:, :, None, None])
                bias = f.bias.view(1, -1, 1, 1) if f.bias is not None else 0
                return out + s * (delta + bias)
            if isinstance(module, torch.nn.GroupNorm):
                xhat = F.group_norm(x, module.num_groups, None, None, module.eps)
                shape = (1, -1, *[1] * (x.dim() - 2))
            else:
                xhat = F.layer_norm(x, module.normalized_shape, None, None, module.eps)
                shape = module.normalized_shape
            bias = f.bias.view(shape) if f.bias is not None else 0
            return out + s * (f.weight.view(shape) * xhat + bias)

        return hook

    def _hooks(self):
        return [(self.modules[name], self._hook(name)) for name in self.factors]


class LowRankWeights(BranchWeights):
    """Branch weights of a full fine-tune approximated per layer at rank r (`extract`)."""

    def __init__(self, factors: Mapping[str, Factors]):
        self.factors = dict(factors)

    def attached(self, pipe) -> set[str]:
        return {FULL}

    def text_encoder(self, pipe) -> NoScales:
        return NoScales()

    def denoiser(self, pipe) -> LowRankScales:
        from wig.models.families import family_of

        return LowRankScales(family_of(pipe).denoiser(pipe), self.factors)


def attach_low_rank(pipe, path, rank: int, tolerance: float, out=None) -> LowRankWeights:
    """Read a full fine-tune (checked as `wig.personalization.full_weights.read_finetune` does),
    factor its difference at ``rank`` per layer, print the errors, refuse above ``tolerance``."""
    from wig.models.families import family_of
    from wig.personalization.full_weights import read_finetune

    family = family_of(pipe)
    model = family.denoiser(pipe)
    tuned = read_finetune(model, path, family.component)
    with torch.no_grad():
        factors, errors = extract(model, tuned, rank)
    report(errors, tolerance, str(path), out)
    return LowRankWeights(factors)
