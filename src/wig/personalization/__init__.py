"""Personalization methods, one module each (``wig/personalization/methods/<method>.py``), behind one
registry (`wig.personalization.base`): how a run fine-tunes a model on a subject (writing the
full and the weak checkpoint), how it attaches to a pipeline and how each guidance branch's
weights θω are realised.

    db-lora      DreamBooth-LoRA with prior preservation (the paper's method); θω = the LoRA at scale ω
    db-lora-ti   DreamBooth-LoRA + textual inversion of new tokens <s0><s1> (pivotal tuning)
    classdiffusion  Custom Diffusion (cross-attention k/v + <new1>) with the semantic preservation loss
    given        a fine-tune given, not trained: a full denoiser (Diffusion-DPO) or a LoRA file

A new method is a module of ``wig/personalization/methods/`` (or of a package with a
``wig.plugins`` entry point, `wig.plugins`) with a registered `PersonalizationMethod` subclass: that
is all it takes for config, the study, the train rule and the CLI.

What the sampler asks of an attached run (`BranchWeights`) is the torch-free leaf `wig.branches`.
Only the light declarations are imported here (no torch): the study reads the registry when
Snakemake parses the workflow. Training and loading code is imported by the method when it runs.
"""

from wig.personalization.base import (
    REGISTRY,
    PersonalizationMethod,
    Subject,
    TrainedMethod,
    TrainingExtension,
    make,
    method_class,
    register,
)

__all__ = [
    "REGISTRY",
    "PersonalizationMethod",
    "Subject",
    "TrainedMethod",
    "TrainingExtension",
    "make",
    "method_class",
    "register",
]

# last, once the names above exist: the methods (and entry points' plug-ins) import them
from wig.personalization import methods  # noqa: E402, F401  (every module of methods/ registers itself)
