"""What a job's result depends on besides its inputs: library code and package versions.

Every scripted rule carries ``code=code_hash(script)`` in its ``params:`` (set for all of them at
once in the Snakefile), so Snakemake's params rerun trigger sees a library change in exactly the
jobs that run it. The hash covers the *import closure* of the script: the ``wig`` modules it
imports, the modules those import, and so on — found by reading the sources (``ast``), never by
importing them (torch takes seconds; ``snakemake -n`` parses every rule). An import inside a
function counts like one at the top: code that may run is code the result depends on. Package
data counts too: a module that names a data folder of the package
(``importlib.resources.files("wig.configs")``) reaches every file in it.

Nothing here is typed per rule, so nothing can drift: a script that gains an import gains it in
its hash.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
from functools import lru_cache
from importlib import metadata
from pathlib import Path

PACKAGE = "wig"


@lru_cache(maxsize=1)
def _package_dir() -> Path:
    # located without importing anything of wig
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"no package {PACKAGE}")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def module_file(name: str) -> Path | None:
    """The source file of a ``wig`` module or package (``wig.a.b`` → ``wig/a/b.py`` or
    ``wig/a/b/__init__.py``), or None when there is none."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = _package_dir().joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _data_folder(name: str) -> Path | None:
    """A folder of the package that holds data files (read with ``importlib.resources``)."""
    parts = name.split(".")
    if len(parts) < 2 or parts[0] != PACKAGE or not all(p.isidentifier() for p in parts):
        return None
    folder = _package_dir().joinpath(*parts[1:])
    if folder.is_dir() and any(f.is_file() and f.suffix != ".py" for f in folder.iterdir()):
        return folder
    return None


def _parents(name: str) -> list[str]:
    """``wig.a.b`` → ``wig``, ``wig.a``: importing a module runs its packages' ``__init__`` first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@lru_cache(maxsize=None)
def _read(path: Path, package: str) -> tuple[frozenset[str], frozenset[Path]]:
    """The ``wig`` modules a source file imports (anywhere in it) and the data folders it names.
    ``package``: the package the file belongs to, for relative imports ('' for a script)."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    modules: set[str] = set()
    data: set[Path] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            modules.add(origin)
            # `from wig.evaluation import plots` imports wig.evaluation.plots; `from wig.x import f` only wig.x
            modules.update(f"{origin}.{a.name}" for a in node.names if module_file(f"{origin}.{a.name}"))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "discover":
            # `discover(__name__)` in a package's __init__ (`wig.plugins`) imports all its modules
            arg = node.args[0] if node.args else None
            target = package if isinstance(arg, ast.Name) and arg.id == "__name__" else getattr(arg, "value", None)
            if isinstance(target, str):
                modules.update(_package_modules(target))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            folder = _data_folder(node.value)
            if folder is not None:
                data.add(folder)
    ours = {m for m in modules if module_file(m)}
    return frozenset(ours | {p for m in ours for p in _parents(m)}), frozenset(data)


def _package_modules(package: str) -> set[str]:
    """The modules and subpackages directly inside a ``wig`` package, as `wig.plugins.discover`
    imports them (names starting with ``_`` skipped)."""
    init = module_file(package)
    if init is None or init.name != "__init__.py":
        return set()
    found = set()
    for child in init.parent.iterdir():
        stem = child.stem if child.suffix == ".py" else child.name
        if stem.startswith("_") or not stem.isidentifier():
            continue
        if (child.suffix == ".py" and child.is_file()) or (child / "__init__.py").is_file():
            found.add(f"{package}.{stem}")
    return found


def imports_of(name: str) -> frozenset[str]:
    """The ``wig`` modules (and the packages above them) that module ``name`` imports directly,
    at the top or inside a function: one step of `import_closure` (the import-graph test walks
    the package with it)."""
    path = module_file(name)
    if path is None:
        raise ModuleNotFoundError(name)
    return _read(path, name if path.name == "__init__.py" else name.rpartition(".")[0])[0]


def import_closure(script: str | os.PathLike) -> tuple[list[str], list[Path]]:
    """The ``wig`` modules a script runs, transitively, sorted; and the package data files they
    read."""
    todo = list(_read(Path(script).resolve(), "")[0])
    modules: set[str] = set()
    folders: set[Path] = set()
    while todo:
        name = todo.pop()
        if name in modules:
            continue
        modules.add(name)
        path = module_file(name)
        imported, data = _read(path, name if path.name == "__init__.py" else name.rpartition(".")[0])
        todo.extend(imported - modules)
        folders |= data
    files = sorted(f for folder in folders for f in folder.iterdir() if f.is_file() and f.suffix != ".py")
    return sorted(modules), files


def code_files(script: str | os.PathLike) -> list[Path]:
    """Every library file a script's result depends on: its import closure's sources and data."""
    modules, data = import_closure(script)
    return sorted({module_file(m) for m in modules} | set(data))


@lru_cache(maxsize=None)
def _hash(script: Path) -> str:
    digest = hashlib.sha256()
    root = _package_dir().parent
    modules, _ = import_closure(script)
    for path in code_files(script):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    if "wig.plugins" in modules:  # it loads the entry points' plug-ins: their code counts too
        from wig.plugins import entry_point_files

        for name, value, body in entry_point_files():
            digest.update(f"entry point {name} = {value}".encode() + b"\0" + body)
    return digest.hexdigest()[:16]


def code_hash(script: str | os.PathLike) -> str:
    """sha256 (16 hex) over the paths and contents of ``code_files(script)``."""
    return _hash(Path(script).resolve())


def versions(packages=("torch", "diffusers", "transformers", "peft", "wig")) -> dict[str, str]:
    return {name: metadata.version(name) for name in packages}


def encoder_id(spec: dict) -> str:
    """A stable name for an encoder config (written into, and checked against, embedding files):
    ``dino:facebook/dino-vits16``, ``clip:ViT-B-32@openai``, ``clip-tiny:s0``."""
    if spec.get("tiny"):
        return f"{spec['kind']}-tiny:s{spec.get('seed', 0)}"
    if "train" in spec:  # trained here (the synthetic world's scene encoder): its settings name it
        digest = hashlib.sha256(json.dumps(spec["train"] or {}, sort_keys=True).encode()).hexdigest()[:8]
        return f"{spec['kind']}-trained:s{spec.get('seed', 0)}-{digest}"
    return f"{spec['kind']}:{spec['name']}" + (f"@{spec['pretrained']}" if spec.get("pretrained") else "")
