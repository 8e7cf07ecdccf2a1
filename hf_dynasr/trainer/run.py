"""`main`: a training run from options to final/, as eight numbered steps."""

from __future__ import annotations

from hf_dynasr.trainer.callbacks import CallbackList, TrainerCallback
from hf_dynasr.trainer.data import build_data
from hf_dynasr.trainer.dry_run import dry_run_main
from hf_dynasr.trainer.final import finish, save_final
from hf_dynasr.trainer.loop import TrainingLoop, resume
from hf_dynasr.trainer.options import parse_args
from hf_dynasr.trainer.resume_check import check_resume, resolve_resume
from hf_dynasr.trainer.run_folder import release_lock, undo_failed_start
from hf_dynasr.trainer.setup import (build_accelerator, build_run, check_output_dir, make_output_dir,
                                     prepare, start_tracking, synthesize_missing_corpus)


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
    # removed when overwriting it)
    accelerator = build_accelerator(args)
    lock = make_output_dir(args, accelerator, previous)
    try:
        train(args, accelerator, callbacks, fresh=lock is not None and not previous)
    finally:
        if lock:
            release_lock(lock)


def train(args, accelerator, callbacks, fresh: bool = False) -> None:
    """The checkpoint to resume from and steps 3 to 8 in the locked run folder. `fresh`: this (main) process
    started the folder empty; a failure before the training loop (no checkpoint to resume, data, model) then
    removes the run's entries, which hold nothing worth keeping, so the same command can simply be run again
    (`run_folder.undo_failed_start`)."""
    try:
        run, state = start(args, accelerator)
    except BaseException:
        if fresh:
            undo_failed_start(args.output_dir)
        raise
    # 7. the training loop: stage 1, the stage boundary (masks frozen), stage 2
    TrainingLoop(run, state, CallbackList(callbacks)).train()
    # 8. final evaluation; model, processor, selector scores and results in final/
    save_final(run, state)
    finish(run)


def start(args, accelerator):
    """The checkpoint to resume from, whose options this run must share; steps 3 to 6: -> (the run, its state)."""
    resume_dir = resolve_resume(args)
    check_resume(args, accelerator, resume_dir)
    # 3. data (a missing smoke corpus synthesized first when asked): features and labels computed once (the
    # main process first, the others read its cache)
    synthesize_missing_corpus(args, accelerator)
    data = build_data(args, accelerator)
    # 4. model (its shape from the checkpoint when resuming), sizes, selector, DMAO
    run = build_run(args, accelerator, data, resume_dir)
    # 5. optimizer (model + selector scores), the schedule in fractions of max_steps; accelerate's prepare
    prepare(run)
    # 6. resume (weights, optimizer, scheduler, RNG, selector, DMAO, position in the data); trackers, run info
    state = resume(run)
    start_tracking(run)
    return run, state
