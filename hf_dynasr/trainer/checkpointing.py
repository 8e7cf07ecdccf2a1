"""Training checkpoints that survive a kill, a full disk and a damaged file, and hold no pickle.

`save_checkpoint` writes `step_N` into `.tmp-step_N` and renames it once complete: the training state as
safetensors and JSON (`hf_dynasr.trainer.state_files`), `config.json` (the model's current shape: DMAO reshapes
and the stage-boundary masks change it, so a resume rebuilds the model before loading the tensors),
`trainer_state.json` (step, epoch, position in the data) and, last, `manifest.json`: the size and SHA-256 of every
file. A half-written folder keeps its `.tmp-` prefix and is ignored (and cleaned) by the next run. A resume checks
a checkpoint against its manifest before loading anything; `latest` skips damaged ones (logging which and why)
and takes the newest complete one. Before writing, the free space is compared with the checkpoint's size; any
failure of the write path on a full disk becomes one `DiskFullError` that says what was kept and how to go on.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
from collections.abc import Callable

import torch

from hf_dynasr.json_io import read_json, write_json
from hf_dynasr.trainer.state_files import (MODEL_FILE, PICKLE_SUFFIXES, TrainingObjects, estimate_bytes,
                                           read_training_state, write_training_state)

logger = logging.getLogger(__name__)
_STEP = re.compile(r"^step_(\d+)$")
MANIFEST = "manifest.json"
FORMAT = "hf_dynasr checkpoint"
REQUIRED = (MODEL_FILE, "config.json", "trainer_state.json")
# torch.save on a full disk reports its stream writer's failure, not ENOSPC ("[enforce fail at
# inline_container.cc:...] unexpected pos ...", "PytorchStreamWriter failed writing file ... file write failed")
_TORCH_WRITE_FAILURE = re.compile(r"unexpected pos|file write failed|PytorchStreamWriter failed|iostream error")
_NEARLY_FULL = 64 << 20  # free bytes below which a failed torch.save stream is taken as a full disk


class DiskFullError(OSError):
    """A save stopped by a full disk (errno ENOSPC); the message says what is intact and how to go on."""


def list_checkpoints(checkpoint_dir: str) -> list[str]:
    """Checkpoint folders named `step_N` (renamed, so written to the end), oldest first."""
    if not os.path.isdir(checkpoint_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(checkpoint_dir) if (m := _STEP.match(name))]
    return [os.path.join(checkpoint_dir, name) for _, name in sorted(found)]


def resolve_checkpoint(checkpoint_dir: str, spec: str) -> str:
    """`latest` (the newest checkpoint that passes `checkpoint_problem`) or a path -> a checkpoint, or a clear
    error. Damaged checkpoints `latest` skips are logged with the reason."""
    if spec != "latest":
        problem = checkpoint_problem(spec)
        if problem:
            raise ValueError(f"cannot resume from {spec}: {problem}")
        return spec
    skipped = []
    for folder in reversed(list_checkpoints(checkpoint_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        logger.warning("--resume_from_checkpoint latest: skipping %s: %s", folder, problem)
        skipped.append(f"{os.path.basename(folder)}: {problem}")
    raise FileNotFoundError(f"--resume_from_checkpoint latest: no complete checkpoint in {checkpoint_dir}"
                            + (" (skipped damaged ones: " + "; ".join(skipped) + ")" if skipped else ""))


def checkpoint_problem(folder: str) -> str | None:
    """Why `folder` cannot be resumed from (a missing, truncated or changed file, a pickled file, no manifest),
    or None when every file matches its manifest entry."""
    if not os.path.isdir(folder):
        return "no such folder"
    names = sorted(os.listdir(folder))
    pickled = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if pickled:
        return (f"it holds {', '.join(pickled)}, which no hf_dynasr checkpoint contains; pickled files are never "
                "loaded (unpickling can run arbitrary code). A checkpoint written before checkpoints became "
                "safetensors + JSON cannot be resumed: train again, or resume from another checkpoint")
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        missing = [n for n in REQUIRED if n not in names]
        return (f"{', '.join(missing)} missing" if missing else "no manifest.json") + \
            " (the checkpoint was not written to the end)"
    try:
        files = {name: (int(entry["bytes"]), str(entry["sha256"])) for name, entry in read_json(path)["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        return f"{path} is unreadable ({err})"
    for name in REQUIRED:
        if name not in files:
            return f"{name} is missing from {MANIFEST}"
    for name, (size, sha256) in files.items():
        if name != os.path.basename(name) or name in ("", ".", ".."):
            return f"{MANIFEST} lists {name!r}, which is not a file of this folder"
        file = os.path.join(folder, name)
        if not os.path.isfile(file):
            return f"{name} is missing"
        if os.path.getsize(file) != size:
            return f"{name} has {os.path.getsize(file)} bytes, {MANIFEST} says {size} (truncated or overwritten)"
        if _sha256(file) != sha256:
            return f"{name} was changed after the checkpoint was written (its SHA-256 differs from {MANIFEST})"
    return None


def training_objects(run) -> TrainingObjects:
    """What a checkpoint of a training run (`hf_dynasr.trainer.setup.Run`) holds besides its counters."""
    return TrainingObjects(run.unwrapped, run.optimizer, run.scheduler, run.selector, run.dmao)


def load_checkpoint(folder: str, accelerator, objects: TrainingObjects) -> None:
    """Load the weights, optimizer, schedule, selector, DMAO and this process's RNG state of `folder` (a
    checkpoint `resolve_checkpoint` accepted) into `objects`. All ranks; nothing is unpickled."""
    read_training_state(folder, accelerator, objects)


def save_checkpoint(accelerator, checkpoint_dir: str, step: int, state: dict, objects: TrainingObjects,
                    keep_last: int, before_rename: Callable[[str], None] | None = None) -> str:
    """Atomically write checkpoint `step_<step>` and keep only the newest `keep_last`. Call on all ranks.

    `state` becomes trainer_state.json. A failure on any rank (a full disk, an unwritable file) stops every
    rank with the same error, removes the temporary folder and never touches the previous checkpoints; a full
    disk, found before writing or while writing, raises `DiskFullError`. `before_rename(folder)`, if given, runs on
    the main process once everything is in the temporary folder (`TrainerCallback.on_checkpoint_written`)."""
    final = os.path.join(checkpoint_dir, f"step_{step}")
    tmp = os.path.join(checkpoint_dir, f".tmp-step_{step}")
    main = accelerator.is_main_process

    def attempt(action: Callable[[], None], here: bool = True) -> None:
        err = None
        if here:
            try:
                action()
            except Exception as caught:  # noqa: BLE001  every rank must learn of it before anyone raises
                err = caught
        _raise_together(accelerator, err, checkpoint_dir, tmp)

    def start() -> None:
        shutil.rmtree(tmp, ignore_errors=True)  # a stale one of a killed run
        os.makedirs(checkpoint_dir, exist_ok=True)
        needed = estimate_bytes(objects, accelerator.num_processes)
        free = shutil.disk_usage(checkpoint_dir).free
        if free < needed:
            raise disk_full_error(f"checkpoint {tmp}", _previous(checkpoint_dir),
                                  f"not started: about {_mb(needed)} needed, {_mb(free)} free")
        os.makedirs(tmp)

    def write() -> None:
        write_training_state(tmp, accelerator, objects)
        if main:
            objects.model.config.to_json_file(os.path.join(tmp, "config.json"))
            write_json(os.path.join(tmp, "trainer_state.json"), state)

    def finish() -> None:
        write_manifest(tmp, step=step, num_processes=accelerator.num_processes)
        if before_rename is not None:
            before_rename(tmp)

    attempt(start, main)
    attempt(write)
    attempt(finish, main)
    if main:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(checkpoint_dir)
        for old in list_checkpoints(checkpoint_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        for name in os.listdir(checkpoint_dir):
            if name.startswith(".tmp-"):
                shutil.rmtree(os.path.join(checkpoint_dir, name), ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _raise_together(accelerator, err: BaseException | None, checkpoint_dir: str, tmp: str) -> None:
    """Nothing if no rank failed; else every rank raises (after the main one removed `tmp`)."""
    if not any_rank_failed(accelerator, err is not None):
        return
    full = err is not None and not isinstance(err, DiskFullError) and is_disk_full(err, checkpoint_dir)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    if err is None:
        raise RuntimeError(f"writing checkpoint {tmp} failed on another process (its log says why); the folder was "
                           "removed and the previous checkpoints are intact")
    if full:
        raise disk_full_error(f"checkpoint {tmp}", _previous(checkpoint_dir), "removed") from err
    raise err


def any_rank_failed(accelerator, failed: bool) -> bool:
    """Whether `failed` holds on any process (a collective: every rank must call it)."""
    if accelerator.num_processes == 1:
        return failed
    flag = torch.tensor([1.0 if failed else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def _previous(checkpoint_dir: str) -> str:
    found = list_checkpoints(checkpoint_dir)
    return f"the previous checkpoint {found[-1]} is intact" if found else "no earlier checkpoint"


def disk_full_error(what: str, kept: str, detail: str,
                    advice: str = "Free space, or lower --save_total_limit, then resume with "
                                  "--resume_from_checkpoint latest") -> DiskFullError:
    """The one message of a save stopped by a full disk: `disk full while writing <what> (<detail>; <kept>). <advice>`."""
    return DiskFullError(errno.ENOSPC, f"disk full while writing {what} ({detail}; {kept}). {advice}")


def is_disk_full(err: BaseException | None, folder: str | None = None) -> bool:
    """Whether `err` comes from a full disk: ENOSPC or EDQUOT anywhere in the cause chain (safetensors and JSON
    writers raise or wrap the OSError), or torch.save's stream-writer failure while `folder`'s disk is nearly full."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        text = str(err)
        if (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)) \
                or "No space left on device" in text or "Disk quota exceeded" in text:
            return True
        if folder is not None and _TORCH_WRITE_FAILURE.search(text) and _free_bytes(folder) < _NEARLY_FULL:
            return True
        err = err.__cause__ or err.__context__
    return False


def _free_bytes(folder: str) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 1 << 62  # unknown: not taken as full


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


# --- the manifest ------------------------------------------------------------------------------------------
def write_manifest(folder: str, **info) -> None:
    """`manifest.json`: format, `info`, and the size and SHA-256 of every file in `folder` (each flushed to disk)."""
    files = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and name != MANIFEST:
            files[name] = {"bytes": os.path.getsize(path), "sha256": _sha256(path, sync=True)}
    write_json(os.path.join(folder, MANIFEST), {"format": FORMAT, "version": 1, **info, "files": files})


def _sha256(path: str, sync: bool = False) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
        if sync:  # the rename must not reach the disk before the data does
            os.fsync(f.fileno())
    return digest.hexdigest()


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
