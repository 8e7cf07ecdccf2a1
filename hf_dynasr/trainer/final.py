"""The end of a training run: the final evaluation and OUTPUT/final/ (model, processor, the selector's scores,
training_results.json), written into final.tmp/ and renamed, so final/ is never half-written."""

from __future__ import annotations

import logging
import os
import shutil
import time

import torch
from safetensors.torch import save_file

from hf_dynasr.json_io import write_json
from hf_dynasr.trainer.loop import LoopState
from hf_dynasr.trainer.reports import run_eval, weight_checksums
from hf_dynasr.trainer.setup import Run
from hf_dynasr.trainer.supernet_step import freeze_masks

logger = logging.getLogger("hf_dynasr.train")


def save_final(run: Run, state: LoopState) -> None:
    """Freeze the masks if stage 1 never ended (a short run), evaluate every size, save final/. All ranks."""
    if run.masks_pending():
        freeze_masks(run.unwrapped, run.selector, run.sizes, run.criterion)
    results = run_eval(run.accelerator, run.unwrapped, run.data, state.step, run.args.per_device_eval_batch_size)
    checksums = weight_checksums(run.accelerator, run.unwrapped)
    digests = state.choices.check(run.accelerator, state.step)
    if run.accelerator.is_main_process:
        final = os.path.join(run.args.output_dir, "final")
        tmp = final + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        run.unwrapped.save_pretrained(tmp)
        run.data.processor.save_pretrained(tmp)
        if run.selector is not None:  # the selector's scores, as safetensors (never pickled)
            scores = {k: v.contiguous() for k, v in run.selector.state_dict().items()}
            save_file(scores, os.path.join(tmp, "selector.safetensors"))
        write_json(os.path.join(tmp, "training_results.json"),
                   training_results(run, state, results, checksums, digests))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        logger.info("final model and processor in %s", final)
    run.accelerator.wait_for_everyone()


def training_results(run: Run, state: LoopState, results: dict, checksums: list, digests: list) -> dict:
    """The content of final/training_results.json (`digests`: every process's ChoiceDigest at the end)."""
    return {"eval": results, "history": state.history, "steps": state.step, "train_data": run.args.train_data,
            "method": run.selection.method if run.sizes else None, "dmao": run.args.dmao or None,
            "wall_time_s": time.time() - state.start_time, "num_processes": run.accelerator.num_processes,
            "mixed_precision": run.accelerator.mixed_precision,
            "nonfinite_steps_skipped": state.nonfinite.total,
            "rank_weight_checksums": checksums, "subnet_choices": state.choices.to_dict(digests)}


def finish(accelerator) -> None:
    """Close the trackers and the process group."""
    accelerator.end_training()
    if torch.distributed.is_initialized():  # explicit teardown: a gloo group left to interpreter exit can hang
        torch.distributed.destroy_process_group()
