"""LoRA files as strangers bring them, and their updates written into weights by hand.

`stranger_lora` makes what diffusers' training scripts and kohya's sd-scripts write — never
through wig: peft adapters with random matrices saved by the stock ``save_lora_weights`` with
their ``LoraConfig`` as metadata (alpha ≠ rank, rank and alpha patterns, linear and convolution
layers, text-encoder LoRAs), or the same matrices under kohya's key names with ``.alpha`` tensors.
It also returns each layer's update ΔW = (α / r)·B·A computed here from the spec (a convolution's
as B's 1×1 kernel times A's kernels), which `write_in` adds to a model's weights: the θ + ω·ΔW a
PG reference loop runs, with no peft in the path.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch

# the layers a stranger's LoRA adapts on the SD/SDXL UNet: attention, feed-forward, proj_in/out,
# the resnets' time embedding and their 3×3 convolutions
UNET_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.2",
    "time_emb_proj",
    "conv1",
    "conv2",
)
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
SANA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass
class Spec:
    """One component's adapter: rank, alpha, per-module patterns (full module names)."""

    targets: tuple[str, ...]
    r: int = 3
    alpha: float = 7.0
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)


@dataclass
class StrangerLora:
    file: Path
    deltas: dict[tuple[str, str], torch.Tensor]  # (component, module) -> (α/r)·B·A, the layer's weight shape

    def components(self) -> set[str]:
        return {c for c, _ in self.deltas}


def _delta(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    if a.ndim == 2:
        return scale * (b @ a)
    return scale * (b.flatten(1) @ a.flatten(1)).reshape(b.shape[0], *a.shape[1:])


def stranger_lora(pipe, out, specs: dict[str, Spec], seed: int = 0, std: float = 0.05, kohya: bool = False):
    """Write a LoRA of ``pipe``'s components (``{"unet": Spec(...), "text_encoder": Spec(...)}``) into
    ``out`` as the stock ``save_lora_weights`` writes it (with metadata), or with ``kohya`` as
    kohya's sd-scripts name it (``lora_unet_…``/``lora_te_…``, ``lora_down/up``, ``.alpha``)."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    gen = torch.Generator("cpu").manual_seed(seed)
    layers, metadata, deltas, kohya_state = {}, {}, {}, {}
    for component, spec in specs.items():
        model = copy.deepcopy(getattr(pipe, component))  # the adapter goes on a copy: pipe stays as it was
        config = LoraConfig(
            r=spec.r,
            lora_alpha=spec.alpha,
            target_modules=list(spec.targets),
            rank_pattern=dict(spec.rank_pattern),
            alpha_pattern=dict(spec.alpha_pattern),
        )
        model.add_adapter(config, adapter_name="stranger")
        for name, module in model.named_modules():
            if not hasattr(module, "lora_A") or "stranger" not in module.lora_A:
                continue
            a, b = module.lora_A["stranger"].weight, module.lora_B["stranger"].weight
            a.data.copy_(torch.randn(a.shape, generator=gen) * std)
            b.data.copy_(torch.randn(b.shape, generator=gen) * std)
            r = spec.rank_pattern.get(name, spec.r)
            alpha = spec.alpha_pattern.get(name, spec.alpha)
            assert a.shape[0] == r
            deltas[(component, name)] = _delta(a.detach().clone(), b.detach().clone(), alpha / r)
            prefix = {"unet": "lora_unet", "text_encoder": "lora_te", "text_encoder_2": "lora_te2"}.get(component, "")
            kname = f"{prefix}_{name.replace('.', '_')}"
            kohya_state[f"{kname}.lora_down.weight"] = a.detach().clone().contiguous()
            kohya_state[f"{kname}.lora_up.weight"] = b.detach().clone().contiguous()
            kohya_state[f"{kname}.alpha"] = torch.tensor(float(alpha))
        layers[f"{component}_lora_layers"] = get_peft_model_state_dict(model, adapter_name="stranger")
        metadata[f"{component}_lora_adapter_metadata"] = config.to_dict()
    out = Path(out)
    if kohya:
        out.mkdir(parents=True, exist_ok=True)
        save_file(kohya_state, str(out / "stranger_kohya.safetensors"))
        return StrangerLora(out / "stranger_kohya.safetensors", deltas)
    type(pipe).save_lora_weights(out, safe_serialization=True, **layers, **metadata)
    return StrangerLora(out / "pytorch_lora_weights.safetensors", deltas)


def write_in(model: torch.nn.Module, component: str, lora: StrangerLora, coefficient: float) -> torch.nn.Module:
    """``model`` (a plain copy of ``component``, no peft) with θ + coefficient·ΔW in its weights."""
    modules = dict(model.named_modules())
    n = 0
    with torch.no_grad():
        for (c, name), delta in lora.deltas.items():
            if c == component:
                modules[name].weight += coefficient * delta
                n += 1
    assert n > 0
    return model
