"""How wig finds its plug-ins: the shipped ones by walking their packages, everyone else's through
the ``wig.plugins`` entry-point group.

Every kind of plug-in (guidance method, personalization method, metric and encoder kind, model
family) has a package whose modules *are* its plug-ins — ``wig.guidance.methods``,
``wig.personalization.methods``, ``wig.evaluation.plugins``, ``wig.models.families`` — and each
module registers what it defines where it is defined (``@register``, ``register_metric``, …).
The package's ``__init__`` ends with ``discover(__name__)``: importing the package imports every
module in it, so a new plug-in is its file and nothing else (no import list to keep).

A package outside wig plugs in through an entry point (``pyproject.toml``)::

    [project.entry-points."wig.plugins"]
    my_methods = "my_package.wig_plugins"

The named module is imported, once per process, the first time any plug-in package of wig is;
what it registers is then known to the library, to ``wig`` commands, to Snakemake while it parses
the workflow and to every job process (each imports wig afresh, so each loads the entry points).
An entry point's module should import torch inside its functions, as wig's own plug-ins do:
Snakemake imports it while it parses, and parsing must stay fast.

`wig.provenance` counts a discovered package's modules, and every entry point's module, in the
code hash of a job that imports the package, so editing a plug-in reruns what it made.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
from functools import lru_cache

from wig.errors import WigError

GROUP = "wig.plugins"

_entry_points_loaded = False


def discover(package: str) -> list[str]:
    """Import every module and subpackage directly inside ``package`` (by name, sorted), skipping
    names that start with ``_``; return their names. Called as ``discover(__name__)`` at the end
    of a plug-in package's ``__init__``; then loads the entry points (`load_entry_points`)."""
    root = importlib.import_module(package)
    names = sorted(m.name for m in pkgutil.iter_modules(root.__path__) if not m.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{package}.{name}")
    load_entry_points()
    return names


@lru_cache(maxsize=1)
def entry_points() -> tuple:
    """The ``wig.plugins`` entry points of the installed distributions, sorted by name, read once
    per process. ``importlib.metadata`` (≈ 60 ms to import and scan every distribution, on each
    ``wig --help`` and each Snakemake parse) is asked only when some distribution's
    ``entry_points.txt`` names the group at all (`_group_named`, a plain file scan)."""
    if not _group_named():
        return ()
    from importlib import metadata

    return tuple(sorted(metadata.entry_points(group=GROUP), key=lambda ep: (ep.name, ep.value)))


def _group_named() -> bool:
    """Whether an ``entry_points.txt`` of a distribution on ``sys.path`` has a ``[wig.plugins]``
    section: the quick negative answer for the usual environment without plug-ins."""
    header = f"[{GROUP}]"
    for folder in sys.path:
        try:
            entries = os.scandir(folder or ".")
        except OSError:
            continue
        with entries:
            for entry in entries:
                if not entry.name.endswith((".dist-info", ".egg-info")):
                    continue
                try:
                    # a stranger's file in any encoding: the header is ASCII either way
                    with open(os.path.join(entry.path, "entry_points.txt"), encoding="utf-8", errors="replace") as f:
                        if header in f.read():
                            return True
                except OSError:
                    continue
    return False


def load_entry_points() -> None:
    """Import every ``wig.plugins`` entry point's module, once per process. A module that fails to
    import is reported in one line naming the entry point and its distribution."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True  # first: a plug-in's module imports wig packages, which call this again
    for ep in entry_points():
        try:
            ep.load()
        except Exception as err:  # whatever a stranger's module raises, it is one line here
            dist = getattr(ep.dist, "name", None) or "an unknown distribution"
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise WigError(
                f"plug-in {ep.name!r} ({ep.value}, from {dist}): cannot load it: {type(err).__name__}: {first}"
            ) from err


@lru_cache(maxsize=1)
def entry_point_files() -> tuple[tuple[str, str, bytes], ...]:
    """For the code hash (`wig.provenance`): per entry point, its name and value, and the source
    of every Python file of the top-level package (or module) it names — read, not imported."""
    out = []
    for ep in entry_points():
        top = ep.value.split(":")[0].split(".")[0]
        spec = importlib.util.find_spec(top) if top not in sys.modules else sys.modules[top].__spec__
        files = []
        if spec is not None and spec.submodule_search_locations:
            for folder in spec.submodule_search_locations:
                files += sorted(p for p in _py_files(folder))
        elif spec is not None and spec.origin and spec.origin.endswith(".py"):
            files.append(spec.origin)
        body = b"".join(open(f, "rb").read() + b"\0" for f in files)
        out.append((ep.name, ep.value, body))
    return tuple(out)


def _py_files(folder: str):
    from pathlib import Path

    return (str(p) for p in Path(folder).rglob("*.py"))
