"""DMAO grow-and-drop (paper 3, Xu et al., Interspeech 2025, arXiv:2506.13180): move encoder capacity to where
it is used, in training. This file holds the scores, the drop/grow plan and the events.

Units are DMAO's components: FFN chunks, attention heads, conv channel chunks and (E-Branchformer) cgMLP
chunks, i.e. the component index of the model's config at `granularity="component"`,
`conv_granularity="chunk"` (built from a config copy if the model uses another granularity; the model's own
granularity is not changed).

Training loop contract (the training script wires it):

    dmao = DMAO(model, DMAOConfig(...), total_steps)
    for step, batch in ...:
        loss.backward()
        dmao.observe(model, step)             # reads the existing .grad, no extra backward
        optimizer.step(); scheduler.step(); optimizer.zero_grad()
        if dmao.reshape_due(step):
            dmao.reduce_scores(accelerator)   # identical decision on every rank
            report = dmao.reshape(model, optimizer, step=step)

Follows paper 3: the units; the utilisation score (first-order Taylor `|grad * weight|`, mean over one
representative slice per unit; `grad` and `weight` magnitudes as the ablation's alternatives); the EMA
`s <- beta*s + (1-beta)*s_new` with beta = 0.1; drop the lowest-scored units until the removed cost reaches
rho*B (B = encoder budget, cost = parameters), then duplicate the highest-scored surviving units in their
own module until the added cost is >= rho*B and >= the removed cost; exact copies plus optional Gaussian
noise; a module left with 0 units is skipped; one event at 15% of training (LBS: sub-epoch 90 of 600).

Departs from paper 3 (each on purpose):
- Scores use the gradients the training step already computed (after backward, before the optimizer
  step) instead of an extra backward pass; the first measurement of a unit initialises its score.
- The removed cost also counts the shared parameters (pre-LayerNorm, output bias) of a module that loses
  all its units, so the parameter count after an event is exact: budget <= after < budget + one unit.
- `init="function_preserving"` (Net2Net-style, not in the paper) splits the outgoing weights of a parent
  and its copies equally, so the output is unchanged at the moment of growth. With `init="copy"` (paper)
  the parent's contribution doubles.
- `init="random_split"` splits them in random shares instead, and `copy_state="fresh"` gives copies zero
  AdamW moments: with exact copies (the paper) and no dropout between them a copy gets its parent's
  gradients and updates and never diverges; either option breaks that symmetry (`DMAOConfig`).
- The optimizer state is carried over (the paper's handling is unknown): see `DMAO.reshape`.
- `rho` applies per event (the paper's multi-event ablation splits one fraction evenly: pass rho / n).
- `unit_kinds` restricts which units move; B is then the cost of those units only.
- cgMLP units (E-Branchformer) are scored on their value rows of the first linear layer (the paper does not
  say which slice; this mirrors the conv chunk's value rows of pointwise-conv1). Each module class names
  its unit's slice (`importance_slice`) and its unit kind (`dmao_kind`).
- The paper's "adjust_dropout" is an option (`DMAOConfig.adjust_dropout`), off by default.
- Not implemented: OBD scores, random init of grown units.

Call `observe` on steps whose gradients are complete (the sync step of gradient accumulation) and, with an
fp16 GradScaler, after unscaling (e.g. after `accelerator.clip_grad_norm_`); bf16/fp32 need nothing.
Multi-process (DDP): gradients are already averaged when `observe` reads them, and `reduce_scores`
averages the scores anyway. Parameters are replaced by new tensors, so a DDP wrapper must be rebuilt after
`reshape` (its buckets refer to the old parameters); `reshape` unwraps `.module` / `._orig_mod` itself.

The options are `hf_dynasr.dmao.config.DMAOConfig`; the module surgery and optimizer-state transfer of a
reshape are in `hf_dynasr.dmao.reshape`; the architecture table and plots in `hf_dynasr.dmao.report`.
"""

from __future__ import annotations

import copy
import logging
import math

import torch
from torch import nn

from hf_dynasr.dmao.config import DMAOConfig
from hf_dynasr.dmao.report import architecture_table
from hf_dynasr.dmao.reshape import adjust_dropout, rebuild_module, remap_subnets, transfer_optimizer_state
from hf_dynasr.models.dynasr.components_dynasr import MODULE_NAMES, Component, ComponentIndex, component_params
from hf_dynasr.models.dynasr.modules_dynasr import MODULE_CLASSES

logger = logging.getLogger(__name__)


def _kind(comp: Component) -> str:
    """DMAO unit kind of a component ("ffn", "mhsa", "conv", "cgmlp")."""
    return MODULE_CLASSES[comp.module].dmao_kind


# --- helpers -----------------------------------------------------------------------------------------------
def unit_config(config):
    """A config copy whose component index is DMAO's units (component granularity, conv chunks)."""
    out = copy.copy(config)  # shallow: only scalar fields change; the spec is read, never written
    out.granularity, out.conv_granularity = "component", "chunk"
    return out


def _unwrap(model: nn.Module) -> nn.Module:
    """The DynaSRForCTC inside a DDP (`.module`) or torch.compile (`._orig_mod`) wrapper."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None:
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _spec_copy(spec) -> list[dict]:
    return [dict(block) for block in spec]


# --- the training component -----------------------------------------------------------------------------------------
class DMAO:
    """Utilisation scores per unit and grow-and-drop reallocation events (paper 3)."""

    def __init__(self, model: nn.Module, cfg: DMAOConfig, total_steps: int):
        self.cfg = cfg
        self.total_steps = total_steps
        self.event_steps = cfg.event_steps(total_steps)
        self.events_done = 0
        self.num_updates = 0
        self._track(_unwrap(model).config)
        if not any(_kind(c) in cfg.unit_kinds for c in self.index):
            present = sorted({_kind(c) for c in self.index})
            raise ValueError(f"unit_kinds={list(cfg.unit_kinds)} selects no unit of this model; it has {present}")
        # the EMA scores are CPU bookkeeping: `_measure` brings each step's values to the CPU, the plan reads
        # them as Python numbers, and `reduce_scores` moves them to the accelerator only for the all-reduce
        self._scores = torch.zeros(len(self.index), device="cpu")
        self._seen = torch.zeros(len(self.index), dtype=torch.bool, device="cpu")
        config = _unwrap(model).config
        if "conv" in cfg.unit_kinds and any(_kind(c) == "conv" for c in self.index) and \
                MODULE_CLASSES["conv"].norm_chunk(config, config.conv_channels) != config.conv_chunk_size:
            logger.info("DMAO: the conv modules are one component each, so their LayerNorm covers all channels "
                        "(conv_norm=auto, as paper 3's code normalises them): a conv chunk's growth or removal also "
                        "changes the other channels' normalisation, so growth is not function-preserving there; "
                        "set conv_granularity or conv_norm to chunk to normalise each chunk apart")
        if cfg.adjust_dropout:  # a model resumed after an event gets its reshaped modules' rates back
            adjust_dropout(_unwrap(model))

    def _track(self, config) -> None:
        self._spec = _spec_copy(config.architecture_spec)
        self._unit_cfg = unit_config(config)
        self.index = ComponentIndex(self._unit_cfg)

    def _check_model(self, model: nn.Module) -> None:
        if model.config.architecture_spec != self._spec:
            raise ValueError(
                "the model's architecture_spec differs from the one DMAO tracks; build DMAO on this model or "
                "load the DMAO state saved together with this checkpoint"
            )

    # --- scores ----------------------------------------------------------------------------------------
    def observe(self, model: nn.Module, step: int) -> None:
        """On update steps, fold the current per-unit utilisation into the EMA score. Call after
        backward and before optimizer.step()/zero_grad(): it reads the existing `.grad`."""
        if step % self.cfg.update_every:
            return
        model = _unwrap(model)
        self._check_model(model)
        with torch.no_grad():
            self._update(self._measure(model))

    def _measure(self, model: nn.Module) -> torch.Tensor:
        """Current utilisation per unit [num_units]; NaN where a module has no gradient this step."""
        values = []
        for b, layer in enumerate(model.dynasr.layers):
            for name in MODULE_NAMES:
                comps = self.index.by_module.get((b, name), [])
                if comps:
                    values.append(self._module_values(getattr(layer, name), len(comps)))
        return torch.cat(values) if values else torch.zeros(0, device="cpu")  # CPU bookkeeping, see __init__

    def _module_values(self, module: nn.Module, num_units: int) -> torch.Tensor:
        """Utilisation of each unit of a module: the mean over its representative slice (the module class's
        `importance_slice`) of |grad * weight|, |grad| or |weight|."""
        param, view = module.importance_slice()
        weight = view(param.detach())
        if self.cfg.score == "weight":
            value = weight.abs()
        elif param.grad is None:
            return torch.full((num_units,), math.nan, device="cpu")  # CPU bookkeeping, see __init__
        else:
            grad = view(param.grad.detach())
            value = grad.abs() if self.cfg.score == "grad" else (grad * weight).abs()
        return value.float().reshape(num_units, -1).mean(1).cpu()

    def _update(self, new: torch.Tensor) -> None:
        valid = ~torch.isnan(new)
        beta = float(self.cfg.beta)
        ema = torch.where(self._seen, beta * self._scores + (1 - beta) * new, new)
        self._scores = torch.where(valid, ema, self._scores)
        self._seen |= valid
        self.num_updates += 1

    def scores(self) -> torch.Tensor:
        """EMA utilisation per unit [num_units], in the order of `self.index` (a copy)."""
        return self._scores.clone()

    def reduce_scores(self, accelerator) -> None:
        """Average the scores over processes so every rank takes the same reallocation decision."""
        device = accelerator.device
        self._scores = accelerator.reduce(self._scores.to(device), reduction="mean").cpu()
        seen = accelerator.reduce(self._seen.float().to(device), reduction="sum").cpu()
        self._seen = seen > 0

    # --- events ----------------------------------------------------------------------------------------
    def reshape_due(self, step: int) -> bool:
        return self.events_done < len(self.event_steps) and step >= self.event_steps[self.events_done]

    def reshape(self, model: nn.Module, optimizer=None, step: int | None = None) -> dict:
        """Drop the lowest-scored units and duplicate the highest-scored ones (paper 3).

        Call at a step boundary (after optimizer.step() and zero_grad()). Rebuilds changed modules as new
        module objects (None when a module loses all units), updates `model.config.architecture_spec`, the
        model's component index and its subnet masks, and swaps the new parameters into the optimizer's
        param groups in place, carrying the state over (`optimizer` may be a torch optimizer or accelerate's
        AcceleratedOptimizer; None skips this). Returns a JSON-serialisable report."""
        model = _unwrap(model)
        self._check_model(model)
        old_index, old_spec = self.index, self._spec
        params_before = sum(p.numel() for p in model.parameters())
        plan = self._plan()
        sources = self._sources(plan["dropped"], plan["grown"])
        new_spec = self._new_spec(sources)
        swaps = self._rebuild(model, sources, step)
        if optimizer is not None:
            transfer_optimizer_state(optimizer, swaps, self.cfg.copy_state)
        self._apply_spec(model, new_spec, sources)
        if self.cfg.adjust_dropout:
            adjust_dropout(model)
        order = [c.id for b in range(len(new_spec)) for m in MODULE_NAMES for c in sources.get((b, m), [])]
        self._scores, self._seen = self._scores[order].clone(), self._seen[order].clone()
        self.events_done += 1
        report = self._report(plan, old_index, old_spec, new_spec, sources, params_before, model, step)
        logger.info("DMAO event %d at step %s: dropped %d units, grew %d; params %d -> %d (%+d: the budget is fixed "
                    "up to one unit, the added cost ends within %d of the removed)\n%s",
                    self.events_done, report["step"], len(plan["dropped"]), len(plan["grown"]), params_before,
                    report["params_after"], report["param_change"], report["budget_tolerance"],
                    architecture_table(new_spec, self._unit_cfg))
        return report

    def _plan(self) -> dict:
        """Which units to drop and which to duplicate (unit ids of the current index, in order)."""
        costs = [component_params(self._unit_cfg, c) for c in self.index]
        movable = [c.id for c in self.index if _kind(c) in self.cfg.unit_kinds]
        budget = sum(costs[i] for i in movable)
        target = self.cfg.rho * budget
        dropped, removed = self._drop(movable, costs, target)
        gone = set(dropped)
        ranked = sorted((i for i in movable if i not in gone), key=lambda i: (-float(self._scores[i]), i))
        grown, added = [], 0
        while added < target or added < removed:  # cycles through the ranking if rho is large
            i = ranked[len(grown) % len(ranked)]
            grown.append(i)
            added += costs[i]
        # the budget's tolerance: growth stops at the first unit that brings the added cost to >= the removed cost,
        # so the count changes by 0 <= added - removed < that unit's cost <= the costliest movable unit's
        return {"dropped": dropped, "grown": grown, "budget": budget, "removed": removed, "added": added,
                "tolerance": max(costs[i] for i in movable)}

    def _drop(self, movable, costs, target) -> tuple[list[int], int]:
        """Lowest-scored units until the removed cost reaches `target` (at least one movable unit stays)."""
        left = {key: len(comps) for key, comps in self.index.by_module.items()}
        dropped, removed = [], 0
        for i in sorted(movable, key=lambda i: (float(self._scores[i]), i)):
            if removed >= target or len(dropped) == len(movable) - 1:
                break
            comp = self.index[i]
            dropped.append(i)
            removed += costs[i]
            left[(comp.block, comp.module)] -= 1
            if left[(comp.block, comp.module)] == 0:  # the module vanishes with its shared parameters
                removed += MODULE_CLASSES[comp.module].shared_params(self._unit_cfg)
        return dropped, removed

    def _sources(self, dropped, grown) -> dict[tuple[int, str], list[Component]]:
        """Per module: the old unit each new unit comes from; kept units first, then copies."""
        gone = set(dropped)
        sources = {key: [c for c in comps if c.id not in gone] for key, comps in self.index.by_module.items()}
        for i in grown:
            comp = self.index[i]
            sources[(comp.block, comp.module)].append(comp)
        return sources

    def _new_spec(self, sources) -> list[dict]:
        spec = _spec_copy(self._spec)
        for (b, module), comps in sources.items():
            spec[b][module] = sum(c.stop - c.start for c in comps)
        return spec

    def _rebuild(self, model, sources, step) -> list[tuple]:
        """Replace every changed module; returns (old param, new param or None, slice) per old param."""
        # growth noise is drawn on the CPU (the same on every device and process) and moved to the weights
        gen = torch.Generator(device="cpu").manual_seed(self.cfg.seed + (step or 0))
        swaps = []
        for (b, name), comps in sources.items():
            if comps == self.index.by_module[(b, name)]:
                continue
            layer = model.dynasr.layers[b]
            new_module, module_swaps = rebuild_module(
                getattr(layer, name), name, comps, self._spec[b][name], model.config,
                self.cfg.init, float(self.cfg.noise_std), gen,
            )
            setattr(layer, name, new_module)
            swaps.extend(module_swaps)
        return swaps

    def _apply_spec(self, model, new_spec, sources) -> None:
        old_model_index = model.component_index
        model.config.architecture_spec = new_spec
        if model.dynasr.config is not model.config:
            model.dynasr.config.architecture_spec = _spec_copy(new_spec)
        model.config.check_spec()  # also normalises the spec's blocks to components_dynasr.BlockSpec
        if model.dynasr.config is not model.config:
            model.dynasr.config.check_spec()
        model.refresh_component_index()
        self._track(model.config)
        origin = {}  # new unit (block, module, unit start) -> old unit
        for (b, m), comps in sources.items():
            start = 0
            for comp in comps:
                origin[(b, m, start)] = comp
                start += comp.stop - comp.start
        remap_subnets(model, old_model_index, self.index, origin)

    def _report(self, plan, old_index, old_spec, new_spec, sources, params_before, model, step) -> dict:
        grown_as = []  # names of the copies in the new index (copies follow the kept units)
        for (b, m), comps in sources.items():
            copies = sum(1 for i in plan["grown"] if (old_index[i].block, old_index[i].module) == (b, m))
            grown_as += [c.name for c in self.index.by_module.get((b, m), [])[len(comps) - copies:]]
        return {
            "step": int(step) if step is not None else int(self.event_steps[self.events_done - 1]),
            "event": self.events_done,
            "before": old_spec,
            "after": _spec_copy(new_spec),
            "dropped": [old_index[i].name for i in plan["dropped"]],
            "grown": [old_index[i].name for i in plan["grown"]],
            "grown_as": grown_as,
            "sources": {f"b{b}.{m}": [c.name for c in comps] for (b, m), comps in sources.items()},
            "budget": int(plan["budget"]),
            "removed_cost": int(plan["removed"]),
            "added_cost": int(plan["added"]),
            "params_before": int(params_before),
            "params_after": int(sum(p.numel() for p in model.parameters())),
            "param_change": int(plan["added"] - plan["removed"]),
            "budget_tolerance": int(plan["tolerance"]),
        }

    # --- checkpointing ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "scores": self._scores.clone(),
            "seen": self._seen.clone(),
            "num_updates": self.num_updates,
            "events_done": self.events_done,
            "event_steps": list(self.event_steps),
            "spec": _spec_copy(self._spec),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["spec"] != self._spec:
            raise ValueError(
                "this DMAO state was saved for another architecture_spec; load it together with the model "
                "checkpoint saved at the same step"
            )
        if len(state["scores"]) != len(self.index):
            raise ValueError(f"state has {len(state['scores'])} scores, the model has {len(self.index)} units")
        if list(state["event_steps"]) != self.event_steps:
            logger.warning("DMAO event steps changed from %s to %s on resume", state["event_steps"], self.event_steps)
        self._scores = state["scores"].detach().float().cpu().clone()
        self._seen = state["seen"].detach().bool().cpu().clone()
        self.num_updates = int(state["num_updates"])
        self.events_done = int(state["events_done"])


__all__ = ["DMAO", "DMAOConfig", "unit_config"]
