"""Atomic outputs: a crash or SIGKILL leaves no half-written result where a later stage
(or Snakemake) would take it for done."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from wig.errors import WigError


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False):
    """Yield a fresh sibling folder of ``out``; rename it to ``out`` only on success.

    Leftovers of killed runs (``.<name>.tmp*`` siblings) are removed first.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise WigError(f"output exists and is not an empty folder: {out}")
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.tmp*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp"))
    # mkdtemp makes a private (0700) folder; a result is a folder like any other: the umask decides
    os.chmod(tmp, 0o777 & ~current_umask())
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def replace_file(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Move a fully written ``tmp`` onto ``out`` (same folder: an atomic rename)."""
    os.replace(tmp, out)


def tmp_path(out: str | os.PathLike) -> Path:
    """Where to write ``out`` before `replace_file` (hidden, same folder)."""
    out = Path(out)
    return out.with_name(f".{out.name}.tmp")
