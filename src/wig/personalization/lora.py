"""LoRA helpers: diffusers-format files (safe loading, saving), per-sample adapter scales.

Per-sample scales are what make PG as cheap as CFG: the weak branch (θω = θ + ω·ΔW) and the
strong branch (θ' = θ + ΔW) differ only in the LoRA scale, so both run in one batched forward
when each sample carries its own scale. PEFT computes ``base(x) + lora_B(lora_A(x)) * scaling``;
a forward hook on ``lora_A`` multiplies its rank-r output by a per-sample vector. ``lora_B`` is
linear without bias, so this equals scaling the LoRA term, on the smallest tensor of the path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from wig.branches import FULL, LORA_WEIGHT_NAME, WEAK, BranchWeights
from wig.errors import WigError
from wig.models.families import family_of
from wig.personalization.hooks import SampleScales, per_sample
from wig.readers import value_problem

# "<module>.lora_A.weight" (PEFT) or "<module>.lora.down.weight" (diffusers); A/down: (rank, in)
_PEFT_OR_DIFFUSERS = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora\.down|lora\.up)\.weight$")


class LoraError(WigError):
    """A LoRA file that cannot be used with the model at hand."""


def lora_file(path: str | os.PathLike) -> Path:
    """The safetensors file of a LoRA given as the file or its diffusers folder."""
    path = Path(path)
    if path.is_dir():
        path = path / LORA_WEIGHT_NAME
    if not path.is_file():
        raise LoraError(f"LoRA not found: {path}")
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError, ValueError) as err:
        raise LoraError(f"not a safetensors LoRA file: {path} ({err})") from None
    return path


def check_lora_file(path: str | os.PathLike) -> Path:
    """A LoRA file (or folder) whose every tensor is a finite float, checked one tensor at a time
    without a model: what can be checked before a pipeline exists (`_check_fits` then places
    each key in the model)."""
    path = lora_file(path)
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        if not any(_is_lora_matrix(k) for k in keys):
            raise LoraError(f"no LoRA weights in {path}")
        for key in keys:
            _check_values(path, key, f.get_tensor(key))
    return path


def _check_values(path: Path, key: str, tensor: torch.Tensor) -> None:
    """A LoRA matrix must be finite floats (an alpha may be an integer)."""
    if (problem := value_problem(tensor, floats=_is_lora_matrix(key))) is not None:
        raise LoraError(f"LoRA {path}: {key} {problem}")


def load_lora(pipe, path: str | os.PathLike, adapter_name: str) -> None:
    """Load a diffusers-format LoRA (safetensors only) into ``pipe`` as ``adapter_name``.

    Refuses a file whose tensors do not all land in the model: diffusers only warns about
    unmatched keys, which would leave an adapter that silently does nothing.
    """
    path = lora_file(path)
    state = load_file(str(path))
    n_lora = sum(1 for k in state if _is_lora_matrix(k))
    if n_lora == 0:
        raise LoraError(f"no LoRA weights in {path}")
    _check_fits(pipe, state, path)
    try:
        pipe.load_lora_weights(state, adapter_name=adapter_name)
    except (RuntimeError, ValueError, KeyError) as err:
        _drop_adapter(pipe, adapter_name)
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise LoraError(f"LoRA {path} does not fit the model: {first}") from None
    n_loaded = sum(2 for _ in lora_layers(_components(pipe), adapter_name))
    if n_loaded != n_lora:
        _drop_adapter(pipe, adapter_name)
        raise LoraError(
            f"LoRA {path} does not fit the model: {n_lora} LoRA matrices in the file, {n_loaded} placed in the model"
        )


def _check_fits(pipe, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Name the first key of a diffusers/PEFT-format LoRA that is not a LoRA matrix, holds NaN or
    inf, lacks its partner (A without B), disagrees with it on the rank, or misses or mismatches
    its layer — before diffusers sees the file (its errors name no key, or only warn).

    (Other formats, e.g. kohya's, are converted by diffusers and checked by the count after it.)
    """
    missing = []
    pairs: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    for key, tensor in state.items():
        if not (_is_lora_matrix(key) or key.endswith(".alpha")):
            raise LoraError(f"LoRA {path}: unexpected key {key} (not a LoRA matrix)")
        _check_values(path, key, tensor)
        component, _, rest = key.partition(".")
        match = _PEFT_OR_DIFFUSERS.match(rest)
        if match is None:
            continue
        module_name, kind = match["module"], "A" if match["kind"] in ("lora_A", "lora.down") else "B"
        pairs.setdefault(f"{component}.{module_name}", {})[kind] = (key, tensor)
        model = getattr(pipe, component, None)
        layer = dict(model.named_modules()).get(module_name) if isinstance(model, torch.nn.Module) else None
        if layer is None or not hasattr(layer, "weight"):
            missing.append(key)
            continue
        expected = layer.weight.shape[1] if kind == "A" else layer.weight.shape[0]
        got = tensor.shape[1] if kind == "A" else tensor.shape[0]
        if tensor.ndim != 2 or expected != got:
            raise LoraError(
                f"LoRA {path} does not fit the model: {key} has shape {tuple(tensor.shape)}, "
                f"layer {component}.{module_name} has weight {tuple(layer.weight.shape)}"
            )
    for module, pair in pairs.items():
        if len(pair) == 1:
            ((kind, (key, _)),) = pair.items()
            other = "B (up)" if kind == "A" else "A (down)"
            raise LoraError(f"LoRA {path}: {key} has no {other} partner for {module}")
        (key_a, a), (key_b, b) = pair["A"], pair["B"]
        if a.shape[0] != b.shape[1]:
            raise LoraError(f"LoRA {path}: rank of {key_a} ({a.shape[0]}) differs from {key_b} ({b.shape[1]})")
    if missing:
        raise LoraError(
            f"LoRA {path} does not fit the model: {len(missing)} keys name layers the model lacks, e.g. {missing[0]}"
        )


def _is_lora_matrix(key: str) -> bool:
    return key.endswith(".weight") and any(
        tag in key for tag in ("lora_A", "lora_B", "lora.down", "lora.up", "lora_down", "lora_up")
    )


def _components(pipe) -> list[torch.nn.Module]:
    return [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]


def _drop_adapter(pipe, adapter_name: str) -> None:
    # never leave a half-loaded adapter behind in a pipeline the caller keeps using
    if adapter_name in adapter_names(pipe):
        pipe.delete_adapters(adapter_name)


def lora_layers(modules: Iterable[torch.nn.Module], adapter_name: str | None = None):
    """PEFT LoRA layers in ``modules`` (those holding ``adapter_name``, if given)."""
    from peft.tuners.lora import LoraLayer

    for module in modules:
        for layer in module.modules():
            if isinstance(layer, LoraLayer) and (adapter_name is None or adapter_name in layer.lora_A):
                yield layer


def adapter_names(pipe) -> set[str]:
    return {name for names in pipe.get_list_adapters().values() for name in names}


def attach_loras(pipe, lora: str | os.PathLike | None = None, weak_lora: str | os.PathLike | None = None) -> None:
    """Load the fine-tuned LoRA as adapter ``full`` and the weak checkpoint as ``weak`` (files or
    diffusers folders, e.g. any LoRA trained with diffusers' scripts); the sampler runs both at
    per-branch scales (`LoraBranchWeights`)."""
    if weak_lora is not None and lora is None:
        raise LoraError("a weak LoRA needs the full LoRA too (--lora)")
    for path, name in ((lora, FULL), (weak_lora, WEAK)):
        if path is not None:
            load_lora(pipe, path, name)


class LoraBranchWeights(BranchWeights):
    """Branch weights from the pipeline's LoRA adapters: θ + Σ_k s_k·ΔW_k is adapter k at scale
    s_k, per sample (`LoraScales`), so all branches of a step share one batched forward. The
    default of the sampler: a pipeline with LoRAs loaded by plain diffusers code works as is."""

    def attached(self, pipe) -> set[str]:
        return adapter_names(pipe)

    def prepare(self, pipe) -> None:
        loaded = sorted(adapter_names(pipe))
        if loaded:  # branch scales replace adapter weights: every adapter runs, at weight 1
            pipe.set_adapters(loaded, adapter_weights=[1.0] * len(loaded))

    def text_encoder(self, pipe) -> LoraScales:
        return LoraScales(family_of(pipe).text_encoders(pipe))

    def denoiser(self, pipe) -> LoraScales:
        return LoraScales([family_of(pipe).denoiser(pipe)])


class LoraScales(SampleScales):
    """Per-sample, per-adapter LoRA scales for batched forwards of ``modules``.

    Use as a context manager; inside it, ``set({"full": tensor([1., .4]), ...})`` makes sample
    i of the next forwards use adapter ``full`` at scale 1 or .4. Every loaded adapter must be
    active at weight 1 (``pipe.set_adapters``, which the sampler does); adapters missing from
    the mapping are off (0).
    """

    def __init__(self, modules: Iterable[torch.nn.Module]):
        super().__init__()
        self._layers = list(lora_layers(modules))

    @property
    def has_effect(self) -> bool:
        """Whether any LoRA layer is among the modules (else `set` changes nothing)."""
        return bool(self._layers)

    def set(self, scales: Mapping[str, torch.Tensor]) -> None:
        adapters = {name for layer in self._layers for name in layer.lora_A}
        self._scales = {}
        for name in adapters:
            vec = scales.get(name)
            if vec is None:
                self._scales[name] = 0.0
            elif bool((vec == vec[0]).all()):
                # one scale for the whole batch: skip the hook at 1 (bit-exact with stock
                # diffusers), else a scalar multiply
                value = float(vec[0])
                self._scales[name] = None if value == 1.0 else value
            else:
                self._scales[name] = vec

    def _hook(self, name: str):
        def hook(module, args, out):
            scale = self._scales.get(name)
            if scale is None:
                return None
            if isinstance(scale, float):
                return out * scale
            return out * per_sample(scale, out)

        return hook

    def _hooks(self):
        return [(module, self._hook(name)) for layer in self._layers for name, module in layer.lora_A.items()]


def save_lora(pipe, adapter_name: str, out: str | os.PathLike) -> Path:
    """Write the denoiser's adapter as ``out/pytorch_lora_weights.safetensors`` in the format
    diffusers' own training scripts write: ``unet.<module>.lora.down/up.weight`` for SD
    (``train_dreambooth_lora.py``), ``transformer.<module>.lora_A/B.weight`` for SANA."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    family = family_of(pipe)
    state = get_peft_model_state_dict(family.denoiser(pipe), adapter_name=adapter_name)
    if family.lora_format == "diffusers":
        state = convert_state_dict_to_diffusers(state)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    type(pipe).save_lora_weights(out, **{f"{family.component}_lora_layers": state}, safe_serialization=True)
    return Path(out) / LORA_WEIGHT_NAME


def random_lora(
    pipe,
    out: str | os.PathLike,
    rank: int = 4,
    std: float = 0.1,
    seed: int = 0,
    target_modules: tuple[str, ...] | None = None,
) -> Path:
    """Write a seeded random LoRA of the denoiser in diffusers format (for tests and benchmarks);
    ``target_modules`` defaults to the family's training targets.

    Unlike a freshly initialised LoRA (lora_B = 0), both matrices are random, so it changes the
    model's output by an amount set by ``std``. alpha = rank: its scaling is 1.
    """
    from peft import LoraConfig

    family = family_of(pipe)
    model = family.denoiser(pipe)
    targets = list(target_modules or family.lora_targets)
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True, target_modules=targets)
    name = "_random_lora"
    model.add_adapter(config, adapter_name=name)
    try:
        gen = torch.Generator("cpu").manual_seed(seed)
        for layer in lora_layers([model], name):
            for mat in (layer.lora_A[name].weight, layer.lora_B[name].weight):
                mat.data.copy_(torch.randn(mat.shape, generator=gen) * std)
        return save_lora(pipe, name, out)
    finally:
        model.delete_adapters(name)
