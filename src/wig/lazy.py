"""A module imported when it is first used, not when it is named: the model families' modules
are read while Snakemake parses the workflow (their facts), where importing torch would cost
seconds, yet their methods run torch. ``torch = lazy_module("torch")`` at the top of such a module
keeps ``torch.cat(...)`` in the code and the import out of the parse."""

from __future__ import annotations

import importlib


class LazyModule:
    """Stands for the module ``name``; the first attribute read imports it."""

    __slots__ = ("_name",)

    def __init__(self, name: str):
        object.__setattr__(self, "_name", name)

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def lazy_module(name: str) -> LazyModule:
    return LazyModule(name)
