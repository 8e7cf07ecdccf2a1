"""The training state of a checkpoint as safetensors and JSON files only: nothing in a checkpoint is pickled.

A pickle runs code when it is loaded, so a checkpoint that someone else could have touched must never be
unpickled (accelerate's `save_state` pickles the optimizer, the scheduler, the RNG states and every registered
object, and loads the registered ones with `weights_only=False`). Each piece of state is a tree of dicts, lists,
tuples, numbers, strings and tensors; `write_tree` puts its tensors into `<name>.safetensors` and the rest into
`<name>.json`, where each tensor is a `{"__tensor__": key}` placeholder (tuples and dicts with non-string keys
are tagged too, so the tree comes back exactly as it was).

Files of a checkpoint (`write_training_state`):
    model.safetensors                      the bare model's weights (safetensors' `save_model`)
    optimizer.safetensors / .json          moments and step counts / param groups (learning rates, betas, ...)
    scheduler.json                         the learning-rate schedule's counters
    scaler.json                            the fp16 loss scaler, when there is one
    selector.safetensors / .json           the selector's scores and schedule buffers
    dmao.safetensors / .json               DMAO's utilisation scores / events done, the tracked spec
    rng_state_<rank>.safetensors / .json   per process: torch (and CUDA) generator states as uint8 tensors /
                                           Python `random` and numpy states, accelerate's micro-step counter
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load, load_model, save_file, save_model

from hf_dynasr.json_io import read_json, write_json

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
#: suffixes of pickled files (torch.save, pickle); no hf_dynasr checkpoint has one, none is ever loaded
PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt")
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


@dataclass
class TrainingObjects:
    """What a checkpoint holds besides the trainer's counters: the bare model, and, when the run has them, the
    optimizer and schedule (accelerate's wrappers or plain torch objects), the selector and DMAO."""

    model: torch.nn.Module
    optimizer: object | None = None
    scheduler: object | None = None
    selector: torch.nn.Module | None = None
    dmao: object | None = None


# --- trees of tensors and JSON values ----------------------------------------------------------------------
def _encode(value, path: str, tensors: dict):
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().contiguous()
        return {_TENSOR: path}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, f"{path}/{k}", tensors) for k, v in value.items()}
        if all(isinstance(k, (str, int)) for k in value):  # e.g. the optimizer's state, keyed by parameter index
            return {_ITEMS: [[k, _encode(v, f"{path}/{k}", tensors)] for k, v in value.items()]}
    raise TypeError(f"cannot store {type(value).__name__} at '{path}' without pickle; a checkpoint holds tensors, "
                    "numbers, strings, lists, tuples and dicts only")


def _decode(value, tensors: dict):
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if _TENSOR in value:
        return tensors[value[_TENSOR]]
    if _TUPLE in value:
        return tuple(_decode(v, tensors) for v in value[_TUPLE])
    if _ITEMS in value:
        return {k: _decode(v, tensors) for k, v in value[_ITEMS]}
    return {k: _decode(v, tensors) for k, v in value.items()}


def write_tree(folder: str, name: str, tree) -> None:
    """`<name>.json` (and `<name>.safetensors` when the tree holds tensors) in `folder`."""
    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(tree, name, tensors)
    if tensors:
        save_file(tensors, os.path.join(folder, f"{name}.safetensors"))
    write_json(os.path.join(folder, f"{name}.json"), encoded)


def read_tree(folder: str, name: str):
    """The tree `write_tree(folder, name, ...)` wrote; tensors on the CPU. Errors name the file."""
    encoded = read_json(os.path.join(folder, f"{name}.json"))
    path = os.path.join(folder, f"{name}.safetensors")
    tensors = read_safetensors(path) if os.path.exists(path) else {}
    try:
        return _decode(encoded, tensors)
    except KeyError as err:
        raise ValueError(f"{path} lacks tensor {err} that {name}.json refers to; the checkpoint is damaged: resume "
                         "from an earlier one") from err


def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    """The tensors of `path`, read into memory: `load_file` would map the file, and tensors kept from it (the
    optimizer's moments) would tie the run to a checkpoint folder that rotation later deletes."""
    try:
        with open(path, "rb") as f:
            return load(f.read())
    except Exception as err:  # safetensors' own error type does not name the file
        raise ValueError(f"cannot read {path}: {err}; the checkpoint is damaged: resume from an earlier one") from err


# --- RNG states ----------------------------------------------------------------------------------------------
def rng_tree(accelerator) -> dict:
    """This process's generator states and accelerate's micro-step counter (gradient accumulation)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tree = {"python": random.getstate(), "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "torch": torch.get_rng_state(), "accelerator_step": int(accelerator.step)}
    if torch.cuda.is_available():
        tree["cuda"] = list(torch.cuda.get_rng_state_all())
    return tree


def set_rng_tree(accelerator, tree: dict) -> None:
    random.setstate(tree["python"])
    name, keys, pos, has_gauss, cached = tree["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tree["torch"])
    if "cuda" in tree and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tree["cuda"])
    accelerator.step = tree["accelerator_step"]


# --- the whole training state ----------------------------------------------------------------------------------
def _named_states(accelerator, objects: TrainingObjects) -> dict:
    """name -> object with state_dict / load_state_dict, for the state the main process writes."""
    named = {"optimizer": objects.optimizer, "scheduler": objects.scheduler, "selector": objects.selector,
             "dmao": objects.dmao, "scaler": accelerator.scaler}
    return {name: obj for name, obj in named.items() if obj is not None}


def write_training_state(folder: str, accelerator, objects: TrainingObjects) -> None:
    """Every process writes its RNG state; the main process the model and every other state. Call on all ranks."""
    write_tree(folder, f"rng_state_{accelerator.process_index}", rng_tree(accelerator))
    if accelerator.is_main_process:
        save_model(objects.model, os.path.join(folder, MODEL_FILE), force_contiguous=True)
        for name, obj in _named_states(accelerator, objects).items():
            write_tree(folder, name, obj.state_dict())


def read_training_state(folder: str, accelerator, objects: TrainingObjects) -> None:
    """Load what `write_training_state` wrote into `objects` (built with the checkpoint's config). All ranks."""
    path = os.path.join(folder, MODEL_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: the checkpoint {folder} is incomplete; resume from an earlier "
                                "one (--resume_from_checkpoint latest skips incomplete checkpoints)")
    device = next(objects.model.parameters()).device
    load_model(objects.model, path, strict=True, device=str(device))
    for name, obj in _named_states(accelerator, objects).items():
        tree = read_tree(folder, name)
        try:
            obj.load_state_dict(tree)
        except (RuntimeError, ValueError, KeyError) as err:
            raise ValueError(f"the {name} state in {os.path.join(folder, name)}.json does not fit this run's {name} "
                             f"({err}); resume with the options the checkpoint was trained with") from err
    rank = f"rng_state_{accelerator.process_index}"
    if os.path.isfile(os.path.join(folder, f"{rank}.json")):
        set_rng_tree(accelerator, read_tree(folder, rank))
    else:  # a resume with more processes than the checkpoint was written with
        logger.warning("%s has no RNG state for process %d; its generators keep the seed's state", folder,
                       accelerator.process_index)


def estimate_bytes(objects: TrainingObjects, num_processes: int = 1) -> int:
    """Roughly the bytes `write_training_state` writes: every tensor of the model, the optimizer state, the selector
    and DMAO, plus room for the JSON files and the RNG states."""
    tensors = dict(objects.model.state_dict())
    for name, obj in (("optimizer", objects.optimizer), ("selector", objects.selector), ("dmao", objects.dmao)):
        if obj is not None:  # keys "optimizer/...", never a model key (those hold no "/")
            _encode(obj.state_dict(), name, tensors)
    return sum(t.numel() * t.element_size() for t in tensors.values()) + (64 << 10) * (8 + num_processes)
