"""torch.export and ONNX export of one size, and its dynamically quantized int8 twin.

    program = export_program(model, subnet="small")        # torch.export.ExportedProgram, dynamic batch and time
    export_onnx(model, "small/model.onnx")                  # dynamo exporter, checked against PyTorch
    quantize_int8("small/model.onnx", "small/model_int8.onnx")

The exported graph is `forward(input_features, attention_mask) -> logits` (`ONNX_INPUTS`, `ONNX_OUTPUT`); the mask is
bool, the dtype the processor (`ParakeetFeatureExtractor`) returns, so `session.run(None, dict(features))` works
on its numpy output as is. The model's value checks (NaN features, utterances under 4 frames) run in eager mode
only (`has_values` keeps them out of the traced graph); shape mismatches become guards of the exported program.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: The ONNX graph's inputs: name -> (dtype, axes). `frames` are 10 ms feature frames of the processor.
ONNX_INPUTS = {
    "input_features": ("float32", ("batch", "frames", "num_mel_bins")),
    "attention_mask": ("bool", ("batch", "frames")),
}
#: The ONNX graph's output: logits over the CTC vocabulary, one frame per 4 input frames (`frames // 4`).
ONNX_OUTPUT = ("logits", "float32", ("batch", "output_frames", "vocab_size"))
DEFAULT_OPSET = 18  # the dynamo exporter's own opset; older ones go through a version converter


class LogitsOnly(torch.nn.Module):
    """`model` with forward(input_features, attention_mask) -> logits of size `subnet` (None: the model's own
    size), the signature torch.export and ONNX export trace."""

    def __init__(self, model, subnet: str | None = None):
        super().__init__()
        self.inner = model
        self.subnet = subnet

    def forward(self, input_features, attention_mask):  # [B, T, F], [B, T] -> [B, T // 4, V]
        return self.inner(input_features=input_features, attention_mask=attention_mask, subnet=self.subnet).logits


def example_inputs(config, batch: int = 2, frames: int = 160, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of random log-mel features [B, T, F] and its bool mask [B, T] (the last utterance shorter).
    Batch 2 and more than 8 frames: torch.export specialises a size of 1 (and the frontend needs 8 frames for two
    output frames), so an example of 1 would pin the axis."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, frames, config.num_mel_bins, generator=gen)
    mask = torch.ones(batch, frames, dtype=torch.bool)
    mask[-1, frames * 2 // 3:] = False
    return features, mask


def export_program(model, *, subnet: str | None = None, example=None) -> torch.export.ExportedProgram:
    """`torch.export` of `model` running size `subnet` (the supernet with a size chosen; None: the model as it
    is, e.g. an extracted size), in eval mode, with dynamic batch and frames. The program's input guards refuse
    other mel-bin counts and a mask whose shape differs from the features'; it needs at least 8 frames (80 ms)."""
    wrapper = LogitsOnly(model, subnet).eval()
    features, mask = example if example is not None else example_inputs(model.config)
    dynamic = {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC}
    was_training = model.training
    model.eval()
    try:
        return torch.export.export(wrapper, (features, mask), strict=False,
                                   dynamic_shapes={"input_features": dynamic, "attention_mask": dynamic})
    finally:
        model.train(was_training)


def export_onnx(model, path, *, subnet: str | None = None, opset: int = DEFAULT_OPSET, verify: bool = True,
                atol: float = 1e-4) -> str:
    """Write `model` (size `subnet`, None: the model as it is) as one ONNX file with the dynamo exporter
    (`torch.onnx.export(..., dynamo=True)`): inputs and output as in `ONNX_INPUTS` / `ONNX_OUTPUT`, batch and time
    dynamic, weights inside the file. With `verify` (and onnxruntime installed), checks the ONNX logits against
    PyTorch's on a padded batch of other sizes than the example's; raises RuntimeError if they differ by > `atol`."""
    wrapper = LogitsOnly(model, subnet).eval()
    features, mask = example_inputs(model.config)
    # the features' axes named; the mask's axes are the same symbols (the model checks their shapes agree), so
    # they take the same names (naming them twice makes the exporter warn that the second name is unused)
    dynamic = {"input_features": {0: "batch", 1: "frames"},
               "attention_mask": {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC}}
    was_training, implementation = model.training, model.config._attn_implementation
    model.eval()
    # attention traced as "eager" (matmul, softmax, matmul): the exporter decomposes SDPA into the same math, whose
    # output has other strides than the fused CPU kernel's seen at tracing, and the reshape after it then fails
    model.config._attn_implementation = "eager"
    try:
        program = torch.onnx.export(wrapper, (features, mask), dynamo=True, dynamic_shapes=dynamic,
                                    input_names=list(ONNX_INPUTS), output_names=[ONNX_OUTPUT[0]],
                                    opset_version=opset, verbose=False)
    finally:
        model.train(was_training)
        model.config._attn_implementation = implementation
    output = program.model.graph.outputs[0]
    program.rename_axes({output.shape[0]: "batch", output.shape[1]: ONNX_OUTPUT[2][1]})  # not T // 4 as a formula
    path = os.fspath(path)
    program.save(path, external_data=False)
    if verify:
        verify_onnx(model, path, subnet=subnet, atol=atol)
    return path


def verify_onnx(model, path, *, subnet: str | None = None, atol: float = 1e-4) -> float | None:
    """Largest difference of the ONNX logits at `path` from PyTorch's (size `subnet`) on a padded batch of 3 with
    other lengths than at export; RuntimeError above `atol`. None without onnxruntime (nothing checked)."""
    try:
        import onnxruntime  # optional dependency (the `onnx` extra): without it the check is skipped
    except ImportError:
        logger.warning("onnxruntime is not installed: %s was not checked against PyTorch", path)
        return None
    session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    features, mask = example_inputs(model.config, batch=3, frames=237, seed=1)
    mask[1, 150:] = False
    got = session.run(None, {"input_features": features.numpy(), "attention_mask": mask.numpy()})[0]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            want = model(input_features=features, attention_mask=mask, subnet=subnet).logits.numpy()
    finally:
        model.train(was_training)
    err = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
    if not err <= atol:
        raise RuntimeError(f"ONNX export of {path} differs from PyTorch by {err:.2e} (> {atol}; shapes "
                           f"{got.shape} vs {want.shape})")
    return err


def quantize_int8(source, target) -> str:
    """Dynamic int8 quantization of an ONNX model (`onnxruntime.quantization.quantize_dynamic`): the weights of
    its matrix products stored as int8, activations quantized per call at run time. Convolutions stay float
    (onnxruntime's int8 convolutions are slower on CPU than its float ones). Writes `target`, returns its path."""
    # optional dependency (the `onnx` extra), slow to import
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = os.fspath(target)
    quantize_dynamic(os.fspath(source), target, op_types_to_quantize=["MatMul", "Gemm"],
                     weight_type=QuantType.QInt8)
    return target
