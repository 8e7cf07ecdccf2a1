"""Callbacks: code that watches or alters a training run from outside the loop, in the spirit of transformers'
`TrainerCallback`. Subclass `TrainerCallback`, override the hooks you need, and pass instances to
`hf_dynasr.trainer.main(argv, callbacks=[...])`:

    class StopAfter(TrainerCallback):
        def on_step_end(self, step):
            if step == 100:
                raise SystemExit("enough")

    main(["--config", "training/configs/smoke.yaml"], callbacks=[StopAfter()])

`step` is always the number of optimizer updates done so far (the value `trainer_state.json` records): the
batches of update N+1 see `step == N`, and `on_step_end` runs with the count that includes its update. Hooks
run on every process unless noted; several callbacks run in the order given.
"""

from __future__ import annotations

import torch
from torch import nn


class TrainerCallback:
    """Every hook does nothing by default."""

    def on_loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        """Each batch's loss, before the non-finite check and the backward; return it or a replacement."""
        return loss

    def on_gradients(self, step: int, model: nn.Module) -> None:
        """At an update (the last batch of an accumulation), after the backward and before clipping and the
        non-finite check of the gradients. `model` is the bare model (not the DDP wrapper)."""

    def on_step_end(self, step: int) -> None:
        """After optimizer update number `step`, before its DMAO reshape, logging, evaluation and checkpoint."""

    def on_checkpoint_written(self, step: int, folder: str) -> None:
        """Main process only: checkpoint `step` is complete in the temporary `folder`, not yet renamed to
        `checkpoints/step_<step>` (a run that dies now leaves the previous checkpoint the latest one)."""


class CallbackList(TrainerCallback):
    """Several callbacks as one: each hook calls them in order (`on_loss` chains the returned losses)."""

    def __init__(self, callbacks=None):
        self.callbacks = list(callbacks or [])

    def on_loss(self, step, loss):
        for callback in self.callbacks:
            loss = callback.on_loss(step, loss)
        return loss

    def on_gradients(self, step, model):
        for callback in self.callbacks:
            callback.on_gradients(step, model)

    def on_step_end(self, step):
        for callback in self.callbacks:
            callback.on_step_end(step)

    def on_checkpoint_written(self, step, folder):
        for callback in self.callbacks:
            callback.on_checkpoint_written(step, folder)
