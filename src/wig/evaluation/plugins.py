"""The metrics and encoders wig ships, one import line each: importing this module registers them
(each registers itself where it is defined, `wig.evaluation.base`). A new metric or encoder kind
is its module, its test and its line here; a plug-in outside the package registers the same way.

`wig.evaluation.encoders` and `wig.evaluation.metrics` import this, so their registries
(`ENCODERS`, `REGISTRY`) are complete wherever they are read.
"""

# the order is the registries': tables, figures and score columns list metrics in it
# isort: off
from wig.evaluation import dino  # noqa: F401
from wig.evaluation import clip  # noqa: F401
from wig.evaluation import pickscore  # noqa: F401
from wig.evaluation import dreamsim  # noqa: F401
from wig.evaluation import scene  # noqa: F401
from wig.evaluation import oracle  # noqa: F401
from wig.evaluation import diversity  # noqa: F401
# isort: on
