"""What a job's result depends on besides its inputs: library code and package versions.

Rules pass ``code_hash(...)`` of the modules a job runs through ``params:``, so Snakemake's
params rerun trigger sees a code change in exactly the stages that run that code.
"""

from __future__ import annotations

import hashlib
import importlib.util
from importlib import metadata


def code_hash(*modules: str) -> str:
    """sha256 (16 hex) over the source of the named ``wig`` modules, e.g. ``"guidance"``."""
    digest = hashlib.sha256()
    for name in sorted(set(modules)):
        spec = importlib.util.find_spec(f"wig.{name}")  # locate without importing (torch is slow)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(f"no module wig.{name}")
        digest.update(name.encode() + b"\0")
        with open(spec.origin, "rb") as fh:
            digest.update(fh.read())
    return digest.hexdigest()[:16]


def versions(packages=("torch", "diffusers", "transformers", "peft", "wig")) -> dict[str, str]:
    return {name: metadata.version(name) for name in packages}


def encoder_id(spec: dict) -> str:
    """A stable name for an encoder config (written into, and checked against, embedding files):
    ``dino:facebook/dino-vits16``, ``clip:ViT-B-32@openai``, ``clip-tiny:s0``."""
    if spec.get("tiny"):
        return f"{spec['kind']}-tiny:s{spec.get('seed', 0)}"
    return f"{spec['kind']}:{spec['name']}" + (f"@{spec['pretrained']}" if spec.get("pretrained") else "")
