"""Errors the CLI reports as one line (exit code 1) instead of a traceback."""


class WigError(ValueError):
    """Bad input: a missing file, a key out of range, a model that does not fit."""
