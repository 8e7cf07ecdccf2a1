"""`--detect_anomaly`: name the first module that turns finite inputs into a non-finite output.

    detector = AnomalyDetector(model)      # forward hooks on every submodule (opt-in: one isfinite per tensor)
    detector.reset()                       # before each training step
    model(...)                             # a NaN/inf born in dynasr.layers.1.ffn1 logs, once per reset:
    # non-finite output in module dynasr.layers.1.ffn1 (DynaSRFeedForward)
    detector.first                         # that message, or None
    detector.detach()

The reported module is the origin: its tensor inputs are all finite and its output is not (hooks run after a
module's children, so the deepest such module is found first). If no module qualifies (the model's input was
already non-finite), the first module with a non-finite output is reported with "(input already non-finite)".
Nothing is raised: under DDP every rank must reach the same collectives, so the training loop's reduced
non-finite check decides to skip the step. After a DMAO reshape call `attach` again (modules are replaced).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):  # includes transformers ModelOutput
        for item in value.values():
            yield from _tensors(item)


def _finite(value) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in _tensors(value) if t.is_floating_point() and not t.is_meta)


class AnomalyDetector:
    def __init__(self, model: nn.Module):
        self.first: str | None = None
        self._fallback: str | None = None
        self._handles: list = []
        self.attach(model)

    def attach(self, model: nn.Module) -> None:
        self.detach()
        for name, module in model.named_modules():
            if name:  # the root's output is the loss/logits: the training loop reports that itself
                self._handles.append(module.register_forward_hook(self._hook(name), with_kwargs=True))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def reset(self) -> None:
        self.first = self._fallback = None

    def report(self) -> str | None:
        """The origin if one was found, else the first non-finite output, else None."""
        return self.first or self._fallback

    def _hook(self, name: str):
        def hook(module, args, kwargs, output):
            if self.first is not None or _finite(output):
                return
            where = f"non-finite output in module {name} ({type(module).__name__})"
            if _finite(args) and _finite(kwargs):
                self.first = where
                logger.warning("%s", where)
            elif self._fallback is None:
                self._fallback = f"{where} (input already non-finite)"

        return hook
