"""What a training run reports besides its losses: the dev WER/CER of every size, and the two things every
process must agree on (the nets each step runs, and the weights)."""

from __future__ import annotations

import logging

import torch

from hf_dynasr.evaluation.sizes import evaluate_sizes
from hf_dynasr.models.dynasr import FULL

logger = logging.getLogger("hf_dynasr.train")


def run_eval(accelerator, unwrapped, data, step: int) -> dict:
    """WER/CER of every size on the evaluation set (main process; the others wait), logged at `step`."""
    results = {}
    if accelerator.is_main_process and len(data.eval_ds):
        results = evaluate_sizes(unwrapped, data.eval_ds, data.collator, data.processor.tokenizer)
        accelerator.log({f"eval/{name}/{k}": v for name, r in results.items() for k, v in r.items()
                         if isinstance(v, (int, float))}, step=step)
        for name, r in results.items():
            logger.info("step %d eval %-8s WER %.3f CER %.3f (%s params)", step, name, r["wer"], r["cer"],
                        f"{r['num_parameters']:,}")
    accelerator.wait_for_everyone()
    return results


def check_same_choice(accelerator, runs, size_names, step) -> list:
    """All-gather this step's nets (as size indices, -1 = the whole network) and fail if any process chose
    differently."""
    code = torch.tensor([[-1 if r.subnet == FULL else size_names.index(r.subnet) for r in runs]
                         + [-2] * (3 - len(runs))])
    gathered = accelerator.gather(code).tolist()
    if any(row != gathered[0] for row in gathered):
        raise RuntimeError(f"step {step}: processes chose different subnets {gathered}; the choice must depend "
                           "only on (seed, step)")
    return gathered


def weight_checksums(accelerator, unwrapped) -> list:
    """Per process: a float64 checksum of every parameter; DDP ranks must agree exactly."""
    with torch.no_grad():
        local = sum(p.double().sum() * (i + 1) + p.double().pow(2).sum() for i, p in enumerate(unwrapped.parameters()))
    gathered = accelerator.gather(local.reshape(1)).tolist()
    if len(set(gathered)) > 1:
        logger.error("weights differ across processes: %s", gathered)
    return gathered
