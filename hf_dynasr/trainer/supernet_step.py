"""One supernet training step: which nets it runs, with which gates and loss weights, and their summed loss.

Two-stage training of papers 1 (arXiv:2407.18930) and 2 (arXiv:2501.18895). Stage 1 (the first
`stage1_fraction` of steps): the whole network plus one soft-gated subnet, its size drawn from the step and
the seed (so every process draws the same; paper 2), or always the smallest, the selector's annealed subnet
(`stage1_subnet="annealed"`, paper 1). At the boundary the selector's masks are frozen into
`config.subnets` (`freeze_masks`). Stage 2 (sandwich rule): the whole network, the smallest subnet and, with
more than two subnets, one random middle size, each with its binary mask and its own CTC head. LayerDrop on
the whole network's path drops, per sequence, exactly the components the smallest subnet drops. With
`distillation_weight > 0` (in-place distillation, not in the papers) the stage-2 subnets also learn the whole
network's detached frame posteriors of the same step (`distillation_loss`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hf_dynasr.models.dynasr import FULL
from hf_dynasr.models.dynasr.frontend_dynasr import frame_mask, subsampled_lengths
from hf_dynasr.selection import LOSS_WEIGHTS, SelectionConfig

logger = logging.getLogger("hf_dynasr.train")


@dataclass
class NetRun:
    """One forward of a training step: `subnet` a size name or `FULL`; `gates` soft gates or None."""

    subnet: str
    gates: torch.Tensor | None = None
    soft: bool = False  # True in stage 1: gates come from the selector and carry its gradient


def step_seed(seed: int, step: int) -> int:
    """The seed of every per-step random draw (the stage's sizes, LayerDrop, a batch's dropout and
    SpecAugment): a function of the run's seed and the position only, so every process and a resumed run
    draw exactly what the uninterrupted run drew."""
    return seed * 1_000_003 + step


def step_rng(seed: int, step: int) -> random.Random:
    """The same random choices on every process: derived from (seed, step) only."""
    return random.Random(step_seed(seed, step))


def plan_step(step: int, sizes: list[str], *, stage1_steps: int, seed: int, selector=None,
              stage1_subnet: str = "random") -> list[NetRun]:
    """Nets to run at `step`. `sizes` are ordered smallest first; the whole network always runs first. Stage 1
    trains one soft-gated size: drawn at random ("random", paper 2) or the smallest ("annealed", paper 1)."""
    if not sizes:
        return [NetRun(FULL)]
    rng = step_rng(seed, step)
    if selector is not None and step < stage1_steps:
        name = sizes[0] if stage1_subnet == "annealed" else sizes[rng.randrange(len(sizes))]
        return [NetRun(FULL), NetRun(name, selector.gates(name, step), soft=True)]
    runs = [NetRun(FULL), NetRun(sizes[0])]
    if len(sizes) == 2:
        runs.append(NetRun(sizes[1]))
    elif len(sizes) > 2:
        runs.append(NetRun(sizes[1 + rng.randrange(len(sizes) - 1)]))  # a middle size, or the largest subnet
    return runs


def subnet_loss_weight(loss: torch.Tensor, kind: str) -> torch.Tensor | float:
    """paper 1: 0.3 for every subnet; paper 2: the focal weight 1 - exp(-L), not detached."""
    if kind == "paper1":
        return 0.3
    if kind == "focal":
        return 1.0 - torch.exp(-loss)
    raise ValueError(f"unknown subnet loss weight {kind!r}; allowed: {', '.join(LOSS_WEIGHTS)}")


def layerdrop_gates(drop: torch.Tensor, rate: float, batch: int, generator: torch.Generator) -> torch.Tensor | None:
    """[B, N] gates on the device of `drop`: each component in `drop` ([N] bool) is zeroed per sequence with
    probability `rate`, and kept ones are scaled by 1 / (1 - rate) (stochastic depth, row mode, as in papers
    1 and 2)."""
    if rate <= 0 or not bool(drop.any()):
        return None
    # drawn on the CPU from the step's CPU generator, then moved: the same gates on every device and process
    # (and in a resumed run), which a generator on the accelerator would not give
    draw = torch.rand(batch, drop.numel(), generator=generator, device="cpu").to(drop.device)
    keep = (draw >= rate).float() / (1.0 - rate)
    return torch.where(drop[None, :], keep, torch.ones_like(keep))


def supernet_loss(model, unwrapped, batch, runs: list[NetRun], step: int, *, sizes: list[str],
                  selection: SelectionConfig, seed: int, selector=None) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of the weighted CTC losses of this step's nets plus the selector's regulariser, and each net's loss
    for logging (`loss/full`, `loss/<size>`, `loss/regularizer`, `distill/<size>`). `model` may be DDP-wrapped,
    `unwrapped` is the bare model; `sizes` are the size names, smallest first."""
    generator = torch.Generator(device="cpu").manual_seed(step_seed(seed, step))  # LayerDrop: a function of the step
    total, losses, teacher, embeds = 0.0, {}, None, None
    stage1 = any(run.soft for run in runs)
    drop_rate = selection.layerdrop_stage1 if stage1 else selection.layerdrop_stage2
    for run in runs:
        gates = run.gates
        if run.subnet == FULL and selector is not None:
            drop = selector.layerdrop_components(step) if stage1 else ~unwrapped.subnet_mask(sizes[0])
            gates = layerdrop_gates(drop, drop_rate, batch["input_features"].shape[0], generator)
        adapt = selection.adaptive_ffn_dropout and not run.soft and run.subnet != FULL
        with ffn_dropout_scaled(unwrapped, run.subnet) if adapt else contextlib.nullcontext():
            if embeds is None:  # the first net computes the frontend output, the others start from it
                out = model(input_features=batch["input_features"], attention_mask=batch["attention_mask"],
                            labels=batch["labels"], subnet=run.subnet, component_gates=gates,
                            output_hidden_states=True)
                embeds, embeds_mask = shared_frontend(out, batch["attention_mask"])
            else:
                out = model(inputs_embeds=embeds, attention_mask=embeds_mask, labels=batch["labels"],
                            subnet=run.subnet, component_gates=gates)
        weight = 1.0 if run.subnet == FULL else subnet_loss_weight(out.loss, selection.loss_weight)
        total = total + weight * out.loss
        losses[f"loss/{run.subnet}"] = float(out.loss.detach())
        if selection.distillation_weight > 0 and not stage1:
            if run.subnet == FULL:
                teacher = out.logits.detach()
            elif teacher is not None:
                distill = distillation_loss(out.logits, teacher, embeds_mask)
                total = total + selection.distillation_weight * distill
                losses[f"distill/{run.subnet}"] = float(distill.detach())
        if run.soft:
            reg = selector.regularizer(run.subnet, step)
            total = total + reg
            losses["loss/regularizer"] = float(reg.detach())
    return total + anchor_unused_heads(unwrapped, {r.subnet for r in runs}), losses


@contextlib.contextmanager
def ffn_dropout_scaled(unwrapped, subnet: str):
    """Paper 2's adaptive FFN dropout (`SelectionConfig.adaptive_ffn_dropout`): while a subnet runs, each FFN's
    dropout rates are scaled by the share of its hidden units the subnet's mask keeps; restored afterwards."""
    if unwrapped.is_activation_checkpointing:
        raise ValueError("selection.adaptive_ffn_dropout does not work with gradient checkpointing (the recomputed "
                         "forward would use other dropout rates); turn one of them off")
    kept = unwrapped.component_index.kept_units(unwrapped.subnet_ids(subnet) or range(len(unwrapped.component_index)))
    saved = []
    for b, layer in enumerate(unwrapped.dynasr.layers):
        for name in ("ffn1", "ffn2"):
            module = getattr(layer, name, None)
            if module is None:
                continue
            share = len(kept.get((b, name), ())) / module.linear_in.out_features
            for dropout in (module.dropout, module.activation_dropout):
                saved.append((dropout, dropout.p))
                dropout.p = dropout.p * share
    try:
        yield
    finally:
        for dropout, p in saved:
            dropout.p = p


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """In-place distillation (once-for-all, Cai et al. 2020; BigNAS, Yu et al. 2020): the mean over valid frames
    ([B, T] bool `frames`) of KL(p_teacher || p_student) between the frame posteriors over the CTC labels (blank
    included). The teacher's logits are detached here too, so its network gets no gradient from this term."""
    teacher = F.log_softmax(teacher_logits.detach().float(), dim=-1)
    student = F.log_softmax(student_logits.float(), dim=-1)
    per_frame = (teacher.exp() * (teacher - student)).sum(-1)  # [B, T]
    frames = frames.to(per_frame.dtype)
    return (per_frame * frames).sum() / frames.sum().clamp_min(1.0)


def shared_frontend(out, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """The frontend output of a forward pass ([B, T', d], `hidden_states[0]`) and its frame mask [B, T'].

    Every net of a step reads the same batch, and the frontend is outside every size's mask, so all nets start
    from one frontend output: its forward and backward then run once per step instead of once per net. Same
    gradients; SpecAugment, if on, is drawn once per batch, as in the papers' RETURNN pipeline, where
    augmentation is part of the data and every net of the step sees the same."""
    embeds = out.hidden_states[0]
    lengths = subsampled_lengths(attention_mask.long().sum(-1))
    return embeds, frame_mask(lengths, embeds.shape[1])


def anchor_unused_heads(unwrapped, used) -> torch.Tensor:
    """0 * (heads not run this step): DDP then sees every parameter used without find_unused_parameters,
    which would cost an extra traversal of the autograd graph every step. Gradients stay exactly zero."""
    anchor = 0.0
    for name, head in unwrapped.subnet_heads.items():
        if name not in used:
            anchor = anchor + 0.0 * (head.weight.sum() + head.bias.sum())
    return anchor


def freeze_masks(unwrapped, selector, sizes: dict[str, float], criterion: str) -> None:
    """Stage boundary: the selector's nested binary masks become config.subnets (same on every rank)."""
    for name, ids in selector.final_masks().items():
        entry = unwrapped.add_subnet(name, components=ids, criterion=criterion, target=sizes[name])
        logger.info("subnet %s: %d components, %s params, %s FLOPs", name, len(ids),
                    f"{entry['num_parameters']:,}", f"{entry['flops']:,}")


def rederive_fraction(fraction: float, paper_rest_share: float, rest_share: float) -> float:
    """A paper's size fraction re-derived for this model: the fraction that keeps the same share of the prunable
    cost, `r + (1 - r) (p - r_p) / (1 - r_p)` (see `SelectionConfig.paper_rest_share`)."""
    if fraction <= paper_rest_share:
        raise ValueError(f"size fraction {fraction:g} is not above the paper's never-pruned share "
                         f"{paper_rest_share:g} (selection.paper_rest_share); give the paper's fraction of the whole")
    return rest_share + (1.0 - rest_share) * (fraction - paper_rest_share) / (1.0 - paper_rest_share)


def size_fractions(subnets: dict, costs, default_criterion: str,
                   paper_rest_share: float | None = None) -> tuple[dict[str, float], str]:
    """User sizes -> fractions of the criterion's total, smallest first.

    Each entry is a number (a fraction if <= 1, else an absolute target) or {target|fraction, criterion}. With
    `paper_rest_share`, fractions (not absolute targets) are a paper's and are re-derived (`rederive_fraction`)."""
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
        if paper_rest_share is not None and value <= 1:
            component_costs, _ = costs.of(criterion)
            fraction = rederive_fraction(value, paper_rest_share, 1.0 - sum(component_costs) / total)
        if not 0 < fraction < 1:
            raise ValueError(
                f"subnets.{name}: target {value:g} is {fraction:.3f} of the whole network's {criterion} "
                f"({total:,}); a subnet must be smaller than the whole network and larger than 0"
            )
        fractions[name] = fraction
    if len(criteria) > 1:
        raise ValueError(f"all subnets of one supernet must use one criterion; got {sorted(criteria)}")
    ordered = dict(sorted(fractions.items(), key=lambda kv: kv[1]))
    return ordered, criteria.pop() if criteria else default_criterion
