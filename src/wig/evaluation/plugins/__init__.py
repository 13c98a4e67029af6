"""The metrics and encoder kinds wig ships, one module each (an encoder kind and the metrics that
read its embeddings); every module here is imported (and so registers what it defines,
`wig.evaluation.base`) when this package is (`wig.plugins.discover`). A new metric or encoder
kind is a new module. Tables, figures and score columns list metrics by their ``order`` field,
not by import order.

`wig.evaluation.encoders` and `wig.evaluation.metrics` import this package, so their registries
(`ENCODERS`, `REGISTRY`) are complete wherever they are read.
"""

from wig.plugins import discover

discover(__name__)
