"""The papers' one-cycle learning-rate schedule, expressed in fractions of the total steps.

The authors' published training configs of papers 1-3 (arXiv:2407.18930, 2501.18895, 2506.13180): linear
from peak/100 to the peak over the first ~45 % of training, linearly back down to peak/100 over the next
~45 % (peak/10 in the TED-LIUM configs of papers 2 and 3: `floor_factor`), then linearly to 1e-8 over the
last ~10 %. Fractions (not step counts) let a short CPU run and a
30-epoch LibriSpeech run share the config keys.

Because the schedule is a function of max_steps, a resume with another --max_steps would re-stretch it mid-run
(the learning rate jumping to where the longer schedule stands): such a resume is refused naming both values
(max_steps is one of `options.TRAJECTORY_OPTIONS`); to train further, start a new run in another --output_dir
(`--init_from` a checkpoint starts it from those weights, with a schedule of its own).
"""

from __future__ import annotations

from torch.optim.lr_scheduler import LambdaLR
from transformers import get_scheduler


def one_cycle_lambda(total_steps: int, warmup_fraction: float = 0.45, decay_fraction: float = 0.45,
                     start_factor: float = 0.01, end_factor: float = 0.01, final_lr_ratio: float = 1e-8 / 4e-4):
    """Multiplier of the peak LR at each step (for LambdaLR)."""
    if warmup_fraction < 0 or decay_fraction < 0 or warmup_fraction + decay_fraction > 1:
        raise ValueError("warmup_fraction + decay_fraction must lie in [0, 1]")
    up = max(1, round(total_steps * warmup_fraction))
    down = max(1, round(total_steps * decay_fraction))
    tail = max(1, total_steps - up - down)

    def factor(step: int) -> float:
        if step < up:
            return start_factor + (1 - start_factor) * step / up
        if step < up + down:
            return 1 - (1 - end_factor) * (step - up) / down
        t = min(1.0, (step - up - down) / tail)
        return end_factor + (final_lr_ratio - end_factor) * t

    return factor


def build_scheduler(optimizer, name: str, total_steps: int, warmup_fraction: float = 0.45,
                    decay_fraction: float = 0.45, floor_factor: float = 0.01):
    """"one_cycle" (the papers') or any `transformers.get_scheduler` name ("linear", "cosine", ...).
    `floor_factor`: one_cycle's start and end-of-decay LR as a fraction of the peak (`--lr_floor`).

    "warmup_stable_decay" (transformers' WSD) holds the peak between the warm-up and a linear decay over the
    last `decay_fraction` of the steps: in a minutes-long CPU run the one-cycle's long ramps spend most
    updates far below the peak (demo_cpu.yaml)."""
    if name == "one_cycle":
        return LambdaLR(optimizer, one_cycle_lambda(total_steps, warmup_fraction, decay_fraction,
                                                    start_factor=floor_factor, end_factor=floor_factor))
    warmup = round(total_steps * warmup_fraction)
    extra = None
    if name == "warmup_stable_decay":
        if not 0 < decay_fraction <= 1 - warmup_fraction:
            raise ValueError(f"warmup_stable_decay needs 0 < decay_fraction <= 1 - warmup_fraction; got "
                             f"decay_fraction={decay_fraction}, warmup_fraction={warmup_fraction}")
        extra = {"num_decay_steps": max(1, round(total_steps * decay_fraction)), "decay_type": "linear"}
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps,
                         scheduler_specific_kwargs=extra)
