"""`main`: a training run from options to final/, as eight numbered steps."""

from __future__ import annotations

from hf_dynasr.trainer.callbacks import CallbackList, TrainerCallback
from hf_dynasr.trainer.data import build_data
from hf_dynasr.trainer.dry_run import dry_run_main
from hf_dynasr.trainer.final import finish, save_final
from hf_dynasr.trainer.loop import TrainingLoop, resume
from hf_dynasr.trainer.options import parse_args
from hf_dynasr.trainer.resume_check import check_resume, resolve_resume
from hf_dynasr.trainer.run_folder import release_lock
from hf_dynasr.trainer.setup import (build_accelerator, build_run, check_output_dir, make_output_dir,
                                     prepare, start_tracking)


def main(argv: list[str] | None = None, callbacks: list[TrainerCallback] | None = None) -> None:
    """Train as `python training/train.py ARGS` does; `argv` defaults to `sys.argv[1:]`. `callbacks` watch or
    alter the run (see `hf_dynasr.trainer.callbacks`)."""
    # 1. options; an output folder holding a previous run only when resuming or overwriting it
    args = parse_args(argv)
    if args.dry_run:  # the recipe built and two updates on a synthetic batch: no data read, no run folder
        dry_run_main(args)
        return
    previous = check_output_dir(args)
    # 2. accelerator (one process or DDP) and logging; the run folder locked (a previous run's own entries
    # removed when overwriting it); the checkpoint to resume from, whose options this run must share
    accelerator = build_accelerator(args)
    lock = make_output_dir(args, accelerator, previous)
    try:
        resume_dir = resolve_resume(args)
        check_resume(args, accelerator, resume_dir)
        train(args, accelerator, resume_dir, callbacks)
    finally:
        if lock:
            release_lock(lock)


def train(args, accelerator, resume_dir: str | None, callbacks) -> None:
    """Steps 3 to 8 in the locked run folder."""
    # 3. data: features and labels computed once (the main process first, the others read its cache)
    data = build_data(args, accelerator)
    # 4. model (its shape from the checkpoint when resuming), sizes, selector, DMAO
    run = build_run(args, accelerator, data, resume_dir)
    # 5. optimizer (model + selector scores), the schedule in fractions of max_steps; accelerate's prepare
    prepare(run)
    # 6. resume (weights, optimizer, scheduler, RNG, selector, DMAO, position in the data); trackers, run info
    state = resume(run)
    start_tracking(run)
    # 7. the training loop: stage 1, the stage boundary (masks frozen), stage 2
    TrainingLoop(run, state, CallbackList(callbacks)).train()
    # 8. final evaluation; model, processor, selector scores and results in final/
    save_final(run, state)
    finish(run)
