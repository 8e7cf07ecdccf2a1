"""Resuming a run with the options it was trained with: the options that shape the trajectory
(`options.TRAJECTORY_OPTIONS`), the number of processes and the mixed precision must equal the checkpoint's,
else the resume is refused naming the option, both values and the way out. A checkpoint carries the options
it was trained with in its trainer_state.json (`checkpoint_options`); older checkpoints are compared with the
run folder's training_args.json."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, fields

from hf_dynasr.json_io import read_json
from hf_dynasr.trainer.checkpointing import resolve_checkpoint
from hf_dynasr.trainer.options import RENAMED_OPTIONS, TRAJECTORY_OPTIONS, TrainArgs

logger = logging.getLogger("hf_dynasr.train")


def checkpoint_options(args: TrainArgs, accelerator) -> dict:
    """What a checkpoint records of the run that wrote it (in trainer_state.json): the options a resume must keep
    and the two settings the launcher decides (not the paths or cadences, so checkpoints of two runs that
    trained alike are the same bytes)."""
    values = asdict(args)
    return {"training_args": {name: values[name] for name in TRAJECTORY_OPTIONS},
            "num_processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision}


def resolve_resume(args: TrainArgs) -> str | None:
    """The checkpoint folder to resume from (None for a new run); a SystemExit that says what to do when there
    is none."""
    if not args.resume_from_checkpoint:
        return None
    try:
        return resolve_checkpoint(os.path.join(args.output_dir, "checkpoints"), args.resume_from_checkpoint)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}. To start the run again instead, drop --resume_from_checkpoint and pass "
                         "--overwrite_output_dir (it removes only the previous run's own entries)") from err


def check_resume(args: TrainArgs, accelerator, resume_dir: str | None) -> None:
    """A SystemExit naming the first option that differs from the checkpoint's (see the module docstring)."""
    if resume_dir is None:
        return
    state = read_json(os.path.join(resume_dir, "trainer_state.json"))
    saved = state.get("training_args")
    if saved is None:  # a checkpoint written before options were recorded in it
        legacy = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(resume_dir))), "training_args.json")
        if not os.path.isfile(legacy):
            logger.warning("cannot check the options of %s against the run's: it records none", resume_dir)
            return
        saved = read_json(legacy)
    defaults = {f.name: f.default for f in fields(TrainArgs)}
    saved = {RENAMED_OPTIONS.get(name, name): value for name, value in saved.items()}  # older checkpoints' names
    for name in TRAJECTORY_OPTIONS:
        new, old = _normal(getattr(args, name)), _normal(saved.get(name, defaults.get(name)))
        if new != old:
            raise SystemExit(refusal(f"--{name}", new, resume_dir, old))
    for name, new in (("num_processes", accelerator.num_processes), ("mixed_precision", accelerator.mixed_precision)):
        old = state.get(name)
        if old is not None and new != old:
            way = ("launch the same number of processes" if name == "num_processes"
                   else "pass --mixed_precision " + str(old))
            raise SystemExit(f"error: the run has {name} {new} but the checkpoint {resume_dir} was trained with "
                             f"{old}; {way} to continue it, or start a new run in another --output_dir")


def refusal(option: str, new, resume_dir: str, old) -> str:
    return (f"error: {option} is {_show(new)} but the checkpoint {resume_dir} was trained with {_show(old)}; a "
            f"resumed run must keep the options that shape training. Pass {option} {_show(old)} (or leave it as "
            "the run had it) to continue that run, or start a new run with the new value in another --output_dir")


def _normal(value):
    """Options compared as JSON values (a YAML mapping and the same JSON string are equal; 1e-3 == 0.001)."""
    return json.loads(json.dumps(value, sort_keys=True))


def _show(value) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
