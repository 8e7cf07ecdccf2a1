"""Supernet training: options, the supernet step (plan, loss, LayerDrop), the loop, checkpointing, schedules and
non-finite-step handling. `training/train.py` is the entry point users launch."""
