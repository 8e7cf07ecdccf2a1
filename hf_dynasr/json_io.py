"""JSON files of runs, evaluations and exports: written atomically, read with errors that name the file."""

from __future__ import annotations

import json
import math
import os


def write_json(path, data, *, sort_keys: bool = False) -> None:
    """Write `data` as indented JSON to `path` atomically (temp file in the same folder, fsync, rename), so a
    reader, or a run killed half-way, never leaves half a file. Tensors and numpy scalars become numbers,
    infinities `null`, anything else unknown its `str`."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=sort_keys, default=_json_default)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_json(path):
    """The JSON value in `path`; a corrupt file raises ValueError naming it."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); restore it or delete it to rebuild it") from err


def _json_default(value):
    if hasattr(value, "item"):  # torch / numpy scalars
        value = value.item()
    if isinstance(value, float) and math.isinf(value):
        return None
    if isinstance(value, (int, float)):
        return value
    return str(value)
