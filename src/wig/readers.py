"""Reading the files a user hands wig (prompt lists, sheets, the DreamBooth table, JSON records,
Parquet manifests): one line naming the file and the place of the fault, never a codec's or a
Parquet reader's traceback.

Ground floor: imports nothing of wig but its errors, so every layer may use it.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from wig.errors import WigError


def read_text(path: str | os.PathLike, what: str, error: type[WigError] = WigError) -> str:
    """``path``'s text as UTF-8 (a byte-order mark dropped). A missing or unreadable file, or one
    byte that is not UTF-8, raises ``error`` naming ``what``, the file, and for a bad byte its
    line and byte offset (the usual cause: a file saved as Latin-1 or Windows-1252)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err.strerror or err}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise error(
            f"{path}:{line}: {what} is not UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start}); save it as UTF-8"
        ) from None


def read_json(path: str | os.PathLike, what: str, error: type[WigError] = WigError):
    """``path`` parsed as JSON, with `read_text`'s errors and a syntax error named by line."""
    text = read_text(path, what, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{path}:{err.lineno}: {what} is not valid JSON ({err.msg})") from None


# a number as people type it (YAML 1.2's float and int forms, which PyYAML's 1.1 reads as strings
# when they lack a dot or have a sign on the exponent): 1e-4, 1E4, +2, -0.5, .5, 5.
_NUMBER = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$")


def number(value: Any, integer: bool = False) -> Any:
    """``value`` as the number it spells, where that is unambiguous: a string of digits such as
    ``"1e-4"`` or ``"500"`` becomes a float or int; with ``integer``, a whole float (``500.0``,
    ``"5e2"``) becomes an int. Anything else (``2.5`` for an integer, ``"fast"``, a bool, inf) is
    returned as it is, for the checker to refuse naming its key."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        text = value.strip()
        value = int(text) if re.fullmatch(r"[-+]?[0-9]+", text) else float(text)
    if integer and isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def value_problem(tensor, floats: bool = True) -> str | None:
    """What is wrong with a weight tensor read from a file, as the end of a sentence, or None:
    integers or bools where weights must be floats (``floats``; a loader would cast them
    silently), or NaN/inf values."""
    if not tensor.is_floating_point():
        return f"is stored as {str(tensor.dtype).removeprefix('torch.')}, not floats" if floats else None
    return None if bool(tensor.isfinite().all()) else "holds NaN or inf values"


def read_table(path: str | os.PathLike, what: str, error: type[WigError] = WigError, columns: tuple[str, ...] = ()):
    """``path`` as a polars DataFrame: an unreadable, truncated or non-Parquet file, or one without
    the ``columns`` the caller reads, raises ``error`` naming ``what`` and the file."""
    import polars as pl

    try:
        frame = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise error(f"cannot read {what} {path}: {first}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise error(f"{path}: {what} has no column {missing[0]!r} (columns: {', '.join(frame.columns) or 'none'})")
    return frame
