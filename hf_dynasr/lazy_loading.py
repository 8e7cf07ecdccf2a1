"""Lazy loading of one size from a supernet checkpoint: read only the tensors and slices that size needs.

`DynaSRForCTC.from_pretrained(supernet, subnet="40M")` calls `load_subnet_lazily`, which
1. loads the supernet config (the `subnet` keyword sets `active_subnet`),
2. builds the compact model (the subnet's architecture spec, one CTC head) on the meta device,
3. follows `subnet_slice_plan` and reads each needed tensor from `model.safetensors` (or the shards of
   `model.safetensors.index.json`) with `safe_open(...).get_slice`: a slice whose indices are a union of
   contiguous runs is read run by run and concatenated, so peak memory follows the subnet, not the supernet.

Files are resolved with `transformers.utils.cached_file`: local folders and Hub ids both work, and
`HF_HUB_OFFLINE`, `revision`, `cache_dir`, `token`, ... are honoured. Only safetensors is read (never
pickle). This file is copied next to remote-code checkpoints, so it imports only torch, safetensors,
transformers and (relatively) sibling files.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import types

import torch
from safetensors import SafetensorError, safe_open
from transformers import PreTrainedConfig
from transformers.utils.hub import cached_file, is_offline_mode

logger = logging.getLogger(__name__)

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_WEIGHTS_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "pytorch_model.pt")

_DOWNLOAD_KEYS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
#: kwargs of `PreTrainedModel.from_pretrained` that the lazy path handles or that do not apply to it.
_IGNORED_KEYS = ("trust_remote_code", "_from_auto", "_from_pipeline", "_commit_hash", "low_cpu_mem_usage",
                 "weights_only", "code_revision", "offload_state_dict", "_fast_init", "mirror", "tqdm_class",
                 "disable_mmap", "use_kernels", "allow_all_kernels")
#: regular-loader kwargs: ignored when unset (None/False/empty), otherwise the regular loader is used.
_REGULAR_ONLY_KEYS = ("adapter_kwargs", "adapter_name", "quantization_config", "variant", "key_mapping", "max_memory",
                      "offload_folder", "offload_buffers", "generation_config", "ignore_mismatched_sizes",
                      "fusion_config", "kernel_config", "distributed_config", "device_mesh", "tp_plan", "tp_size")


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

    def __init__(self, weight_map: dict[str, str], files: dict[str, str]):
        self.weight_map = weight_map  # tensor name -> shard name
        self.files = files  # shard name -> local path
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
                weight_map = json.load(f)["weight_map"]
        except (OSError, ValueError, KeyError) as err:
            raise CheckpointFormatError(f"{index_file} is not a valid safetensors index: {err}") from err
        shards = sorted(set(weight_map.values() if needed_keys is None
                            else (weight_map[k] for k in needed_keys if k in weight_map)))
        files = {}
        for shard in shards:
            if not shard.endswith(".safetensors"):
                raise CheckpointFormatError(f"{index_file} names a non-safetensors shard {shard!r}")
            files[shard] = cached_file(path, shard, **download_kwargs)
        return cls(weight_map, files)

    def _handle(self, key: str):
        """(open safe_open handle, local path) of the file holding `key`; KeyError if no file holds it."""
        if self.weight_map:
            if key not in self.weight_map:
                raise KeyError(key)
            shard = self.weight_map[key]
        else:
            shard = SAFE_WEIGHTS_NAME
        path = self.files[shard]
        if shard not in self._handles:
            try:
                self._handles[shard] = safe_open(path, framework="pt")
            except (SafetensorError, OSError, ValueError) as err:
                raise CheckpointFormatError(
                    f"cannot read {path}: the file is truncated or corrupted ({err}). Download or save it again "
                    "(a partial download or an interrupted save leaves such a file)."
                ) from err
        return self._handles[shard], path

    def shape(self, key: str) -> tuple[int, ...] | None:
        """Stored shape of `key`, or None when the checkpoint does not hold it."""
        try:
            handle, _ = self._handle(key)
        except KeyError:
            return None
        if key not in handle.keys():
            return None
        return tuple(handle.get_slice(key).get_shape())

    def read(self, key: str, slices) -> torch.Tensor:
        """The tensor `key` restricted by `slices` = [(dim, indices), ...]; reads only the selected runs."""
        handle, path = self._handle(key)
        try:
            view = handle.get_slice(key)
            if not slices:
                tensor = view[:]
            else:
                dim, index = slices[0]
                parts = [view[(slice(None),) * dim + (slice(a, b),)] for a, b in runs(index)]
                tensor = parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)
                for dim, index in slices[1:]:
                    tensor = tensor.index_select(dim, torch.as_tensor(index, dtype=torch.long))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointFormatError(f"cannot read tensor '{key}' from {path}: {err}") from err
        self.bytes_read += tensor.numel() * tensor.element_size()
        self.tensors_read.append(key)
        return tensor

    def close(self) -> None:
        self._handles.clear()


def _resolve_dtype(dtype):
    if dtype is None or dtype == "auto":
        return None
    if isinstance(dtype, str):
        value = getattr(torch, dtype, None)
        if not isinstance(value, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use e.g. torch.float32, 'float16' or 'auto'")
        return value
    if isinstance(dtype, dict):  # per-submodule dtypes: only the default entry is meaningful here
        return _resolve_dtype(dtype.get("", None))
    return dtype


def _resolve_device(device_map):
    """A single target device, or `False` when the device map needs the regular (accelerate) loader."""
    if device_map is None:
        return torch.device("cpu")
    if isinstance(device_map, dict):
        devices = set(device_map.values())
        return _resolve_device(devices.pop()) if len(devices) == 1 else False
    if isinstance(device_map, int):
        return torch.device("cuda", device_map)
    if isinstance(device_map, str) and device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        return False
    return torch.device(device_map)


def load_subnet_lazily(cls, pretrained_model_name_or_path, *model_args, **kwargs):
    """The compact model of the requested size, or `None` when the regular loader must be used.

    `None` is returned when no strict subnet is requested (no `subnet`/`active_subnet`, `"full"`, or a size
    covering every component), or for arguments the lazy path does not implement (`model_args`, a
    multi-device `device_map`, unknown model kwargs); the caller then loads the whole checkpoint."""
    from .components import ComponentIndex
    from .subnet_dynasr import FULL, subnet_slice_plan

    if model_args or kwargs.get("state_dict") is not None or kwargs.get("gguf_file"):
        return None
    kwargs = dict(kwargs)
    config = kwargs.pop("config", None)
    download_kwargs = {k: kwargs.pop(k) for k in _DOWNLOAD_KEYS if k in kwargs}
    if download_kwargs.get("subfolder") is None:
        download_kwargs.pop("subfolder", None)
    if is_offline_mode():
        download_kwargs["local_files_only"] = True
    dtype = kwargs.pop("dtype", None)
    torch_dtype = kwargs.pop("torch_dtype", None)
    dtype = _resolve_dtype(dtype if dtype is not None else torch_dtype)
    device = _resolve_device(kwargs.pop("device_map", None))
    output_loading_info = kwargs.pop("output_loading_info", False)
    use_safetensors = kwargs.pop("use_safetensors", None)
    attn_implementation = kwargs.pop("attn_implementation", None)
    for key in _IGNORED_KEYS:
        kwargs.pop(key, None)
    regular = [key for key in _REGULAR_ONLY_KEYS if kwargs.pop(key, None) not in (None, False, {}, "default")]
    if device is False or use_safetensors is False or regular:
        return None

    if not isinstance(config, PreTrainedConfig):
        config, unused = cls.config_class.from_pretrained(
            config if config is not None else pretrained_model_name_or_path,
            return_unused_kwargs=True, **download_kwargs, **kwargs,
        )
    else:
        config = copy.deepcopy(config)
        unused = {}
        for key, value in kwargs.items():
            if hasattr(config, key):
                setattr(config, key, value)
            else:
                unused[key] = value
    if unused:
        logger.info("lazy subnet loading does not handle %s; loading the whole checkpoint", sorted(unused))
        return None
    if attn_implementation is not None:
        return None  # let the regular loader validate it

    name = config.active_subnet
    if name is None or name == FULL:
        return None
    if name not in config.subnets:
        available = [*config.subnets, FULL]
        raise ValueError(f"unknown subnet '{name}'; available: {', '.join(available)}")
    ids = config.subnets[name].get("components")
    if ids is None:
        raise ValueError(f"subnet '{name}' has no selected components yet (selection still in training)")
    index = ComponentIndex(config)
    if len(set(ids)) == len(index):
        return None  # the size is the whole network: nothing to slice
    ids = sorted(ids)

    # shapes the supernet config promises, and the compact model, both on the meta device
    with torch.device("meta"):
        supernet = cls(copy.deepcopy(config))
    expected = {k: tuple(v.shape) for k, v in supernet.state_dict().items()}
    head = f"subnet_heads.{name}" if name in supernet.subnet_heads else "lm_head"
    sub_config = cls._subnet_config(types.SimpleNamespace(config=config, _index=index), name, ids)
    with torch.device("meta"):
        model = cls(sub_config)
    target = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    del supernet

    plan = subnet_slice_plan(config, index, ids, head=head)
    source = str(pretrained_model_name_or_path)
    reader = SafetensorsReader.resolve(pretrained_model_name_or_path, {src for src, _ in plan.values()},
                                       **download_kwargs)
    state = {}
    try:
        for new_key, (src, slices) in plan.items():
            stored = reader.shape(src)
            if stored is None:
                raise CheckpointFormatError(
                    f"tensor '{src}' (needed by subnet '{name}') is missing from the weights of {source}"
                )
            if stored != expected.get(src):
                raise ValueError(
                    f"tensor '{src}' in {source} has shape {list(stored)} but the config's architecture_spec "
                    f"expects {list(expected.get(src, ()))}: config.json and the weights disagree"
                )
            tensor = reader.read(src, slices)
            if tuple(tensor.shape) != target[new_key]:  # a bug in the plan, never silently loaded
                raise ValueError(
                    f"tensor '{new_key}' sliced from '{src}' has shape {list(tensor.shape)}, the compact model "
                    f"of '{name}' expects {list(target[new_key])}"
                )
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            state[new_key] = tensor.to(device) if device.type != "cpu" else tensor
    finally:
        reader.close()
    model.load_state_dict(state, strict=True, assign=True)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise RuntimeError(f"lazy loading left tensors on the meta device: {leftover[:5]}")
    model.eval()
    model.config.name_or_path = source
    if dtype is not None:
        model.config.dtype = dtype
    model._dynasr_lazy_load = {"tensors": list(reader.tensors_read), "bytes_read": reader.bytes_read,
                               "files": list(reader.files.values())}
    if output_loading_info:
        return model, {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    return model
