"""Atomic file writes: write to a temporary sibling, then rename over the target.

A crash or a kill (SIGKILL included) can leave a stray ``.tmp-*`` file behind, never a
half-written output under the final name. Snakemake only ever sees complete files.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    On an exception the temporary file is removed and the exception propagates, so the
    final path is either absent (or its previous version) or complete.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = target.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{target.stem[:40]}-", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; give the final file the permissions a plain open() would (umask).
    os.chmod(tmp_path, 0o666 & ~_current_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(target: str | os.PathLike, text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``target``."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | os.PathLike, obj, *, sort_keys: bool = True) -> None:
    """Atomically write ``obj`` as indented, strict JSON (see :func:`dumps_json`)."""
    write_text(target, dumps_json(obj, sort_keys=sort_keys) + "\n")


def dumps_json(obj, *, sort_keys: bool = True, indent: int | None = 2) -> str:
    """Strict JSON text of ``obj``: no ``NaN``/``Infinity`` literal can come out.

    Non-finite floats (Python or numpy, at any depth of dicts/lists/tuples/arrays) become
    ``null``; numpy scalars and arrays become plain numbers and lists, paths strings.
    ``allow_nan=False`` makes anything that still slips through an error, not a bad file.
    A writer that nulls a value for a reason keeps that reason in the object's ``notes``
    dict (key -> reason text, see docs/CONTRACTS.md).
    """
    import json

    return json.dumps(strict_json(obj), indent=indent, sort_keys=sort_keys, allow_nan=False, default=_json_default)


def strict_json(value):
    """``value`` with non-finite floats replaced by None and numpy/path values made plain, recursively."""
    import math

    import numpy as np

    if isinstance(value, dict):
        return {_json_key(key): strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    if isinstance(value, np.ndarray):
        return [strict_json(item) for item in value.tolist()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if _is_missing_scalar(value):
        return None
    return value


def _json_key(key):
    """A dict key JSON accepts (numpy scalars as plain values)."""
    import numpy as np

    return key.item() if isinstance(key, np.generic) else key


def _is_missing_scalar(value) -> bool:
    """pandas.NA / pandas.NaT (no pandas import needed for the check)."""
    return type(value).__name__ in ("NAType", "NaTType")


def write_csv(target: str | os.PathLike, frame, **kwargs) -> None:
    """Atomically write a pandas DataFrame as CSV (``index=False`` unless given)."""
    kwargs.setdefault("index", False)
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, **kwargs)


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
