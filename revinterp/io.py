"""Atomic file writes and strict JSON: nothing is ever left half-written, no file holds a bare ``NaN``.

Every file the library writes goes to a temporary file in the same directory first and is then
renamed over the target (``os.replace`` is atomic on POSIX and Windows), so an interrupted run leaves
either the old file or the new one, never a truncated mix.

JSON is written with :func:`write_json` / :func:`json_text`, which refuse NaN and infinities
(``allow_nan=False``: strict parsers reject the bare ``NaN`` that Python's json writes by default) and say
where in the object the offending value sits. A value that can legitimately be undefined is stored as
``null`` beside a reason (:func:`finite_or_none`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


class NonFiniteJSONError(ValueError):
    """An object to be written as JSON holds NaN or an infinity."""


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and move the result to ``path`` once it is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def non_finite_path(obj, where: str = "") -> str | None:
    """Where the first NaN or infinity in a JSON-like ``obj`` sits (``"splits.forward_seen.accuracy"``), or None."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (where or "(the value itself)")
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = non_finite_path(value, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def json_text(obj, *, indent: int | None = 1, what: str = "JSON output", **kwargs) -> str:
    """``json.dumps(obj, allow_nan=False)``; a NaN or infinity raises :class:`NonFiniteJSONError` naming where it is."""
    try:
        return json.dumps(obj, indent=indent, allow_nan=False, **kwargs)
    except ValueError as e:
        where = non_finite_path(obj)
        if where is None:
            raise
        raise NonFiniteJSONError(
            f"{what}: {where} is not a finite number; expected finite values (JSON has no NaN or infinity; "
            "store an undefined value as null with a reason)"
        ) from e


def write_json(path: str | Path, obj, *, indent: int | None = 1) -> None:
    """Write ``obj`` as strict JSON (no NaN, no infinities) to ``path``, atomically."""
    path = Path(path)
    atomic_write_text(path, json_text(obj, indent=indent, what=str(path)) + "\n")


def finite_or_none(value: float | None) -> float | None:
    """``value`` when it is a finite number, else None (to be stored as ``null`` beside a reason)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
