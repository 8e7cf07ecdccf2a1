"""ONNX export of one size, checked against PyTorch with onnxruntime when it is installed."""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch


class LogitsOnly(torch.nn.Module):
    """`model` with forward(input_features, attention_mask) -> logits, the signature ONNX export traces."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def forward(self, input_features, attention_mask):  # [B, T, F], [B, T] -> [B, T', V]
        return self.inner(input_features=input_features, attention_mask=attention_mask).logits


def export_onnx(model, path, *, opset: int = 17, verify: bool = True, atol: float = 1e-4) -> str:
    """Write `model` (one size) as ONNX: inputs input_features [batch, frames, mels] and attention_mask
    [batch, frames] (int64), output logits [batch, out_frames, vocab]; batch and time are dynamic.
    With `verify` (and onnxruntime installed), checks the ONNX logits against PyTorch on a padded batch."""
    was_training = model.training
    model.eval()
    frames, mels = 160, model.config.num_mel_bins
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(2, frames, mels, generator=gen)  # [2, T, F]
    mask = torch.ones(2, frames, dtype=torch.long)  # [2, T]
    mask[1, frames - 48:] = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                LogitsOnly(model), (features, mask), os.fspath(path),
                input_names=["input_features", "attention_mask"], output_names=["logits"],
                dynamic_axes={"input_features": {0: "batch", 1: "frames"}, "attention_mask": {0: "batch", 1: "frames"},
                              "logits": {0: "batch", 1: "output_frames"}},
                opset_version=opset, dynamo=False,
            )
    finally:
        model.train(was_training)  # torch.onnx.export does not restore the mode
    if verify:
        _verify(model, path, gen, atol)
    return os.fspath(path)


def _verify(model, path, gen: torch.Generator, atol: float) -> None:
    """Compare the ONNX logits with PyTorch's on a padded batch of other sizes than at export."""
    try:
        import onnxruntime  # optional dependency (the `onnx` extra): without it the check is skipped
    except ImportError:
        return
    session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    features = torch.randn(3, 237, model.config.num_mel_bins, generator=gen)  # [3, T, F]
    mask = torch.ones(3, 237, dtype=torch.long)  # [3, T]
    mask[1, 150:] = 0
    mask[2, 60:] = 0
    got = session.run(None, {"input_features": features.numpy(), "attention_mask": mask.numpy()})[0]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            want = model(input_features=features, attention_mask=mask).logits.numpy()
    finally:
        model.train(was_training)
    err = float(np.abs(got - want).max())
    if not err <= atol:
        raise RuntimeError(f"ONNX export of {path} differs from PyTorch by {err:.2e} (> {atol})")
