"""Reads tensors, or only some of their rows and columns, from safetensors files without a memory map.

The lazy loader of one size (`loading_dynasr.py`) reads through `SafetensorsReader`: positioned reads of the
needed rows go straight into a preallocated tensor, so peak memory follows what is read, not the file. Files
are resolved with `transformers.utils.cached_file` (local folders and Hub ids). Only safetensors is read,
never pickle.
"""

from __future__ import annotations

import json
import math
import os
import struct

import torch
from safetensors import safe_open
from transformers.utils.hub import cached_file, is_offline_mode

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_WEIGHTS_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "pytorch_model.pt")
#: safetensors dtype names of floating-point tensors (weights stored as anything else are not float weights)
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


class CheckpointFormatError(OSError):
    """The checkpoint has no safetensors weights, or its weights file is unreadable (truncated, corrupted)."""


def runs(indices) -> list[tuple[int, int]]:
    """Split indices into maximal runs of consecutive values: [0, 1, 2, 7, 8, 3] -> [(0, 3), (7, 9), (3, 4)].

    Order (and repeats) are preserved, so concatenating the runs gives back `indices`."""
    values = [int(i) for i in (indices.tolist() if isinstance(indices, torch.Tensor) else indices)]
    out: list[tuple[int, int]] = []
    for value in values:
        if out and value == out[-1][1]:
            out[-1] = (out[-1][0], value + 1)
        else:
            out.append((value, value + 1))
    return out


class SafetensorsReader:
    """Reads tensors and slices from one or more safetensors files (a sharded checkpoint) and counts them."""

    def __init__(self, weight_map: dict[str, str], files: dict[str, str], total_size: int | None = None):
        self.weight_map = weight_map  # tensor name -> shard name
        self.files = files  # shard name -> local path
        # bytes of all tensors: the index's metadata.total_size, or the one file's size; None if unknown
        self.total_size = total_size if total_size is not None or weight_map else os.path.getsize(
            files[SAFE_WEIGHTS_NAME])
        self._handles: dict[str, object] = {}
        self.bytes_read = 0
        self.tensors_read: list[str] = []

    @classmethod
    def resolve(cls, path_or_repo, needed_keys=None, **download_kwargs) -> SafetensorsReader:
        """Find `model.safetensors` or the sharded index (downloading only the shards `needed_keys` use)."""
        path = os.fspath(path_or_repo)
        single = cached_file(path, SAFE_WEIGHTS_NAME, _raise_exceptions_for_missing_entries=False,
                             _raise_exceptions_for_connection_errors=False, **download_kwargs)
        if single is not None:
            return cls({}, {SAFE_WEIGHTS_NAME: single})
        index_file = cached_file(path, SAFE_WEIGHTS_INDEX_NAME, _raise_exceptions_for_missing_entries=False,
                                 _raise_exceptions_for_connection_errors=False, **download_kwargs)
        if index_file is None:
            for name in PICKLE_WEIGHTS_NAMES:
                found = cached_file(path, name, _raise_exceptions_for_missing_entries=False,
                                    _raise_exceptions_for_connection_errors=False, **download_kwargs)
                if found is not None:
                    raise CheckpointFormatError(
                        f"{path} holds pickled weights ({name}), not {SAFE_WEIGHTS_NAME}; hf_dynasr loads only "
                        "safetensors (pickle can run arbitrary code). Convert it once in a trusted environment: "
                        "load the model with torch.load/from_pretrained(..., use_safetensors=False) and call "
                        "model.save_pretrained(dir) (which writes model.safetensors)."
                    )
            raise CheckpointFormatError(
                f"no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME} found in {path}"
                + (" (offline mode: is it in the local cache?)" if is_offline_mode() else "")
            )
        try:
            with open(index_file, encoding="utf-8") as f:
                index = json.load(f)
            weight_map, total_size = index["weight_map"], (index.get("metadata") or {}).get("total_size")
        except (OSError, ValueError, KeyError, AttributeError) as err:
            raise CheckpointFormatError(f"{index_file} is not a valid safetensors index: {err}") from err
        shards = sorted(set(weight_map.values() if needed_keys is None
                            else (weight_map[k] for k in needed_keys if k in weight_map)))
        files = {}
        for shard in shards:
            if not shard.endswith(".safetensors"):
                raise CheckpointFormatError(f"{index_file} names a non-safetensors shard {shard!r}")
            files[shard] = cached_file(path, shard, **download_kwargs)
        return cls(weight_map, files, int(total_size) if isinstance(total_size, (int, float)) else None)

    def _file(self, key: str):
        """(header, local path, fd) of the file holding `key`; KeyError if no file holds it."""
        if self.weight_map:
            if key not in self.weight_map:
                raise KeyError(key)
            shard = self.weight_map[key]
        else:
            shard = SAFE_WEIGHTS_NAME
        path = self.files[shard]
        if shard not in self._handles:
            self._handles[shard] = _open_safetensors(path)
        header, fd = self._handles[shard]
        return header, path, fd

    def shape(self, key: str) -> tuple[int, ...] | None:
        """Stored shape of `key`, or None when the checkpoint does not hold it."""
        try:
            header, _, _ = self._file(key)
        except KeyError:
            return None
        return tuple(header[key]["shape"]) if key in header else None

    def dtype(self, key: str) -> str | None:
        """Stored safetensors dtype name of `key` ("F32", "BF16", "I8", ...), or None when it is not held."""
        try:
            header, _, _ = self._file(key)
        except KeyError:
            return None
        return header[key]["dtype"] if key in header else None

    def read(self, key: str, slices) -> torch.Tensor:
        """The tensor `key` restricted by `slices` = [(dim, indices), ...]; reads only the selected bytes.

        Positioned reads (`os.preadv`) go straight into the preallocated result: whole rows for a slice on
        dim 0, runs of columns within each kept row for a slice on dim 1. No memory map: slicing the columns
        of a mapped tensor touches (and counts in RSS) every page of it, so a small size's peak RSS would
        follow the supernet's weights, not its own. Any other slice (dims >= 2) reads the kept rows a few MB at
        a time and selects."""
        header, path, fd = self._file(key)
        if key not in header:
            raise CheckpointFormatError(f"cannot read tensor '{key}' from {path}: not in the file")
        meta = header[key]
        dtype, shape = _DTYPES.get(meta["dtype"]), list(meta["shape"])
        if dtype is None:
            raise CheckpointFormatError(f"cannot read tensor '{key}' from {path}: unsupported dtype {meta['dtype']}")
        if not shape:  # a scalar
            shape, slices = [1], []
        itemsize = torch.empty((), dtype=dtype).element_size()
        rest = list(slices or [])
        rows = [int(i) for i in rest.pop(0)[1]] if rest and rest[0][0] == 0 else list(range(shape[0]))
        cols = [int(i) for i in rest.pop(0)[1]] if len(rest) == 1 and rest[0][0] == 1 else None
        row_bytes = math.prod(shape[1:]) * itemsize
        col_bytes = row_bytes // shape[1] if cols is not None else 0
        out_shape = [len(rows), *shape[1:]]
        if cols is not None:
            out_shape[1] = len(cols)
        start = header["__data_start__"] + meta["data_offsets"][0]
        if rest:  # uncommon: slices on dims >= 2
            tensor = self._read_blocks(fd, start, rows, shape, dtype, row_bytes, path, key)
            for dim, index in rest:
                tensor = tensor.index_select(dim, torch.as_tensor(index, dtype=torch.long))
        else:
            raw = torch.empty(math.prod(out_shape) * itemsize, dtype=torch.uint8)
            view = memoryview(raw.numpy()).cast("B")
            pos = 0
            if cols is None:
                for first, stop in runs(rows):
                    size = (stop - first) * row_bytes
                    pread_into(fd, view[pos:pos + size], start + first * row_bytes, path, key)
                    pos += size
            else:
                col_runs = runs(cols)
                for row in rows:
                    for first, stop in col_runs:
                        size = (stop - first) * col_bytes
                        pread_into(fd, view[pos:pos + size], start + row * row_bytes + first * col_bytes, path, key)
                        pos += size
            tensor = raw.view(dtype).reshape(out_shape)
        if not meta["shape"]:
            tensor = tensor.reshape(())
        self.bytes_read += tensor.numel() * tensor.element_size()
        self.tensors_read.append(key)
        return tensor

    @staticmethod
    def _read_blocks(fd, start, rows, shape, dtype, row_bytes, path, key) -> torch.Tensor:
        """The kept rows, read a few MB at a time (bounded extra memory)."""
        out = torch.empty([len(rows), *shape[1:]], dtype=dtype)
        block = max(1, (4 << 20) // max(1, row_bytes))
        pos = 0
        for first, stop in runs(rows):
            for a in range(first, stop, block):
                count = min(stop, a + block) - a
                raw = torch.empty(count * row_bytes, dtype=torch.uint8)
                pread_into(fd, memoryview(raw.numpy()).cast("B"), start + a * row_bytes, path, key)
                out[pos:pos + count] = raw.view(dtype).reshape(count, *shape[1:])
                pos += count
        return out

    def close(self) -> None:
        for _, fd in self._handles.values():
            os.close(fd)
        self._handles.clear()


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def _open_safetensors(path: str) -> tuple[dict, int]:
    """Parse the safetensors header (8-byte little-endian length, then JSON) and check every tensor's bytes lie
    in the file, so a truncated or corrupted file fails here with a clear error, not later with garbage."""
    truncated = (f"cannot read {path}: the file is truncated or corrupted ({{}}). Download or save it again "
                 "(a partial download or an interrupted save leaves such a file).")
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        raw = os.pread(fd, 8, 0)
        length = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if not 0 < length <= size - 8:
            raise CheckpointFormatError(truncated.format(f"header length {length} for a file of {size} bytes"))
        header = json.loads(os.pread(fd, length, 8))
        header.pop("__metadata__", None)
        header["__data_start__"] = 8 + length
        for name, meta in header.items():
            if name != "__data_start__" and 8 + length + meta["data_offsets"][1] > size:
                raise CheckpointFormatError(truncated.format(f"tensor '{name}' ends after the end of the file"))
    except (ValueError, KeyError, TypeError, struct.error) as err:
        os.close(fd)
        raise CheckpointFormatError(truncated.format(f"unreadable header: {err}")) from err
    except BaseException:
        os.close(fd)
        raise
    return header, fd


def stored_tensors(files) -> dict[str, tuple[tuple[int, ...], str]]:
    """{tensor name: (shape, safetensors dtype name)} from the headers of safetensors `files` (paths), read by
    safetensors itself (its errors for a truncated or corrupted file pass through); no tensor data is read."""
    out = {}
    for path in files:
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                tensor_slice = f.get_slice(key)
                out[key] = (tuple(tensor_slice.get_shape()), tensor_slice.get_dtype())
    return out


def pread_into(fd: int, view: memoryview, offset: int, path: str, key: str) -> None:
    """Fill `view` with the file's bytes at `offset` (every read of the lazy loader goes through here)."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            raise CheckpointFormatError(f"cannot read tensor '{key}' from {path}: the file is truncated")
        done += got
