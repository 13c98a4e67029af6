"""The guidance methods wig ships, one module each; every module here is imported (and so
registers its method) when this package is (`wig.plugins.discover`). A new method is a new file."""

from wig.plugins import discover

discover(__name__)
