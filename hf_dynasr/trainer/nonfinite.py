"""Non-finite steps: detect a NaN/inf loss or gradient the same way on every process, skip that update, count,
and stop after too many in a row.

Under DDP every rank must reach the same collectives, so the checks reduce their verdict over all processes
(the minimum: one non-finite rank makes every rank skip) and a skipped batch still runs its backward (on a
zeroed loss). `--detect_anomaly` (`anomaly.AnomalyDetector`) names the module a NaN came from.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger("hf_dynasr.train")


def loss_finite(accelerator, loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every process."""
    return bool(accelerator.reduce(torch.isfinite(loss.detach()).float(), "min") >= 1)


def grads_finite(accelerator, model, selector, max_grad_norm) -> bool:
    """Clip (if max_grad_norm > 0) and say whether every gradient is finite, agreed across processes.
    Under fp16 the GradScaler already skips overflowing steps and lowers its scale: not counted here."""
    if max_grad_norm > 0:
        norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    if accelerator.scaler is not None or norm is None:
        return True
    ok = torch.isfinite(norm.detach().float().cpu())
    for p in selector.parameters() if selector is not None else []:
        if p.grad is not None:
            ok = ok & torch.isfinite(p.grad).all().cpu()
    return bool(accelerator.reduce(ok.float().to(accelerator.device), "min") >= 1)


def discard_loss(accelerator, loss: torch.Tensor, model, selector, keep: bool) -> None:
    """What a micro-batch with a non-finite loss does to the gradients: nothing. Before the last micro-batch of
    an accumulation there is no backward (DDP synchronises nothing there, and the verdict is the same on every
    rank). At the last one DDP needs every rank's backward, so it runs on 0 * loss; with `keep` (earlier
    micro-batches hold gradients) those gradients are put back afterwards and averaged over the processes, as
    DDP's all-reduce would have done with them, so the update is made of the finite micro-batches."""
    if not accelerator.sync_gradients:
        return
    if not keep:
        accelerator.backward(loss * 0.0)
        return
    params = list(model.parameters())
    scores = list(selector.parameters()) if selector is not None else []
    kept = [None if p.grad is None else p.grad.clone() for p in params + scores]
    accelerator.backward(loss * 0.0)
    for p, grad in zip(params + scores, kept):
        p.grad = grad
    if accelerator.num_processes > 1:  # the scores' gradients were averaged when they were made
        for p in params:
            p.grad = accelerator.reduce(p.grad if p.grad is not None else torch.zeros_like(p), "mean")


@dataclass
class NonFiniteCounter:
    """Skipped updates: in a row (fatal at `limit`) and in total (saved in checkpoints and the results)."""

    limit: int
    in_a_row: int = 0
    total: int = 0

    def skip(self, step: int, what: str, losses: dict, where: str | None, update_skipped: bool = True) -> None:
        """Count and log one skipped micro-batch (`what`: "loss" or "gradient"; `where`: the anomaly detector's
        report; `update_skipped`: False when only this micro-batch of an accumulation was dropped); a
        SystemExit once `limit` come in a row."""
        self.in_a_row += 1
        self.total += 1
        skipped = "update skipped" if update_skipped else "micro-batch dropped, the update keeps the others"
        logger.warning("step %d: non-finite %s (%s), %s (%d in a row)%s", step, what, losses, skipped,
                       self.in_a_row, f"; {where}" if where else "")
        if self.in_a_row >= self.limit:
            raise SystemExit(f"error: {self.in_a_row} non-finite steps in a row (last: non-finite {what}"
                             f"{'; ' + where if where else ''}); lower the learning rate or check the "
                             "data (--detect_anomaly names the first module with a non-finite output)")

    def finite(self) -> None:
        self.in_a_row = 0
