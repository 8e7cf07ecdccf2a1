"""Lazy loading of one size from a supernet checkpoint: read only the tensors and slices that size needs.

`DynaSRForCTC.from_pretrained(supernet, subnet="40M")` calls `load_subnet_lazily`, which
1. loads the supernet config (the `subnet` keyword sets `active_subnet`),
2. builds the compact model (the subnet's architecture spec, one CTC head) on the meta device,
3. follows `subnet_slice_plan` and reads each needed tensor from `model.safetensors` (or the shards of
   `model.safetensors.index.json`) with positioned reads of the needed rows into a preallocated tensor (no
   memory map, see `safetensors_dynasr.py`), so peak memory follows the subnet, not the supernet.

Files are resolved with `transformers.utils.cached_file`: local folders and Hub ids both work, and
`HF_HUB_OFFLINE`, `revision`, `cache_dir`, `token`, ... are honoured. Only safetensors is read (never
pickle). This file is copied next to remote-code checkpoints, so it imports only torch, transformers and
(relatively) sibling files.

The whole model goes through transformers' loader, after `check_whole_checkpoint` compared config.json with
the weights' headers (nothing allocated yet): a config that needs more parameters than the weight files hold
bytes, a tensor the config needs that the weights lack (transformers would fill it with random values and
warn), a tensor the config has no place for, and integer-stored weights (loaded as floats they would be a
different, meaningless model) are all refused. Both paths refuse pickled weights.
"""

from __future__ import annotations

import copy
import logging
import re

import torch
from transformers import PreTrainedConfig
from transformers.utils.hub import is_offline_mode

from .components_dynasr import ComponentIndex, module_names
from .modules_dynasr import MODULE_CLASSES
from .safetensors_dynasr import FLOAT_DTYPES, CheckpointFormatError, SafetensorsReader, stored_tensors
from .subnets_dynasr import FULL, subnet_config, subnet_slice_plan

logger = logging.getLogger(__name__)

_DOWNLOAD_KEYS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
#: kwargs of `PreTrainedModel.from_pretrained` that the lazy path handles or that do not apply to it.
_IGNORED_KEYS = ("trust_remote_code", "_from_auto", "_from_pipeline", "_commit_hash", "low_cpu_mem_usage",
                 "weights_only", "code_revision", "offload_state_dict", "_fast_init", "mirror", "tqdm_class",
                 "disable_mmap", "use_kernels", "allow_all_kernels")
#: regular-loader kwargs: ignored when unset (None/False/empty), otherwise the regular loader is used.
_REGULAR_ONLY_KEYS = ("adapter_kwargs", "adapter_name", "quantization_config", "variant", "key_mapping", "max_memory",
                      "offload_folder", "offload_buffers", "generation_config", "ignore_mismatched_sizes",
                      "fusion_config", "kernel_config", "distributed_config", "device_mesh", "tp_plan", "tp_size")

__all__ = ["CheckpointFormatError", "check_whole_checkpoint", "estimate_parameters", "load_subnet_lazily"]


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


def _split_kwargs(kwargs: dict) -> dict:
    """Sort `from_pretrained` kwargs into the lazy path's options; `options["regular"]` is True when the regular
    loader must run (a multi-device map, `use_safetensors=False`, or a kwarg only it implements)."""
    kwargs = dict(kwargs)
    options = {"config": kwargs.pop("config", None)}
    download = {k: kwargs.pop(k) for k in _DOWNLOAD_KEYS if k in kwargs}
    if download.get("subfolder") is None:
        download.pop("subfolder", None)
    if is_offline_mode():
        download["local_files_only"] = True
    dtype = kwargs.pop("dtype", None)
    torch_dtype = kwargs.pop("torch_dtype", None)
    options["dtype"] = _resolve_dtype(dtype if dtype is not None else torch_dtype)
    options["device"] = _resolve_device(kwargs.pop("device_map", None))
    options["output_loading_info"] = kwargs.pop("output_loading_info", False)
    use_safetensors = kwargs.pop("use_safetensors", None)
    options["attn_implementation"] = kwargs.pop("attn_implementation", None)
    for key in _IGNORED_KEYS:
        kwargs.pop(key, None)
    regular = [key for key in _REGULAR_ONLY_KEYS if kwargs.pop(key, None) not in (None, False, {}, "default")]
    options["regular"] = bool(options["device"] is False or use_safetensors is False or regular)
    options["use_safetensors"], options["quantized"] = use_safetensors, "quantization_config" in regular
    options["download"], options["model_kwargs"] = download, kwargs
    return options


def _load_config(cls, path, options: dict):
    """The supernet config with the model kwargs applied (`subnet=` sets `active_subnet`); None when some
    kwarg is not a config field (the regular loader then handles it)."""
    config, kwargs = options["config"], options["model_kwargs"]
    if not isinstance(config, PreTrainedConfig):
        config, unused = cls.config_class.from_pretrained(
            config if config is not None else path, return_unused_kwargs=True, **options["download"], **kwargs,
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
    return config


def _strict_subnet(config, index: ComponentIndex) -> tuple[str, list[int]] | None:
    """(name, sorted component ids) of the requested size, or None when it is the whole network."""
    name = config.active_subnet
    if name is None or name == FULL:
        return None
    if name not in config.subnets:
        available = [*config.subnets, FULL]
        raise ValueError(f"unknown subnet '{name}'; available: {', '.join(available)}")
    ids = config.subnets[name].get("components")
    if ids is None:
        raise ValueError(f"subnet '{name}' has no selected components yet (selection still in training)")
    if index.covers_all(ids):
        return None  # the size is the whole network: nothing to slice
    return name, sorted(ids)


def _read_state(reader, plan, expected, target, name, source, dtype, device) -> dict:
    """Read every tensor of the compact model along `plan`, checking stored dtypes, stored and sliced shapes.

    `expected`: {name: (shape, dtype)} of the supernet the config describes."""
    expected_dtypes = {k: v[1] for k, v in expected.items()}
    expected = {k: v[0] for k, v in expected.items()}
    state = {}
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
        _check_dtype(src, reader.dtype(src), expected_dtypes.get(src), source)
        tensor = reader.read(src, slices)
        if tuple(tensor.shape) != target[new_key]:  # a bug in the plan, never silently loaded
            raise ValueError(
                f"tensor '{new_key}' sliced from '{src}' has shape {list(tensor.shape)}, the compact model "
                f"of '{name}' expects {list(target[new_key])}"
            )
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state[new_key] = tensor.to(device) if device.type != "cpu" else tensor
    return state


def _meta_shapes(model) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _check_dtype(key: str, stored: str | None, wanted: torch.dtype | None, source: str) -> None:
    """Refuse a tensor whose stored kind (floating point or not) differs from the model's: int8-stored weights
    read as floats would be a different model, not an error, so they never get that far."""
    if stored is None or wanted is None or (stored in FLOAT_DTYPES) == wanted.is_floating_point:
        return
    raise CheckpointFormatError(
        f"tensor '{key}' in {source} is stored as {stored} but the model's is {str(wanted).replace('torch.', '')}: "
        "quantized or integer-converted weights are not supported. Load the floating-point checkpoint "
        "(float32, float16 or bfloat16; from_pretrained(..., dtype=...) converts it) instead."
    )


def estimate_parameters(config) -> int:
    """A lower bound on the parameters `config` describes, from its architecture spec alone (every module's
    units times their parameters, no model built): enough to refuse an absurd config before allocating it."""
    names = module_names(config)
    per_unit = {name: MODULE_CLASSES[name].unit_params(config) for name in names}
    return sum(block[name] * per_unit[name] for block in config.architecture_spec for name in names)


def _check_size(config, reader: SafetensorsReader, source: str) -> None:
    """Refuse a config that needs more parameters than the weights hold bytes (at least one a parameter)."""
    needed = estimate_parameters(config)
    if reader.total_size is not None and needed > reader.total_size:
        raise CheckpointFormatError(
            f"config.json of {source} describes at least {needed:,} parameters "
            f"({len(config.architecture_spec)} blocks of hidden_size {config.hidden_size}) but its weights hold "
            f"only {reader.total_size:,} bytes: config.json and the weights disagree. Refused before allocating "
            "the model; use the config.json saved with these weights."
        )


def load_subnet_lazily(cls, pretrained_model_name_or_path, *model_args, **kwargs):
    """The compact model of the requested size, or `None` when the regular loader must be used.

    `None` is returned when no strict subnet is requested (no `subnet`/`active_subnet`, `"full"`, or a size
    covering every component), or for arguments the lazy path does not implement (`model_args`, a
    multi-device `device_map`, unknown model kwargs); the caller then loads the whole checkpoint."""
    if model_args or kwargs.get("state_dict") is not None or kwargs.get("gguf_file"):
        return None
    options = _split_kwargs(kwargs)
    if options["regular"]:
        return None
    config = _load_config(cls, pretrained_model_name_or_path, options)
    if config is None or options["attn_implementation"] is not None:
        return None  # the regular loader validates attn_implementation
    index = ComponentIndex(config)
    requested = _strict_subnet(config, index)
    if requested is None:
        return None
    name, ids = requested

    source = str(pretrained_model_name_or_path)
    # the weights' size first (no shard downloaded): an absurd config is refused before any model is built
    _check_size(config, SafetensorsReader.resolve(pretrained_model_name_or_path, set(), **options["download"]),
                source)
    # dtypes and shapes the supernet config promises, and the compact model, both on the meta device
    with torch.device("meta"):
        supernet = cls(copy.deepcopy(config))
        model = cls(subnet_config(config, index, name, ids))
    expected = {k: (tuple(v.shape), v.dtype) for k, v in supernet.state_dict().items()}
    target, head = _meta_shapes(model), supernet.head_key(name)
    del supernet

    plan = subnet_slice_plan(cls, config, index, ids, head=head)
    reader = SafetensorsReader.resolve(pretrained_model_name_or_path, {src for src, _ in plan.values()},
                                       **options["download"])
    try:
        state = _read_state(reader, plan, expected, target, name, source, options["dtype"], options["device"])
    finally:
        reader.close()
    return _finish(model, state, reader, source, options)


def _finish(model, state: dict, reader: SafetensorsReader, source: str, options: dict):
    """Load the read tensors into the meta model and record what was read in `model.lazy_load_info` (tensor
    names, bytes read, files)."""
    model.load_state_dict(state, strict=True, assign=True)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise RuntimeError(f"lazy loading left tensors on the meta device: {leftover[:5]}")
    model.eval()
    model.config.name_or_path = source
    if options["dtype"] is not None:
        model.config.dtype = options["dtype"]
    model.lazy_load_info = {"tensors": list(reader.tensors_read), "bytes_read": reader.bytes_read,
                               "files": list(reader.files.values())}
    if options["output_loading_info"]:
        return model, {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    return model


def check_whole_checkpoint(cls, pretrained_model_name_or_path, *model_args, **kwargs) -> None:
    """Compare a checkpoint's config.json with its weights' headers before transformers' loader allocates the
    whole model; raise `CheckpointFormatError` naming the disagreement.

    Refused: a config needing more parameters than the weights hold bytes, tensors the config needs that the
    weights lack (transformers would initialise them randomly with a warning; only those the class lists in
    `_keys_to_ignore_on_load_missing` may be absent), tensors the config has no place for, integer-stored
    weights, and pickled weights only. Shapes are left to transformers, which refuses a mismatch
    (`ignore_mismatched_sizes=False`) with a report naming each tensor. Skipped when the caller passes the
    weights (`state_dict`), another format (`gguf_file`, `use_safetensors=False`) or a `quantization_config`."""
    if model_args or kwargs.get("state_dict") is not None or kwargs.get("gguf_file"):
        return
    options = _split_kwargs(kwargs)
    if options["use_safetensors"] is False or options["quantized"]:
        return
    config = options["config"]
    if not isinstance(config, PreTrainedConfig):
        config, _ = cls.config_class.from_pretrained(config if config is not None else pretrained_model_name_or_path,
                                                     return_unused_kwargs=True, **options["download"],
                                                     **options["model_kwargs"])
    if getattr(config, "quantization_config", None):
        return
    source = str(pretrained_model_name_or_path)
    reader = SafetensorsReader.resolve(pretrained_model_name_or_path, None, **options["download"])
    _check_size(config, reader, source)
    stored = stored_tensors(reader.files.values())
    with torch.device("meta"):
        expected = {k: v.dtype for k, v in cls(copy.deepcopy(config)).state_dict().items()}
    # `_keys_to_ignore_on_load_missing`: tensors the model class initialises deterministically when absent
    optional = [re.compile(p) for p in getattr(cls, "_keys_to_ignore_on_load_missing", None) or []]
    missing = [k for k in expected if k not in stored and not any(p.search(k) for p in optional)]
    if missing:
        raise CheckpointFormatError(
            f"{len(missing)} tensor(s) the config needs are missing from the weights of {source}: "
            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}. They are not filled with random values; "
            "config.json and the weights must come from the same save (model.save_pretrained)."
        )
    unexpected = [k for k in stored if k not in expected]
    if unexpected:
        raise CheckpointFormatError(
            f"the weights of {source} hold {len(unexpected)} tensor(s) config.json has no place for: "
            f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}: config.json and the weights disagree; "
            "use the config.json saved with these weights."
        )
    for key, dtype in expected.items():
        _check_dtype(key, stored.get(key, (None, None))[1], dtype, source)
