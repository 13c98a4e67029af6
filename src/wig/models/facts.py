"""The model families' facts, in one table that the families (`wig.models.families`), the tiny
twins (`wig.models.tiny`), pipeline loading (`wig.models.pipelines`) and the study
(`wig.workflow.study`, read while Snakemake parses: no torch here) all read — so no copy of them
can drift.

A *family* is what differs in how a pipeline is sampled and trained (SD's UNet, SANA's
transformer, InstructPix2Pix's UNet that also reads an input image). A *tiny kind* is how a
random-init twin is built: from which shipped config (``wig/configs/tiny_<config>.json``) and
which family then samples it (the synthetic world's base is a Stable Diffusion pipeline).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class FamilyFacts:
    name: str
    image_input: bool  # it edits an input image (each concept's first reference image in a study)
    ddim: bool  # the paper samples it with DDIM (`load_pipeline(scheduler="auto")`); else its own sampler


FAMILIES = {
    f.name: f
    for f in (
        FamilyFacts("sd", image_input=False, ddim=True),
        FamilyFacts("sana", image_input=False, ddim=False),  # a multistep flow DPM-Solver
        FamilyFacts("ip2p", image_input=True, ddim=False),  # the stock InstructPix2Pix pipeline's scheduler
        FamilyFacts("sdxl", image_input=False, ddim=False),  # the checkpoint's Euler, as its model card samples
    )
}


@dataclass(frozen=True)
class TinyKind:
    name: str
    config: str  # the shipped config it is built from: wig/configs/tiny_<config>.json
    family: str  # the family that samples it


TINY = {
    t.name: t
    for t in (
        TinyKind("sd", config="sd", family="sd"),
        TinyKind("sana", config="sana", family="sana"),
        TinyKind("ip2p", config="sd", family="ip2p"),
        TinyKind("sdxl", config="sdxl", family="sdxl"),  # SD's config with 8 input channels
        TinyKind("synthetic", config="synthetic", family="sd"),  # pretrained here (wig.synthetic.pretrain)
    )
}


def shipped_config(config: str) -> dict:
    """A shipped tiny config, ``wig/configs/tiny_<config>.json`` (package data)."""
    return json.loads(resources.files("wig.configs").joinpath(f"tiny_{config}.json").read_text())
