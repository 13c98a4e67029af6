"""Guidance methods, one module each (``wig/guidance/methods/<method>.py``), behind one registry
(`wig.guidance.base`): the branches a step evaluates and how their outputs combine.

    none   (θ', c)                                  e_c
    cfg    (θ', ∅) (θ', c)                          e_u + λ(e_c − e_u)
    pg     (θω, ∅) (θ', c)                          e_u + λ(e_c − e_u)     (Park et al. 2025)
    ag     (θ', ∅) (θ', c) (θ_weak, c)              e_u + λ(e_c − e_u) + (λ_ag − 1)(e_c − e_w)
    cfgpp  as cfg; DDIM re-noises with e_u          (CFG++, Chung et al. 2024)
    pgpp   as pg;  DDIM re-noises with e_u
    sag    (θω, ∅) (θ', c) (θ', c₀)                 e_u + λ((1 + w_t)e_c − w_t e_c₀ − e_u)  (Chan et al. 2024)
           c₀: the prompt with the subject replaced by its class noun; w_t = −1 early (t > T), r after
    dreamblend  reference (θ_u, ∅) (θ_u, c), result (θω, ∅) (θ', c): CFG each, from the same noise; the
           result's latent steered early towards the reference's cross-attention maps (Ram et al. 2024)
    ip2p-cfg  (θ', c, I) (θω, ∅, I) (θω, ∅, ∅)      e_∅∅ + s_T(e_cI − e_∅I) + s_I(e_∅I − e_∅∅)  (InstructPix2Pix)
           I: the latents of the image to edit (an InstructPix2Pix pipeline only)

The combinations are linear and their weights sum to one, so they hold for any prediction type
(ε, v or x0) of the model. A new method is a module of ``wig/guidance/methods/`` (or of a package
with a ``wig.plugins`` entry point, `wig.plugins`) with a registered `GuidanceMethod` subclass:
that is all it takes for the sampler, the grid, the tables, the plots and the CLI.
"""

from wig.guidance.base import (
    NEGATIVE,
    PROMPT,
    REGISTRY,
    RESULT,
    Branch,
    GuidanceMethod,
    baseline,
    canonical,
    column_values,
    columns,
    make,
    method_class,
    param,
    parameters,
    point_columns,
    point_of,
    point_schema,
    register,
)

Guidance = make  # `Guidance("pg", 7.5, omega=0.0)`: a method by name with its settings

# last, once the names above exist: the methods (and entry points' plug-ins) import them
from wig.guidance import methods  # noqa: E402, F401  (every module of wig/guidance/methods/ registers itself)

__all__ = [
    "NEGATIVE",
    "PROMPT",
    "REGISTRY",
    "RESULT",
    "Branch",
    "Guidance",
    "GuidanceMethod",
    "baseline",
    "canonical",
    "column_values",
    "columns",
    "make",
    "method_class",
    "param",
    "parameters",
    "point_columns",
    "point_of",
    "point_schema",
    "register",
]
