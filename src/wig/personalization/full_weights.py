"""A fine-tune of whole tensors given as weights (Diffusion-DPO's UNet, any full fine-tune of the
base's denoiser): θω = θ + ω(θ' − θ) for every tensor, realised exactly.

A LoRA's θω is the adapter at scale ω, per sample, so all branches share one batched forward.
A full fine-tune has no such factorisation, so the branches of a step are grouped by the weights
they run at (`WeightSets`) and each group is one forward of its own denoiser:

- θ' (coefficient 1) is a second denoiser holding the fine-tune's tensors;
- θω (0 < ω < 1) is the pipeline's own denoiser with θ + ω(θ' − θ) written into the tensors that
  differ, for as long as the sampler's call lasts (one lerp pass per call); the base tensors it
  overwrites are copied to the host once per attached fine-tune and copied back bit for bit when
  the call ends;
- θ (ω = 0) is the pipeline's own denoiser as loaded.

So CFG with the fine-tune (ω = 1) is one batched forward of θ', identical to loading θ' as the
pipeline's denoiser, and PG is two forwards of half the batch each: the same arithmetic as CFG
with the cost of a second denoiser in device memory (and, while 0 < ω < 1, the differing base
tensors on the host — on a CPU-only machine that is a third copy in RAM).

Only safetensors are read; the fine-tune must have exactly the base's tensors (names and shapes),
else the first tensor that does not match is named before anything changes.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Iterator, Mapping

import torch
from safetensors import SafetensorError, safe_open

from wig.branches import FULL, BranchWeights
from wig.errors import WigError
from wig.models.families import Text, family_of
from wig.personalization.hooks import NoScales, SampleScales
from wig.readers import value_problem

WEIGHT_NAME = "diffusion_pytorch_model.safetensors"  # what diffusers' save_pretrained writes
INDEX_NAME = WEIGHT_NAME + ".index.json"  # ... and its index when sharded


class FullWeightsError(WigError):
    """Fine-tuned weights that cannot be read, or do not match the base's denoiser."""


def weight_files(path: str | os.PathLike, component: str) -> list[Path]:
    """The safetensors files of a denoiser given as a file, a model folder (``unet/``, with
    ``diffusion_pytorch_model.safetensors`` or its sharded index), a pipeline folder, or a folder
    holding just the denoiser's ``component`` subfolder."""
    path = Path(path)
    if path.is_file():
        return [path]
    if (path / "model_index.json").is_file() or (
        not (path / WEIGHT_NAME).is_file() and (path / component / WEIGHT_NAME).is_file()
    ):  # a pipeline folder, or a repo holding the denoiser's folder alone (Diffusion-DPO's unet/)
        path = path / component
    if (path / WEIGHT_NAME).is_file():
        return [path / WEIGHT_NAME]
    if (path / INDEX_NAME).is_file():
        try:
            shards = sorted(set(json.loads((path / INDEX_NAME).read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as err:
            raise FullWeightsError(f"{path / INDEX_NAME}: not a safetensors index ({err})") from None
        return [path / shard for shard in shards]
    raise FullWeightsError(
        f"no fine-tuned weights at {path}: give a .safetensors file, a model folder with {WEIGHT_NAME} "
        f"(or its {INDEX_NAME}), or a pipeline folder with {component}/"
    )


def _dtype_name(dtype) -> str:
    """A torch dtype or a safetensors header dtype (``F32``, ``I32``, ``BOOL``) as one spelling."""
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    return _SAFETENSORS_DTYPES.get(dtype, dtype.lower())


_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def _is_float(dtype_name: str) -> bool:
    return dtype_name.startswith(("float", "bfloat"))


def tensor_specs(files: list[Path]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every tensor's (shape, dtype name) from the safetensors headers alone (nothing loaded: a
    3.4 GB UNet is read in milliseconds)."""
    specs: dict[str, tuple[tuple[int, ...], str]] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    piece = f.get_slice(key)
                    specs[key] = (tuple(piece.get_shape()), _dtype_name(piece.get_dtype()))
        except (SafetensorError, OSError, ValueError) as err:
            raise FullWeightsError(f"not a safetensors file: {file} ({err})") from None
    return specs


def check_specs(
    base: Mapping[str, tuple[tuple[int, ...], str]],
    tuned: Mapping[str, tuple[tuple[int, ...], str]],
    where: str | os.PathLike,
    pad: tuple[str, ...] = (),
) -> None:
    """A fine-tune must hold exactly the base's tensors, of its shapes (those in ``pad`` may have
    fewer input channels, dim 1), floating point wherever the base's are (a precision change such
    as fp16 against an fp32 base is a cast; an int32 or bool tensor is a broken file, never cast):
    the first tensor that is missing, extra, or of another shape or kind is named."""
    for name, (shape, dtype) in base.items():
        if name not in tuned:
            raise FullWeightsError(f"{where}: the fine-tune lacks the base's tensor {name} {shape}")
        got, got_dtype = tuned[name]
        padded = name in pad and len(got) > 1 and len(got) == len(shape) and got[1] < shape[1]
        if got != shape and not (padded and got[:1] + got[2:] == shape[:1] + shape[2:]):
            raise FullWeightsError(
                f"{where}: tensor {name} has shape {got}, the base's {shape} (another architecture?)"
            )
        if _is_float(dtype) and not _is_float(got_dtype) or not _is_float(dtype) and got_dtype != dtype:
            raise FullWeightsError(
                f"{where}: tensor {name} is stored as {got_dtype}, the base's as {dtype} (a broken or "
                "converted file: integer or bool values are never cast to weights)"
            )
    extra = [name for name in tuned if name not in base]
    if extra:
        raise FullWeightsError(f"{where}: tensor {extra[0]} is not in the base's denoiser (another architecture?)")


def finite_tensors(files: list[Path], where: str | os.PathLike) -> Iterator[tuple[str, torch.Tensor]]:
    """The files' tensors one at a time, the first floating-point one holding NaN or inf named
    (dtypes are `check_specs`'s)."""
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                if (problem := value_problem(tensor, floats=False)) is not None:
                    raise FullWeightsError(f"{where}: tensor {key} {problem}")
                yield key, tensor


def _where(files: list[Path]) -> Path:
    return files[0] if len(files) == 1 else files[0].parent


def check_finetune_files(base: str | os.PathLike, finetune: str | os.PathLike, component: str, pad=()) -> None:
    """Check a full fine-tune's files against the base model's (both as `weight_files` takes
    them) without building either model: names, shapes and dtypes from the headers, then every
    tensor finite — what the workflow's resolve rule runs before any generation job exists."""
    files = weight_files(finetune, component)
    check_specs(tensor_specs(weight_files(base, component)), tensor_specs(files), _where(files), pad)
    for _ in finite_tensors(files, _where(files)):
        pass


def read_finetune(
    model: torch.nn.Module, path: str | os.PathLike, component: str = "unet", pad: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """The fine-tune's tensors for ``model``'s state dict, in its dtype and on its device, checked
    name by name, shape by shape and dtype by dtype against the base (`check_specs`) before any is
    loaded: the first tensor that is missing, extra, of another shape (another architecture cannot
    be lerped) or not floating point is named. A tensor named in ``pad`` with fewer input channels
    (dim 1) than the model's is zero-padded to them (SD 1.5's first convolution read into
    InstructPix2Pix's 8-channel one: the added channels contribute nothing)."""
    files = weight_files(path, component)
    where = _where(files)
    base = model.state_dict()
    check_specs(
        {name: (tuple(t.shape), _dtype_name(t.dtype)) for name, t in base.items()}, tensor_specs(files), where, pad
    )
    state = dict(finite_tensors(files, where))
    for name in pad:
        if state[name].shape[1] < base[name].shape[1]:
            padded = state[name].new_zeros((state[name].shape[0], base[name].shape[1], *state[name].shape[2:]))
            padded[:, : state[name].shape[1]] = state[name]
            state[name] = padded
    return {name: state[name].to(tensor.device, tensor.dtype) for name, tensor in base.items()}


class FullWeights(BranchWeights):
    """Branch weights of a full fine-tune θ' of the pipeline's denoiser (`attach_full_weights`)."""

    def __init__(self, tuned: torch.nn.Module, differing: list[str], source: str):
        self.tuned, self.differing, self.source = tuned, differing, source
        self.stash: dict[str, torch.Tensor] = {}  # θ's differing tensors on the host, from the first θω on

    def attached(self, pipe) -> set[str]:
        return {FULL}

    def text_encoder(self, pipe) -> NoScales:
        return NoScales()  # the text encoder is the base's

    def denoiser(self, pipe) -> WeightSets:
        return WeightSets(family_of(pipe).denoiser(pipe), self.tuned, self.differing, self.stash)


class WeightSets(SampleScales):
    """The sampler's context for a full fine-tune: ``set`` groups the samples by their coefficient
    of the fine-tune (0 → θ, 1 → θ', else θω in the pipeline's denoiser), `predict` runs one
    forward per group. At most one ω strictly between 0 and 1 per step (θω lives in the
    pipeline's denoiser, which then no longer holds θ)."""

    def __init__(
        self, base: torch.nn.Module, tuned: torch.nn.Module, differing: list[str], stash: dict[str, torch.Tensor]
    ):
        super().__init__()
        self.base, self.tuned, self.differing = base, tuned, differing
        self._groups: list[tuple[torch.nn.Module, torch.Tensor | None]] = []
        self._omega = 0.0  # the coefficient the base module holds now
        self._stash = stash  # the base's own tensors (host copies, made once per attached fine-tune)

    has_effect = True

    def set(self, scales: Mapping[str, torch.Tensor]) -> None:
        unknown = sorted(set(scales) - {FULL})
        if unknown:
            raise WigError(f"a full fine-tune has no checkpoint {unknown[0]!r} (only {FULL!r})")
        coef = scales.get(FULL)
        if coef is None:
            self._to_omega(0.0)
            self._groups = [(self.base, None)]
            return
        values = sorted({float(v) for v in coef.tolist()})
        between = [v for v in values if v not in (0.0, 1.0)]
        if len(between) > 1 or (between and 0.0 in values):
            raise WigError(
                f"a full fine-tune realises θ, θ' and one θω per step; this step asks for coefficients {values}"
            )
        self._to_omega(between[0] if between else 0.0)
        if len(values) == 1:  # the whole batch at one weight set: one forward, as the stock pipeline
            self._groups = [(self.tuned if values[0] == 1.0 else self.base, None)]
        else:
            self._groups = [(self.tuned if v == 1.0 else self.base, torch.nonzero(coef == v).flatten()) for v in values]

    @torch.no_grad()
    def _to_omega(self, omega: float) -> None:
        """Write θ + ω(θ' − θ) into the base module's differing tensors (θ itself at ω = 0)."""
        if omega == self._omega:
            return
        params = dict(self.base.named_parameters())
        params.update(dict(self.base.named_buffers()))
        tuned = self.tuned.state_dict()
        for name in self.differing:
            target = params[name]
            if name not in self._stash:
                self._stash[name] = target.detach().to("cpu", copy=True)
            theta = self._stash[name].to(target.device)
            if omega == 0.0:
                target.copy_(theta)
            else:  # θ + ω(θ' − θ) in one pass, no temporaries (torch.lerp; the tests lerp the same way)
                torch.lerp(theta, tuned[name], omega, out=target.data)
        self._omega = omega

    def predict(self, family, pipe, x: torch.Tensor, t, text: Text) -> torch.Tensor:
        if len(self._groups) == 1:
            return family.predict(pipe, x, t, text, model=self._groups[0][0])
        out = None
        for model, index in self._groups:
            pred = family.predict(pipe, x[index], t, text.select(index), model=model)
            if out is None:
                out = pred.new_empty((x.shape[0], *pred.shape[1:]))
            out[index] = pred
        return out

    def __exit__(self, *exc):
        self._to_omega(0.0)  # the pipeline's denoiser holds θ again, bit for bit
        self._groups = []
        return super().__exit__(*exc)

    def _hooks(self):
        return []


def attach_full_weights(pipe, path: str | os.PathLike) -> FullWeights:
    """Load a full fine-tune of ``pipe``'s denoiser from ``path`` (`weight_files`) as a second
    denoiser θ' beside the base; the pipeline itself is left as it is. Returns its branch weights
    for `wig.sampling.sampler.sample`."""
    family = family_of(pipe)
    base = family.denoiser(pipe)
    state = read_finetune(base, path, family.component)
    own = base.state_dict()
    differing = [name for name, tensor in own.items() if not torch.equal(tensor, state[name])]
    tuned = copy.deepcopy(base)
    tuned.load_state_dict(state, strict=True)
    tuned.eval().requires_grad_(False)
    return FullWeights(tuned, differing, str(path))


def attach_base(pipe, path: str | os.PathLike) -> FullWeights:
    """For a pipeline that is itself the fine-tune (InstructPix2Pix, fine-tuned from SD 1.5): its
    denoiser's weights become θ' (a second denoiser) and the pretrained base at ``path`` is loaded
    into the pipeline's own — ``conv_in.weight`` zero-padded to the fine-tune's input channels — so
    PG's θω = θ + ω(θ' − θ) runs as for `attach_full_weights`. The pipeline's denoiser holds θ
    afterwards (θ' is the returned weights' ``tuned``)."""
    family = family_of(pipe)
    model = family.denoiser(pipe)
    state = read_finetune(model, path, family.component, pad=("conv_in.weight",))
    tuned = copy.deepcopy(model)
    tuned.eval().requires_grad_(False)
    with torch.no_grad():
        model.load_state_dict(state, strict=True)
    own = tuned.state_dict()
    differing = [name for name, tensor in model.state_dict().items() if not torch.equal(tensor, own[name])]
    return FullWeights(tuned, differing, str(path))
