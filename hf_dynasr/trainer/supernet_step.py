"""Which nets a supernet training step runs, and with which gates and loss weights (methods.md A.1).

Stage 1 (the first `stage1_fraction` of steps): the full net plus one soft-gated subnet, its size drawn
from the step and the seed (so every process draws the same). At the boundary the selector's masks are
frozen into `config.subnets`. Stage 2 (sandwich rule): the largest net, the smallest subnet and, with
more than two subnets, one random middle size, each with its binary mask and its own CTC head.
LayerDrop on the full net's path drops, per sequence, exactly the components the smallest subnet drops.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

LOSS_WEIGHTS = ("paper1", "focal")


@dataclass
class NetRun:
    """One forward of a training step: `subnet` None = full net; `gates` soft gates or None."""

    subnet: str | None
    gates: torch.Tensor | None = None
    soft: bool = False  # True in stage 1: gates come from the selector and carry its gradient


def step_rng(seed: int, step: int) -> random.Random:
    """The same random choices on every process: derived from (seed, step) only."""
    return random.Random(seed * 1_000_003 + step)


def plan_step(step: int, sizes: list[str], *, stage1_steps: int, seed: int, selector=None) -> list[NetRun]:
    """Nets to run at `step`. `sizes` are ordered smallest first; the full net is implicit."""
    if not sizes:
        return [NetRun(None)]
    rng = step_rng(seed, step)
    if selector is not None and step < stage1_steps:
        name = sizes[rng.randrange(len(sizes))]
        return [NetRun(None), NetRun(name, selector.gates(name, step), soft=True)]
    runs = [NetRun(None), NetRun(sizes[0])]
    if len(sizes) == 2:
        runs.append(NetRun(sizes[1]))
    elif len(sizes) > 2:
        runs.append(NetRun(sizes[1 + rng.randrange(len(sizes) - 1)]))  # a middle size, or the largest subnet
    return runs


def subnet_loss_weight(loss: torch.Tensor, kind: str) -> torch.Tensor | float:
    """paper 1: 0.3 for every subnet; paper 2: the focal weight 1 - exp(-L), not detached (A.1)."""
    if kind == "paper1":
        return 0.3
    if kind == "focal":
        return 1.0 - torch.exp(-loss)
    raise ValueError(f"unknown subnet loss weight {kind!r}; allowed: {', '.join(LOSS_WEIGHTS)}")


def layerdrop_gates(drop: torch.Tensor, rate: float, batch: int, generator: torch.Generator) -> torch.Tensor | None:
    """[B, N] gates: each component in `drop` ([N] bool) is zeroed per sequence with probability `rate`,
    and kept ones are scaled by 1 / (1 - rate) (stochastic depth, row mode, methods.md A.1)."""
    if rate <= 0 or not bool(drop.any()):
        return None
    keep = (torch.rand(batch, drop.numel(), generator=generator) >= rate).float() / (1.0 - rate)
    return torch.where(drop[None, :], keep, torch.ones_like(keep))


def size_fractions(subnets: dict, costs, default_criterion: str) -> tuple[dict[str, float], str]:
    """User sizes -> fractions of the criterion's total, smallest first.

    Each entry is a number (a fraction if <= 1, else an absolute target) or {target|fraction, criterion}."""
    fractions, criteria = {}, set()
    for name, entry in subnets.items():
        entry = entry if isinstance(entry, dict) else {"target": entry}
        unknown = set(entry) - {"target", "fraction", "criterion"}
        if unknown:
            raise ValueError(f"subnets.{name}: unknown keys {sorted(unknown)}; allowed: target, fraction, criterion")
        criterion = entry.get("criterion", default_criterion)
        criteria.add(criterion)
        _, total = costs.of(criterion)
        value = float(entry.get("fraction", entry.get("target", math.nan)))
        fraction = value if value <= 1 else value / total
        if not 0 < fraction < 1:
            raise ValueError(
                f"subnets.{name}: target {value:g} is {fraction:.3f} of the full net's {criterion} ({total:,}); "
                "a subnet must be smaller than the full net and larger than 0"
            )
        fractions[name] = fraction
    if len(criteria) > 1:
        raise ValueError(f"all subnets of one supernet must use one criterion; got {sorted(criteria)}")
    ordered = dict(sorted(fractions.items(), key=lambda kv: kv[1]))
    return ordered, criteria.pop() if criteria else default_criterion
