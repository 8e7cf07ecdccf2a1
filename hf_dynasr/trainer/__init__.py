"""Supernet training: typed options, the supernet step (plan, loss, LayerDrop), the loop, checkpointing,
schedules, non-finite-step handling and callbacks. `training/train.py` (and the `dynasr-train` command) call
`main`; `main(argv, callbacks=[...])` runs the same in-process."""

from hf_dynasr.trainer.callbacks import TrainerCallback
from hf_dynasr.trainer.options import TrainArgs, parse_args
from hf_dynasr.trainer.run import main

__all__ = ["TrainArgs", "TrainerCallback", "main", "parse_args"]
