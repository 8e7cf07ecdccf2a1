"""The end of a training run: the final evaluation and OUTPUT/final/ (model, processor, the selector's scores,
training_results.json), written into final.tmp/ and renamed, so final/ is never half-written."""

from __future__ import annotations

import gc
import logging
import os
import shutil
import time

import torch
from safetensors.torch import save_file

from hf_dynasr.dmao.report import read_event_changes
from hf_dynasr.json_io import write_json
from hf_dynasr.trainer.checkpointing import (DiskFullError, any_rank_failed, disk_full_error, is_disk_full,
                                             list_checkpoints)
from hf_dynasr.trainer.loop import LoopState
from hf_dynasr.trainer.reports import run_eval, weight_checksums
from hf_dynasr.trainer.setup import Run
from hf_dynasr.trainer.state_files import TrainingObjects, estimate_bytes
from hf_dynasr.trainer.supernet_step import freeze_masks

logger = logging.getLogger("hf_dynasr.train")


def save_final(run: Run, state: LoopState) -> None:
    """Freeze the masks if stage 1 never ended (a short run), evaluate every size, save final/. All ranks."""
    if run.masks_pending():
        freeze_masks(run.unwrapped, run.selector, run.sizes, run.criterion)
    results = run_eval(run.accelerator, run.unwrapped, run.data, state.step, run.args.per_device_eval_batch_size)
    checksums = weight_checksums(run.accelerator, run.unwrapped)
    digests = state.choices.check(run.accelerator, state.step)
    err = None
    if run.accelerator.is_main_process:
        try:
            final = write_final(run.args.output_dir, run.unwrapped, run.data.processor, run.selector,
                                training_results(run, state, results, checksums, digests), run.checkpoint_dir)
            logger.info("final model and processor in %s", final)
        except Exception as caught:  # noqa: BLE001  the other ranks must stop too, not wait for this one
            err = caught
    if any_rank_failed(run.accelerator, err is not None):
        raise err if err is not None else RuntimeError("writing final/ failed on the main process (its log says why)")


def write_final(output_dir: str, model, processor, selector, results: dict, checkpoint_dir: str) -> str:
    """OUTPUT/final/: model, processor, the selector's scores (safetensors, never pickled) and training_results.json,
    written into final.tmp/ and renamed. On a full disk (too little free space for the model, or a write failing)
    final.tmp/ is removed and a `DiskFullError` says which checkpoint of the run is intact and how to finish."""
    final = os.path.join(output_dir, "final")
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        needed = estimate_bytes(TrainingObjects(model, selector=selector))  # with room for the small files
        free = shutil.disk_usage(output_dir).free
        if free < needed:
            raise _final_disk_full(tmp, checkpoint_dir, f"not started: about {needed / 1e6:.1f} MB needed, "
                                                        f"{free / 1e6:.1f} MB free")
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if selector is not None:
            save_file({k: v.contiguous() for k, v in selector.state_dict().items()},
                      os.path.join(tmp, "selector.safetensors"))
        write_json(os.path.join(tmp, "training_results.json"), results)
    except Exception as err:
        full = not isinstance(err, DiskFullError) and is_disk_full(err, output_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise _final_disk_full(tmp, checkpoint_dir, "removed") from err
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def _final_disk_full(tmp: str, checkpoint_dir: str, detail: str) -> DiskFullError:
    found = list_checkpoints(checkpoint_dir)
    if found:
        return disk_full_error(f"the final model {tmp}", f"the run's last checkpoint {found[-1]} is intact", detail,
                               "Free space, then run the same command with --resume_from_checkpoint latest: it "
                               "trains any steps after that checkpoint, evaluates and writes final/ again")
    return disk_full_error(f"the final model {tmp}", "the run wrote no checkpoint (--save_steps 0)", detail,
                           "Free space and train again, with --save_steps N to keep checkpoints")


def training_results(run: Run, state: LoopState, results: dict, checksums: list, digests: list) -> dict:
    """The content of final/training_results.json (`digests`: every process's ChoiceDigest at the end)."""
    return {"eval": results, "history": state.history, "steps": state.step, "train_data": run.args.train_data,
            "method": run.selection.method if run.sizes else None, "dmao": run.args.dmao or None,
            "wall_time_s": time.time() - state.start_time, "num_processes": run.accelerator.num_processes,
            "mixed_precision": run.accelerator.mixed_precision,
            "nonfinite_steps_skipped": state.nonfinite.total,
            "dmao_events": read_event_changes(os.path.join(run.args.output_dir, "dmao_events.jsonl")) or None,
            "rank_weight_checksums": checksums, "subnet_choices": state.choices.to_dict(digests)}


def finish(run: Run) -> None:
    """Close the trackers and the process group, then free the DDP wrapper."""
    distributed = torch.distributed.is_initialized()
    run.accelerator.end_training()  # the trackers; accelerate also destroys the process group
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    if distributed:
        # DDP's Reducer keeps the gloo group alive; its destructor joins gloo's worker threads while holding the GIL,
        # and a worker still releasing the last collective's tensors needs the GIL: a deadlock that hung one process
        # of a 2-process CPU run now and then at exit. Sleeping releases the GIL until the workers are idle; then
        # the wrapper is freed here (no collective runs after this point).
        time.sleep(0.2)
        run.model = run.unwrapped
        run.accelerator.free_memory()
        gc.collect()
