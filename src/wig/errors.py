"""Errors the CLI reports as one line (exit code 1) instead of a traceback."""


class WigError(ValueError):
    """Bad input: a missing file, a key out of range, a model that does not fit."""


def unknown(what: str, name: str, choices) -> str:
    """The message for a name no registry knows: the nearest registered name, then all of them
    (a config typo is fixed from one line)."""
    import difflib

    choices = sorted(choices)
    near = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    hint = f"did you mean {near[0]!r}? " if near else ""
    return f"unknown {what} {name!r}; {hint}choose from {', '.join(choices)}"
