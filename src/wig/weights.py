"""Real checkpoints and encoder weights, resolved to local files before any job runs.

Compute nodes often have no internet. The resolve rules run on the submit host (local rules):
they fetch what a config names into the Hugging Face cache (put HF_HOME on a filesystem the
nodes share) and write a record of the source, the requested and the resolved revision and the
local path. Jobs load from the recorded path, never by hub name, and the record is the run's
provenance. A local folder resolves to itself (no revision).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from wig.errors import WigError


class WeightsError(WigError):
    """Weights that cannot be resolved, or a record that cannot be read."""


def snapshot_revision(path: str | os.PathLike) -> str | None:
    """The commit of a Hugging Face cache path (``.../snapshots/<commit>/...``)."""
    parts = Path(path).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else None


def local_record(source: str) -> dict | None:
    """The record of a local file or folder (it resolves to itself), or None."""
    path = Path(source).expanduser()
    return {"source": source, "revision": None, "path": str(path.resolve())} if path.exists() else None


def file_digests(folder: str | os.PathLike) -> dict[str, str]:
    """sha256 of every file under ``folder``, by its POSIX path relative to it, sorted."""
    import hashlib

    root = Path(folder)
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        out[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def folder_sha256(folder: str | os.PathLike) -> str:
    """One digest of a folder's files: sha256 of its ``sha256sum``-style listing (``<digest>  <path>``
    per file, sorted by path), so a renamed, added, removed or changed file changes it."""
    import hashlib

    listing = "".join(f"{digest}  {name}\n" for name, digest in file_digests(folder).items())
    return hashlib.sha256(listing.encode()).hexdigest()


def check_sha256(folder: str | os.PathLike, expected: str, what: str) -> str:
    """``folder_sha256(folder)``, refused unless it is ``expected``."""
    got = folder_sha256(folder)
    if got != expected.lower():
        raise WeightsError(
            f"{what}: the files in {folder} have sha256 {got}, not the {expected} the config names "
            f"(a changed, added or missing file; `wig.weights.file_digests` lists them)"
        )
    return got


def resolve_model(spec: dict) -> dict:
    """A diffusers pipeline (``path`` + optional ``revision`` of a model entry) in the local cache;
    with ``sha256``, its files must have that digest (`folder_sha256`), checked on every resolve."""
    source = spec["path"]
    if record := local_record(source):
        if spec.get("sha256"):
            record["sha256"] = check_sha256(record["path"], spec["sha256"], f"model {source}")
        return record
    from diffusers import DiffusionPipeline

    try:
        folder = DiffusionPipeline.download(source, revision=spec.get("revision"))
    except Exception as err:  # hub errors come in many types; all mean the same here
        raise WeightsError(f"cannot resolve model {source}: {str(err).splitlines()[0]}") from None
    record = {
        "source": source,
        "requested": spec.get("revision"),
        "revision": snapshot_revision(folder),
        "path": str(folder),
    }
    if spec.get("sha256"):
        record["sha256"] = check_sha256(folder, spec["sha256"], f"model {source}")
    return record


def resolve_finetune(spec: dict) -> dict:
    """A given fine-tune's weights (``weights`` + ``kind`` of a `given` entry) in the local cache: a
    local file or folder as it is, else the hub repo's configs and safetensors (a denoiser repo such
    as Diffusion-DPO's, or a LoRA repo; for ``kind: base`` its ``unet/`` only)."""
    source = spec["weights"]
    if record := local_record(source):
        return record
    from huggingface_hub import snapshot_download

    # a base model (kind base: the pretrained model an InstructPix2Pix was tuned from) is read for its
    # denoiser alone: not its other components, nor the single-file checkpoints such repos also hold
    base = [  # the full-precision UNet, one file or sharded (not its fp16 / non-EMA variants)
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.safetensors.index.json",
        "unet/diffusion_pytorch_model-*-of-*.safetensors",
    ]
    patterns = base if spec.get("kind") == "base" else None
    try:
        folder = snapshot_download(source, allow_patterns=patterns or ["*.json", "*.safetensors"])
    except Exception as err:
        raise WeightsError(f"cannot resolve fine-tune {source}: {str(err).splitlines()[0]}") from None
    return {"source": source, "requested": None, "revision": snapshot_revision(folder), "path": folder}


@contextlib.contextmanager
def offline():
    """Hub lookups answered from the local cache only, whatever the environment says."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def write_record(record: dict, out: str | os.PathLike) -> None:
    from wig.atomic import replace_file, tmp_path

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp_path(out).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    replace_file(tmp_path(out), out)


def recorded_path(record_file: str | os.PathLike) -> str:
    """The local path a resolve record points to; it must still exist (a cleaned cache fails here)."""
    try:
        path = json.loads(Path(record_file).read_text())["path"]
    except (OSError, ValueError, KeyError) as err:
        raise WeightsError(f"unreadable weights record {record_file}: {err}") from None
    if not Path(path).exists():
        raise WeightsError(
            f"{record_file}: resolved weights are gone from {path}; resolve again "
            f"(snakemake --forcerun resolve_model resolve_encoder)"
        )
    return path
