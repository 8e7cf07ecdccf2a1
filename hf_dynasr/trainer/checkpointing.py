"""Training checkpoints that survive a kill: write into a temporary folder, then rename.

`accelerator.save_state` writes model, optimizer, scheduler, RNG states and every registered object
(selector, DMAO). We add `trainer_state.json` (step, epoch, stage) and `config.json` (the model's
current shape: DMAO reshapes and the stage-boundary masks change it), so a resume can rebuild the
model before loading the tensors. Only complete folders are named `step_N`; a half-written one keeps
its `.tmp-` prefix and is ignored (and cleaned) by the next run.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from collections.abc import Callable

from hf_dynasr.json_io import write_json

logger = logging.getLogger(__name__)
_STEP = re.compile(r"^step_(\d+)$")


def list_checkpoints(checkpoint_dir: str) -> list[str]:
    """Complete checkpoints, oldest first."""
    if not os.path.isdir(checkpoint_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(checkpoint_dir) if (m := _STEP.match(name))]
    return [os.path.join(checkpoint_dir, name) for _, name in sorted(found)]


def resolve_checkpoint(checkpoint_dir: str, spec: str) -> str:
    """`latest` or a path -> a complete checkpoint folder, or a clear error."""
    if spec == "latest":
        found = list_checkpoints(checkpoint_dir)
        if not found:
            raise FileNotFoundError(f"--resume_from_checkpoint latest: no complete checkpoint in {checkpoint_dir}")
        return found[-1]
    if not os.path.isfile(os.path.join(spec, "trainer_state.json")):
        raise FileNotFoundError(f"{spec} is not a complete hf_dynasr checkpoint (no trainer_state.json)")
    return spec


def save_checkpoint(accelerator, checkpoint_dir: str, step: int, state: dict, config, keep_last: int,
                    before_rename: Callable[[str], None] | None = None) -> str:
    """Atomically write checkpoint `step_<step>` and keep only the newest `keep_last`. Call on all ranks.

    A failure while writing (a full disk, a kill) never touches the previous checkpoints: the temporary
    folder is removed and the error re-raised; ENOSPC becomes `OSError(ENOSPC, "disk full while writing
    checkpoint <folder> ...")`. `before_rename(folder)`, if given, runs on the main process once everything is
    in the temporary folder (`TrainerCallback.on_checkpoint_written`).
    """
    final = os.path.join(checkpoint_dir, f"step_{step}")
    tmp = os.path.join(checkpoint_dir, f".tmp-step_{step}")
    try:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            config.to_json_file(os.path.join(tmp, "config.json"))
            write_json(os.path.join(tmp, "trainer_state.json"), state)
            if before_rename is not None:
                before_rename(tmp)
    except Exception as err:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        if _disk_full(err):
            previous = list_checkpoints(checkpoint_dir)
            raise OSError(
                errno.ENOSPC,
                f"disk full while writing checkpoint {tmp} (removed; "
                + (f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint")
                + "). Free space, or lower --save_total_limit, then resume with --resume_from_checkpoint latest",
            ) from err
        raise
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(checkpoint_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        for name in os.listdir(checkpoint_dir):
            if name.startswith(".tmp-") and name != os.path.basename(tmp):
                shutil.rmtree(os.path.join(checkpoint_dir, name), ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _disk_full(err: BaseException | None) -> bool:
    """ENOSPC anywhere in the cause chain (torch.save and safetensors wrap the OSError in their own errors)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if (isinstance(err, OSError) and err.errno == errno.ENOSPC) or "No space left on device" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False
