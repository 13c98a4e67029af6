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
from typing import Iterable, Mapping, Sequence

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
    """The safetensors file of a LoRA given as the file or its folder: the folder's
    ``pytorch_lora_weights.safetensors``, else its one ``.safetensors`` file (as stock
    ``load_lora_weights`` picks it: a kohya or hub LoRA named otherwise); several are refused,
    named, where stock diffusers would warn and take the first."""
    path = Path(path)
    if path.is_dir() and not (path / LORA_WEIGHT_NAME).is_file():
        found = sorted(p.name for p in path.glob("*.safetensors") if p.is_file())
        if len(found) > 1:
            raise LoraError(
                f"LoRA folder {path} holds {len(found)} safetensors files ({', '.join(found)}): name the file"
            )
        path = path / (found[0] if found else LORA_WEIGHT_NAME)
    elif path.is_dir():
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
    """A LoRA file (or folder) checked without a model — what can be checked before a pipeline
    exists (a `given` LoRA, in its resolve rule): every tensor a finite float, every matrix with
    its partner and rank, the metadata agreeing with them (`_lora_pairs`, `_check_metadata`);
    `load_lora` then places each key in the model."""
    path = lora_file(path)
    state = load_file(str(path))
    if not any(_is_lora_matrix(k) for k in state):
        raise LoraError(f"no LoRA weights in {path}")
    _check_metadata(path, _lora_pairs(state, path), lora_metadata(path))
    return path


def _check_values(path: Path, key: str, tensor: torch.Tensor) -> None:
    """A LoRA matrix must be finite floats (an alpha may be an integer)."""
    if (problem := value_problem(tensor, floats=_is_lora_matrix(key))) is not None:
        raise LoraError(f"LoRA {path}: {key} {problem}")


def lora_metadata(path: str | os.PathLike) -> dict | None:
    """A LoRA file's adapter metadata: the peft ``LoraConfig`` per component (``unet.r``,
    ``unet.lora_alpha``, ``unet.rank_pattern`` …) that diffusers' ``save_lora_weights`` and its
    training scripts write under the safetensors header's ``lora_adapter_metadata`` — or None where
    the file has none (then diffusers derives the config from the tensors: alpha = rank, or kohya's
    ``.alpha`` keys)."""
    import json

    path = lora_file(path)
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    raw = header.get(LORA_METADATA_KEY)
    if not raw:
        return None
    try:
        metadata = json.loads(raw)
    except ValueError as err:
        raise LoraError(f"LoRA {path}: its {LORA_METADATA_KEY} is not JSON ({err})") from None
    if not isinstance(metadata, dict):
        raise LoraError(f"LoRA {path}: its {LORA_METADATA_KEY} is not a mapping of settings")
    return metadata


LORA_METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY


def load_lora(pipe, path: str | os.PathLike, adapter_name: str) -> None:
    """Load a LoRA file (safetensors only) into ``pipe`` as ``adapter_name``, read exactly as stock
    ``pipe.load_lora_weights(file)`` reads it: its metadata's alpha, rank and alpha patterns and
    target modules (what diffusers' training scripts write), kohya/A1111 keys converted by
    diffusers, linear and convolution layers, denoiser and text-encoder LoRAs.

    Before diffusers sees the file, every key of the diffusers/peft formats is placed in the model
    and checked against its partner and the metadata (diffusers names no key, or only warns); after
    it, every matrix of the file must have landed in a layer (diffusers only warns about unmatched
    keys, which would leave an adapter that silently does nothing). Each refusal is one line naming
    the file and the key; nothing of a refused file stays in the pipeline.
    """
    path = lora_file(path)
    state = load_file(str(path))
    n_lora = sum(1 for k in state if _is_lora_matrix(k))
    if n_lora == 0:
        raise LoraError(f"no LoRA weights in {path}")
    pairs = _lora_pairs(state, path)
    _check_metadata(path, pairs, lora_metadata(path))
    _check_fits(pipe, pairs, path)
    try:
        # the file itself, as stock diffusers reads it: its header's metadata comes with it. Folder and
        # file name, not the file's path: diffusers before 0.40 refuses a path without `weight_name`
        # in offline mode (HF_HUB_OFFLINE), and this spelling reads the same file in every version
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter_name, use_safetensors=True)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        _drop_adapter(pipe, adapter_name)
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise LoraError(f"LoRA {path} does not fit the model: {first}") from None
    modules = _named_modules(pipe)
    for module, pair in pairs.items():  # a key the metadata's target_modules left out, named
        layer = modules.get(module)
        if adapter_name not in getattr(layer, "lora_A", {}):
            _drop_adapter(pipe, adapter_name)
            raise LoraError(
                f"LoRA {path}: {pair['A'][0]} was not loaded into {module} (its metadata's target_modules?)"
            )
    n_loaded = sum(2 for _ in lora_layers(_components(pipe), adapter_name))
    if n_loaded != n_lora:
        _drop_adapter(pipe, adapter_name)
        raise LoraError(
            f"LoRA {path} does not fit the model: {n_lora} LoRA matrices in the file, {n_loaded} placed in the model"
        )


Pairs = dict[str, dict[str, tuple[str, torch.Tensor]]]  # "<component>.<module>" -> {"A"/"B": (key, tensor)}


def _lora_pairs(state: Mapping[str, torch.Tensor], path: Path) -> Pairs:
    """The A/B pairs of a diffusers/PEFT-format LoRA by ``<component>.<module>``, with the first key
    that is not a LoRA matrix, holds NaN or inf, lacks its partner (A without B) or disagrees with
    it on the rank named — what can be checked without a model. (Other formats, e.g. kohya's, are
    converted by diffusers and checked by the count after it.)"""
    pairs: Pairs = {}
    for key, tensor in state.items():
        if not (_is_lora_matrix(key) or key.endswith(".alpha")):
            raise LoraError(f"LoRA {path}: unexpected key {key} ({_not_a_matrix(key)})")
        _check_values(path, key, tensor)
        component, _, rest = key.partition(".")
        match = _PEFT_OR_DIFFUSERS.match(rest)
        if match is None:
            continue
        kind = "A" if match["kind"] in ("lora_A", "lora.down") else "B"
        pairs.setdefault(f"{component}.{match['module']}", {})[kind] = (key, tensor)
    for module, pair in pairs.items():
        if len(pair) == 1:
            ((kind, (key, _)),) = pair.items()
            other = "B (up)" if kind == "A" else "A (down)"
            raise LoraError(f"LoRA {path}: {key} has no {other} partner for {module}")
        (key_a, a), (key_b, b) = pair["A"], pair["B"]
        if a.ndim < 2 or b.ndim < 2:
            raise LoraError(f"LoRA {path}: {key_a if a.ndim < 2 else key_b} is not a matrix ({a.ndim}-D)")
        if a.shape[0] != b.shape[1]:
            raise LoraError(f"LoRA {path}: rank of {key_a} ({a.shape[0]}) differs from {key_b} ({b.shape[1]})")
    return pairs


def _check_fits(pipe, pairs: Pairs, path: Path) -> None:
    """Name the first key of ``pairs`` that misses or mismatches its layer (a linear layer's
    matrices, a convolution's kernels: A (r, in, kh, kw) with the layer's kernel, B (out, r, 1, 1))
    before diffusers sees the file (its errors name no key, or only warn)."""
    missing = []
    modules = _named_modules(pipe)
    for module, pair in pairs.items():
        layer = modules.get(module)
        for kind, (key, tensor) in sorted(pair.items()):
            if layer is None or not hasattr(layer, "weight"):
                missing.append(key)
                continue
            weight = layer.weight
            expected = weight.shape[1] if kind == "A" else weight.shape[0]
            got = tensor.shape[1] if kind == "A" else tensor.shape[0]
            kernel = weight.shape[2:] if kind == "A" else (1,) * (weight.ndim - 2)
            if tensor.ndim != weight.ndim or expected != got or tuple(tensor.shape[2:]) != tuple(kernel):
                raise LoraError(
                    f"LoRA {path} does not fit the model: {key} has shape {tuple(tensor.shape)}, "
                    f"layer {module} has weight {tuple(weight.shape)}"
                )
    if missing:
        raise LoraError(
            f"LoRA {path} does not fit the model: {len(missing)} keys name layers the model lacks, e.g. {missing[0]}"
        )


def _check_metadata(path: Path, pairs: Pairs, metadata) -> None:
    """The metadata diffusers builds each component's ``LoraConfig`` from must say what the tensors
    are: an alpha and a rank (peft's defaults would silently set the strength), and for every
    module the rank its ``r`` / ``rank_pattern`` gives. A component the metadata does not cover is
    derived from its tensors by diffusers (alpha = rank)."""
    if metadata is None:
        return
    from peft.utils.other import get_pattern_key

    for component in sorted({m.partition(".")[0] for m in pairs}):
        config = {k.removeprefix(f"{component}."): v for k, v in metadata.items() if k.startswith(f"{component}.")}
        if not config:
            continue
        for key in ("r", "lora_alpha"):
            value = config.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                got = "names none" if value is None else f"has {value!r}"
                raise LoraError(f"LoRA {path}: its {LORA_METADATA_KEY} {got} for {component}.{key} (a positive number)")
        ranks = config.get("rank_pattern") or {}
        for module, pair in pairs.items():
            if not module.startswith(f"{component}."):
                continue
            name = module.removeprefix(f"{component}.")
            expected = ranks.get(get_pattern_key(list(ranks), name), config["r"])
            key_a, a = pair["A"]
            if a.shape[0] != expected:
                raise LoraError(
                    f"LoRA {path}: {key_a} has rank {a.shape[0]}, its {LORA_METADATA_KEY} says {expected} "
                    f"({component}.r / rank_pattern)"
                )


def _not_a_matrix(key: str) -> str:
    """Why a key of a LoRA file is none of its matrices, for the refusal."""
    if key.endswith(".bias") and any(t in key for t in ("lora_B", "lora.up", "lora_up")):
        return "a LoRA bias (peft's lora_bias), which a scale does not multiply: PG's θω would be wrong"
    if "magnitude" in key or "dora_scale" in key:
        return "DoRA's magnitude vector: a DoRA's output is not linear in its scale"
    return "not a LoRA matrix"


def _is_lora_matrix(key: str) -> bool:
    return key.endswith(".weight") and any(
        tag in key for tag in ("lora_A", "lora_B", "lora.down", "lora.up", "lora_down", "lora_up")
    )


def _named_modules(pipe) -> dict[str, torch.nn.Module]:
    """Every module of the pipeline's components by ``<component>.<name>`` (as LoRA keys name them)."""
    return {
        f"{component}.{name}": module
        for component, model in pipe.components.items()
        if isinstance(model, torch.nn.Module)
        for name, module in model.named_modules()
    }


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
        fused = sorted({a for layer in self._layers for a in layer.merged_adapters})
        if fused:  # merged into the base weights, they would run at full strength in every branch
            raise LoraError(
                f"LoRA adapter(s) {', '.join(fused)} are fused into the weights (fuse_lora), where no per-branch "
                "scale reaches them (PG would silently be CFG): call pipe.unfuse_lora() first"
            )

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


class RoutedLora:
    """While open, every LoRA layer of ``model`` holding the routed adapters adds to each batch row
    its own subject's updates alone: PEFT's own adapter pass is switched off and a forward hook adds
    ``Σ_c lora_B(lora_A(x_i)) · scaling · s_ci`` to row i of the base layer's output, the adapter
    of checkpoint c being row i's subject's (``adapters[c][owner_i]``), at that row's coefficient
    ``s_ci`` — the terms PEFT adds for a batch of that subject alone at those scales. Each
    checkpoint's matrices are stacked over subjects and gathered per row, so a layer costs two
    batched matmuls a checkpoint whatever the number of subjects (a per-sample 0/1 scale on every
    adapter would run each over the whole batch). Training routes one checkpoint at coefficient 1
    (`wig.personalization.training.train_loras`); generation routes the full and weak ones at the
    branches' coefficients (`RoutedLoraWeights`). ``set`` fixes owners and coefficients for the
    next forwards. The adapters' weights keep ``requires_grad`` as they were (PEFT's switch would
    freeze them, and every other adapter's too); rank may differ between checkpoints, dropout must
    be off."""

    def __init__(self, model, adapters: Mapping[str, Sequence[str]]):
        self.model = model
        self.adapters = {c: list(names) for c, names in adapters.items()}
        wanted = [n for names in self.adapters.values() for n in names]
        self.layers = [layer for layer in lora_layers([model]) if all(a in layer.lora_A for a in wanted)]
        if not self.layers:
            raise LoraError(f"no LoRA layer holds all of the adapters {sorted(wanted)}")
        for layer in self.layers:
            if not all(isinstance(layer.lora_dropout[a], torch.nn.Identity) for a in wanted):
                raise LoraError("routed adapters run without dropout")
            if not all(isinstance(layer.lora_A[a], torch.nn.Linear) for a in wanted):
                raise LoraError("routed adapters are LoRAs of linear layers (this one adapts a convolution)")
        self._owner: torch.Tensor | None = None
        self._scales: dict[str, torch.Tensor] = {}
        self._handles: list = []
        self._grad = [p.requires_grad for p in self._weights()]

    def set(self, owner: Sequence[int] | torch.Tensor, scales: Mapping[str, torch.Tensor] | None = None) -> None:
        """Row i belongs to subject ``owner[i]`` and runs checkpoint c at ``scales[c][i]`` (default:
        every routed checkpoint at 1; a checkpoint left out is off)."""
        device = next(self.model.parameters()).device
        owner = torch.as_tensor(owner, device=device, dtype=torch.long)
        scales = {c: torch.ones(len(owner), device=device) for c in self.adapters} if scales is None else scales
        unknown = set(scales) - set(self.adapters)
        if unknown:
            raise LoraError(f"checkpoints {sorted(unknown)} are not routed (routed: {sorted(self.adapters)})")
        for c, vec in scales.items():
            if len(vec) != len(owner):
                raise LoraError(f"checkpoint {c}: {len(vec)} coefficients for {len(owner)} rows")
        self._owner, self._scales = owner, {c: v.to(device) for c, v in scales.items() if bool((v != 0).any())}

    def __enter__(self):
        self.model.disable_adapters()
        self._restore_grads()  # PEFT's switch froze them: as they were
        for layer in self.layers:
            self._handles.append(layer.register_forward_hook(self._hook))
        return self

    def _hook(self, layer, args, out):
        if self._owner is None:
            raise LoraError("routed adapters need owners: call set() before the forward")
        x = args[0]
        for c, vec in self._scales.items():
            names = self.adapters[c]
            a = torch.stack([layer.lora_A[n].weight for n in names])[self._owner]  # (rows, rank, in)
            b = torch.stack([layer.lora_B[n].weight for n in names])[self._owner]  # (rows, out, rank)
            scaling = torch.tensor([layer.scaling[n] for n in names], device=x.device, dtype=a.dtype)
            scale = scaling[self._owner] * vec.to(a.dtype)
            h = x.to(a.dtype).reshape(len(x), -1, x.shape[-1])
            update = (h @ a.transpose(1, 2)) @ b.transpose(1, 2) * scale.view(-1, 1, 1)
            out = out + update.reshape(out.shape).to(out.dtype)
        return out

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.model.enable_adapters()
        self._restore_grads()  # PEFT's switch makes the active adapters trainable: as they were
        return False

    def _weights(self):
        """Every adapter's matrices in the model, routed or not (PEFT's switch touches them all),
        in one fixed order."""
        for layer in lora_layers([self.model]):
            for name in layer.lora_A:
                yield from _adapter_weights(layer, name)

    def _restore_grads(self) -> None:
        for p, grad in zip(self._weights(), self._grad, strict=True):
            p.requires_grad_(grad)


def _adapter_weights(layer, name: str) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    return layer.lora_A[name].weight, layer.lora_B[name].weight


def routed_adapter(checkpoint: str, subject: int) -> str:
    """The adapter name of subject ``subject``'s ``checkpoint`` (FULL, WEAK) when several subjects'
    LoRAs share a pipeline (`RoutedLoraWeights`)."""
    return f"{checkpoint}_s{subject}"


class RoutedLoraWeights(BranchWeights):
    """Branch weights of several subjects' LoRAs in one pipeline, each sample through its own
    subject's: subject k's checkpoints are adapters `routed_adapter` (c, k) (`attach_routed`), and
    `route` says, before a `wig.sampling.sampler.sample` call, which subject each of its samples is.
    Sample i of branch b then runs at θ + s_b,c · ΔW_c of its subject — what `LoraBranchWeights`
    gives a pipeline holding that subject's LoRA alone (up to float summation order). Checkpoints
    of the denoiser only (a LoRA on the text encoder would need one text pass per subject)."""

    def __init__(self, subjects: int, checkpoints: Sequence[str]):
        self.subjects, self.checkpoints = subjects, list(checkpoints)
        self._owner: list[int] | None = None

    def route(self, owner: Sequence[int]) -> None:
        if any(not 0 <= k < self.subjects for k in owner):
            raise LoraError(f"subjects are 0…{self.subjects - 1}, got {sorted(set(owner))}")
        self._owner = list(owner)

    def attached(self, pipe) -> set[str]:
        loaded = adapter_names(pipe)
        return {c for c in self.checkpoints if all(routed_adapter(c, k) in loaded for k in range(self.subjects))}

    def text_encoder(self, pipe):
        from wig.personalization.hooks import NoScales

        if next(lora_layers(family_of(pipe).text_encoders(pipe)), None) is not None:
            raise LoraError("routed subjects need LoRAs of the denoiser alone: this one changes the text encoder")
        return NoScales()

    def denoiser(self, pipe) -> "RoutedScales":
        if self._owner is None:
            raise LoraError("route() the samples to their subjects before sampling")
        adapters = {c: [routed_adapter(c, k) for k in range(self.subjects)] for c in self.attached(pipe)}
        return RoutedScales(RoutedLora(family_of(pipe).denoiser(pipe), adapters), self._owner)


class RoutedScales(SampleScales):
    """The sampler's per-sample coefficient context over `RoutedLora`: its branch-major vectors
    (``wig.branches.scales_of``: rows = branches × samples) and each sample's subject."""

    has_effect = True

    def __init__(self, routed: RoutedLora, owner: Sequence[int]):
        super().__init__()
        self.routed, self.owner = routed, list(owner)

    def set(self, scales: Mapping[str, torch.Tensor]) -> None:
        rows = len(next(iter(scales.values()))) if scales else len(self.owner)
        if rows % len(self.owner):
            raise LoraError(f"{rows} rows for {len(self.owner)} routed samples")
        self.routed.set(self.owner * (rows // len(self.owner)), dict(scales))

    def __enter__(self):
        self.routed.__enter__()
        return self

    def __exit__(self, *exc):
        return self.routed.__exit__(*exc)

    def _hooks(self):
        return []


def attach_routed(pipe, runs: Sequence[tuple[str | os.PathLike, str | os.PathLike | None]]) -> RoutedLoraWeights:
    """Load subject k's full LoRA (and weak one, where given) as adapters `routed_adapter` (FULL /
    WEAK, k) — diffusers folders or files, as `attach_loras` takes — and return the weights that
    route samples to them. All subjects give a weak LoRA or none does."""
    weak = {w is not None for _, w in runs}
    if len(weak) > 1:
        raise LoraError("routed subjects: every subject gives its weak LoRA or none does")
    for k, (full, weak_path) in enumerate(runs):
        load_lora(pipe, full, routed_adapter(FULL, k))
        if weak_path is not None:
            load_lora(pipe, weak_path, routed_adapter(WEAK, k))
    return RoutedLoraWeights(len(runs), [FULL, WEAK] if weak == {True} else [FULL])


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
