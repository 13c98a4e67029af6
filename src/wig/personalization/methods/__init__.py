"""The personalization methods wig ships, one module (or subpackage) each; every one is imported
(and so registers its method) when this package is (`wig.plugins.discover`). Only light
declarations live at a method's top level (no torch): the study reads the registry while
Snakemake parses. A new method is a new module."""

from wig.plugins import discover

discover(__name__)
