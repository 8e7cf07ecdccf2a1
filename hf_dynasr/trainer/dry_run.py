"""`--dry_run`: check a recipe in seconds instead of hours, without its data.

    python training/train.py --config training/configs/librispeech_960h.yaml --dry_run [--max_batch_seconds 30]

It builds everything the recipe asks for, as a real run does (`setup.build_run`, `setup.prepare`: the model of
the YAML with its sizes, the selector, DMAO, the optimizer and the schedule), reads no data and writes no run
folder, then runs two updates through the training loop's own `TrainingLoop.train_batch` (plan_step,
supernet_loss, backward, clipping, optimizer and schedule step) on a synthetic batch of the recipe's shapes:
the first stage-1 update (the whole network plus a soft-gated size) and the first stage-2 update (the masks
frozen, the sandwich of sizes). It reports parameters, FLOPs per update, peak memory and time per update.

The synthetic batch is what the duration sampler packs at worst: utterances of the longest length the recipe
keeps (`max_duration_s`, at most `max_batch_seconds`), as many as fit in `max_batch_seconds` of padded audio;
random log-mel frames (the features are normalised per utterance, so N(0, 1) has their scale) and label
sequences of read speech's length.
"""

from __future__ import annotations

import logging
import math
import resource
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from accelerate import PartialState
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from hf_dynasr.data.processing import build_processor
from hf_dynasr.trainer.callbacks import CallbackList
from hf_dynasr.trainer.data import TrainData
from hf_dynasr.trainer.loop import LoopState, TrainingLoop
from hf_dynasr.trainer.nonfinite import NonFiniteCounter
from hf_dynasr.trainer.options import TrainArgs
from hf_dynasr.trainer.setup import (
    Run,
    build_accelerator,
    build_run,
    prepare,
)
from hf_dynasr.trainer.supernet_step import freeze_masks

logger = logging.getLogger("hf_dynasr.train")

#: characters per second of read English speech (LibriSpeech, TED-LIUM talks): about 15
CHARS_PER_SECOND = 15
#: the text the synthetic labels are cut from (every letter, spaces)
_TEXT = "the quick brown fox jumps over the lazy dog and sphinx of black quartz judge my vow "


@dataclass
class UpdateReport:
    """One update of the dry run: the nets it ran, their losses, FLOPs and wall time."""

    step: int
    stage: int
    nets: list[str]
    losses: dict[str, float]
    flops: int  # forward + backward (and recomputation), FlopCounterMode: matmuls, convolutions, attention
    seconds: float  # wall time, FLOP counting included


@dataclass
class DryRunReport:
    """What `dry_run` measured; `format()` is what the command prints."""

    device: str
    num_processes: int
    batch: dict  # utterances, seconds per utterance, frames, label length, audio seconds
    parameters: dict  # trainable (with every size's head), whole network (one head)
    sizes: dict  # name -> {fraction, criterion, target, num_parameters, flops} (last two once masks are frozen)
    updates: list[UpdateReport] = field(default_factory=list)
    peak_memory_bytes: int = 0
    peak_memory_kind: str = ""
    gradient_checkpointing: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        b = self.batch
        p = self.parameters
        checkpointing = "on" if self.gradient_checkpointing else "off"
        lines = [
            f"dry run on {self.device} x {self.num_processes} process(es), gradient checkpointing {checkpointing}",
            (f"batch per process: {b['utterances']} x {b['seconds_per_utterance']:g} s = {b['audio_seconds']:g} s of "
             f"audio ({b['frames']} frames of {b['num_mel_bins']} log-mel bins, {b['label_length']} labels each)"),
            (f"parameters: {p['trainable']:,} trainable (with every size's CTC head); whole network "
             f"{p['whole_network']:,} (one head), {p['whole_network_flops']:,} FLOPs per "
             f"{p['reference_duration_s']:g} s of audio"),
        ]
        for name, s in self.sizes.items():
            got = "" if s.get("num_parameters") is None else \
                f"; frozen mask: {s['num_parameters']:,} params, {s['flops']:,} FLOPs"
            lines.append(f"  size {name}: target {s['fraction']:.3f} of the {s['criterion']} = {s['target']:,.0f}{got}")
        for u in self.updates:
            losses = ", ".join(f"{k.removeprefix('loss/')} {v:.3f}" for k, v in u.losses.items())
            lines.append(f"update {u.step} (stage {u.stage}: {' + '.join(u.nets)}): {_si(u.flops)}FLOPs "
                         f"forward+backward, {u.seconds:.2f} s; losses {losses}")
        lines.append(f"peak memory: {self.peak_memory_bytes / 2**30:.2f} GiB ({self.peak_memory_kind})")
        return "\n".join(lines)


def _si(value: float) -> str:
    """1.23e12 -> "1.23 T" (SI prefix)."""
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}"
    return f"{value:.3g} "


def synthetic_batch(args: TrainArgs, config, tokenizer, device) -> dict:
    """A batch of the recipe's shapes: as many utterances of `max_duration_s` (at most `max_batch_seconds`)
    as fit in `max_batch_seconds` of padded audio, with random features and real label ids."""
    seconds = min(args.max_duration_s, args.max_batch_seconds)
    count = max(1, math.floor(args.max_batch_seconds / seconds))
    frames = round(seconds * config.sampling_rate / config.hop_length)
    chars = max(1, round(seconds * CHARS_PER_SECOND))
    text = (_TEXT * (chars // len(_TEXT) + 1))[:chars]
    label_ids = tokenizer(text).input_ids
    generator = torch.Generator().manual_seed(args.seed)
    features = torch.randn(count, frames, config.num_mel_bins, generator=generator)
    return {"input_features": features.to(device),
            "attention_mask": torch.ones(count, frames, dtype=torch.long, device=device),
            "labels": torch.tensor([label_ids] * count, dtype=torch.long, device=device)}


def dry_run(args: TrainArgs) -> DryRunReport:
    """Build the run `args` describe and run two updates on a synthetic batch (see the module docstring).
    Raises SystemExit with a message when the recipe cannot train (e.g. a non-finite loss)."""
    accelerator = build_accelerator(args)
    torch.manual_seed(args.seed)
    processor = build_processor()
    data = TrainData(processor, train_ds=None, eval_ds=None, reports={}, sampler=None, collator=None, loader=[])
    run = build_run(args, accelerator, data)
    prepare(run)
    config = run.unwrapped.config
    batch = synthetic_batch(args, config, processor.tokenizer, accelerator.device)
    report = DryRunReport(
        device=str(accelerator.device), num_processes=accelerator.num_processes, batch=_batch_shape(batch, config),
        parameters=_parameters(run), sizes={}, gradient_checkpointing=run.unwrapped.is_activation_checkpointing)
    loop = TrainingLoop(run, LoopState(NonFiniteCounter(args.max_nonfinite_steps)), CallbackList())
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(accelerator.device)
    for step in (0, run.stage1_steps if run.selector is not None else 1):
        report.updates.append(_update(run, loop, batch, step))
    report.sizes = _sizes(run)
    report.peak_memory_bytes, report.peak_memory_kind = _peak_memory(accelerator.device)
    return report


def _update(run: Run, loop: TrainingLoop, batch: dict, step: int) -> UpdateReport:
    """One optimizer update (gradient_accumulation_steps batches) at `step`, its FLOPs counted and timed."""
    loop.state.step = step
    stage = 1 if run.selector is not None and step < run.stage1_steps else 2
    device = run.accelerator.device
    if run.masks_pending() and step == run.stage1_steps:
        # the stage boundary, as train_batch would do it, but outside the count: measuring each frozen size's
        # FLOPs runs a FlopCounterMode forward of its own, which the update's counter would add up too
        freeze_masks(run.unwrapped, run.selector, run.sizes, run.criterion)
    _synchronize(device)
    start = time.perf_counter()
    with FlopCount() as counter:
        for _ in range(run.args.gradient_accumulation_steps):
            losses = loop.train_batch(batch)
            if losses is None:
                raise SystemExit(
                    f"error: dry run: update {step} (stage {stage}) was not finite ({loop.state.nonfinite.total} "
                    "skipped); the recipe's model or learning rate does not train on this batch. Retry with "
                    "--detect_anomaly to see the first module with a non-finite output")
    _synchronize(device)
    seconds = time.perf_counter() - start
    if run.selector is not None and step < run.stage1_steps:
        with torch.no_grad():
            run.selector.end_of_step(step)  # the selector's own per-update work (its schedule, zero-out)
    nets = [name.removeprefix("loss/") for name in losses
            if name.startswith("loss/") and name != "loss/regularizer"]
    return UpdateReport(step, stage, nets, losses, int(counter.flops), seconds)


class FlopCount(TorchDispatchMode):
    """Counts the FLOPs of what runs inside it (forward, backward, a checkpoint's recomputation) with torch's
    FlopCounterMode formulas (matmuls, convolutions, attention) in `flops`, the backward of a grouped
    convolution counted right: its weight gradient costs one forward convolution, like its input gradient
    (torch's formula counts it as if the convolution had no groups, so the depthwise convolutions of the conv
    module and the cgMLP would count `channels` times too much). Not FlopCounterMode itself: its module
    tracker keeps alive the activations that gradient checkpointing frees (a checkpointed paper-size update
    then peaks at twice the memory)."""

    def __init__(self):
        super().__init__()
        self.flops = 0
        mapping = {torch.ops.aten.convolution_backward: _conv_backward_flop}
        self._formulas = FlopCounterMode(display=False, custom_mapping=mapping).flop_registry

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self._formulas.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch_shape(batch: dict, config) -> dict:
    count, frames, bins = batch["input_features"].shape
    seconds = frames * config.hop_length / config.sampling_rate
    return {"utterances": count, "seconds_per_utterance": seconds, "audio_seconds": count * seconds,
            "frames": frames, "num_mel_bins": bins, "label_length": batch["labels"].shape[1]}


def _parameters(run: Run) -> dict:
    costs = run.unwrapped.component_costs()
    return {"trainable": sum(p.numel() for p in run.unwrapped.parameters() if p.requires_grad),
            "whole_network": costs.total_params, "whole_network_flops": costs.total_flops,
            "reference_duration_s": run.unwrapped.config.reference_duration_s}


def _sizes(run: Run) -> dict:
    """Each size's target and, once its mask is frozen (stage 2), what it measures."""
    costs = run.unwrapped.component_costs()
    out = {}
    for name, fraction in run.sizes.items():
        entry = run.unwrapped.config.subnets[name]
        out[name] = {"fraction": fraction, "criterion": run.criterion,
                     "target": fraction * costs.of(run.criterion)[1],
                     "num_parameters": entry.get("num_parameters"), "flops": entry.get("flops")}
    return out


def _peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    # ru_maxrss: kilobytes on Linux, bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, "peak RSS of the process"


def dry_run_main(args: TrainArgs) -> DryRunReport:
    """`--dry_run`: run `dry_run` and print its report (on the main process)."""
    report = dry_run(args)
    if PartialState().is_main_process:  # the state the run's Accelerator set up
        print(report.format(), flush=True)
    return report
