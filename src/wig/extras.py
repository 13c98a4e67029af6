"""The optional parts of wig and whether they are installed: the extras of its own metadata.

``pip install wig`` is the library and the diffusers guider (torch, diffusers, transformers, peft,
safetensors, numpy, pillow); the workflow, the metrics and the user-study web app come with extras
(``wig[workflow]``, ``wig[user-study]``, …, pyproject.toml). What an extra brings is read from the
installed distribution's ``Requires-Dist`` lines, so this module holds no second copy of the list.
"""

from __future__ import annotations

from wig.errors import WigError


class MissingExtra(WigError, ImportError):
    """An extra wig needs for what was asked is not installed (one line, naming the extra)."""


def missing(extra: str) -> list[str]:
    """The distributions ``extra`` requires that are not installed (empty: all are, or wig's own
    metadata cannot be read, as in a source tree put on the path by hand)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    try:
        requires = metadata.requires("wig") or []
    except metadata.PackageNotFoundError:
        return []
    absent = []
    for line in requires:
        requirement = Requirement(line)
        if requirement.marker is None or not requirement.marker.evaluate({"extra": extra}):
            continue
        if requirement.marker.evaluate({"extra": ""}):  # a core requirement, not the extra's own
            continue
        if requirement.name == "wig":  # an extra made of other extras: wig[workflow]
            absent += [name for inner in sorted(requirement.extras) for name in missing(inner)]
            continue
        try:
            metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            absent.append(requirement.name)
    return sorted(set(absent))


def require(extra: str, what: str) -> None:
    """Raise `MissingExtra` in one line when ``extra`` is not fully installed: ``what`` needs it."""
    absent = missing(extra)
    if absent:
        raise MissingExtra(
            f"{what} needs the {extra!r} extra ({', '.join(absent)} not installed): pip install 'wig[{extra}]'"
        )
