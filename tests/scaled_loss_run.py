"""`hf_dynasr.trainer.main` with the loss of one micro-batch scaled, for tests that need it under `accelerate
launch`: `accelerate launch ... tests/scaled_loss_run.py STEP WHICH FACTOR TRAIN_ARGS...` scales the first
(WHICH=first) or the last (WHICH=last) micro-batch of the update made at step STEP by FACTOR (`nan`, `0`, ...)."""

from __future__ import annotations

import sys

from accelerate.state import GradientState

from hf_dynasr.trainer import TrainerCallback, main


class ScaleLoss(TrainerCallback):
    """Multiplies the loss of the first or the last micro-batch of the update at `step` by `factor` (with
    gradient accumulation, the last one is where accelerate synchronises the gradients)."""

    def __init__(self, step: int, last: bool, factor: float):
        self.step, self.last, self.factor, self.done = step, last, factor, False

    def on_loss(self, step, loss):
        if step == self.step and not self.done and GradientState().sync_gradients == self.last:
            self.done = True
            return loss * self.factor
        return loss


if __name__ == "__main__":
    main(sys.argv[4:], callbacks=[ScaleLoss(int(sys.argv[1]), sys.argv[2] == "last", float(sys.argv[3]))])
