"""DMAO grow-and-drop (methods.md A.4, paper 3): move encoder capacity to where it is used, in training.

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

Follows A.4: the units; the utilisation score (first-order Taylor `|grad * weight|`, mean over one
representative slice per unit; `grad` and `weight` magnitudes as the ablation's alternatives); the EMA
`s <- beta*s + (1-beta)*s_new` with beta = 0.1; drop the lowest-scored units until the removed cost reaches
rho*B (B = encoder budget, cost = parameters), then duplicate the highest-scored surviving units in their
own module until the added cost is >= rho*B and >= the removed cost; exact copies plus optional Gaussian
noise; a module left with 0 units is skipped; one event at 15% of training (LBS: sub-epoch 90 of 600).

Departs from A.4 (each on purpose):
- Scores use the gradients the training step already computed (after backward, before the optimizer
  step) instead of an extra backward pass; the first measurement of a unit initialises its score.
- The removed cost also counts the shared parameters (pre-LayerNorm, output bias) of a module that loses
  all its units, so the parameter count after an event is exact: budget <= after < budget + one unit.
- `init="function_preserving"` (Net2Net-style, not in the paper) splits the outgoing weights of a parent
  and its copies equally, so the output is unchanged at the moment of growth. With `init="copy"` (paper)
  the parent's contribution doubles.
- The optimizer state is carried over (the paper's handling is unknown): see `DMAO.reshape`.
- `rho` applies per event (the paper's multi-event ablation splits one fraction evenly: pass rho / n).
- `unit_kinds` restricts which units move; B is then the cost of those units only.
- cgMLP units (E-Branchformer) are scored on their value rows of the first linear layer (the paper does not
  say which slice; this mirrors the conv chunk's value rows of pointwise-conv1).
- Not implemented: the paper's "adjust_dropout" (dropout scaled by module size), OBD scores, random init
  of grown units.

Call `observe` on steps whose gradients are complete (the sync step of gradient accumulation) and, with an
fp16 GradScaler, after unscaling (e.g. after `accelerator.clip_grad_norm_`); bf16/fp32 need nothing.
Multi-process (DDP): gradients are already averaged when `observe` reads them, and `reduce_scores`
averages the scores anyway. Parameters are replaced by new tensors, so a DDP wrapper must be rebuilt after
`reshape` (its buckets refer to the old parameters); `reshape` unwraps `.module` / `._orig_mod` itself.

The module surgery and optimizer-state transfer of a reshape are in `hf_dynasr.dmao.reshape` (re-exported here).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from hf_dynasr.models.dynasr.components_dynasr import MODULE_NAMES, Component, ComponentIndex, component_params, module_shared_params
from hf_dynasr.dmao.reshape import rebuild_module, refresh_component_index, remap_subnets, transfer_optimizer_state

logger = logging.getLogger(__name__)

SCORES = ("taylor", "grad", "weight")
INITS = ("copy", "function_preserving")
UNIT_KINDS = ("ffn", "mhsa", "conv", "cgmlp")  # a kind the block type lacks simply has no units
_KIND = {"ffn1": "ffn", "ffn2": "ffn", "mhsa": "mhsa", "conv": "conv", "cgmlp": "cgmlp"}


# --- configuration -----------------------------------------------------------------------------------------
@dataclass
class DMAOConfig:
    """Hyper-parameters of DMAO (methods.md A.4).

    events: reallocation points as fractions of the total training steps, each in (0, 1).
    rho: replaced fraction of the budget per event, in (0, 1).
    beta: EMA weight of the old score: `s <- beta*s + (1-beta)*s_new` (paper 0.1).
    score: "taylor" (|grad * weight|, paper default), "grad" (|grad|) or "weight" (|weight|).
    update_every: steps between score updates (paper 1000).
    init: growth init, "copy" (paper) or "function_preserving".
    noise_std: std of Gaussian noise added to grown copies (paper default 0).
    unit_kinds: kinds of units that may be dropped or grown, from ("ffn", "mhsa", "conv", "cgmlp").
    seed: seed of the growth noise (same on every rank, so all ranks build the same weights).
    """

    events: list[float] = field(default_factory=lambda: [0.15])
    rho: float = 0.15
    beta: float = 0.1
    score: str = "taylor"
    update_every: int = 10
    init: str = "copy"
    noise_std: float = 0.0
    unit_kinds: tuple = UNIT_KINDS
    seed: int = 0

    def __post_init__(self):
        self.events = sorted(float(e) for e in self.events)
        self.unit_kinds = tuple(self.unit_kinds)
        if not 0.0 < float(self.rho) < 1.0:
            raise ValueError(f"rho must be in (0, 1) (the replaced fraction of the budget); got {self.rho!r}")
        if not self.events:
            raise ValueError("events is empty; give at least one fraction of training in (0, 1), e.g. [0.15]")
        bad = [e for e in self.events if not 0.0 < e < 1.0]
        if bad:
            raise ValueError(f"events must be fractions of training in (0, 1); got {bad}")
        if not 0.0 <= float(self.beta) <= 1.0:
            raise ValueError(f"beta must be in [0, 1]; got {self.beta!r}")
        _choice("score", self.score, SCORES)
        _choice("init", self.init, INITS)
        for kind in self.unit_kinds:
            _choice("unit_kinds entry", kind, UNIT_KINDS)
        if not self.unit_kinds:
            raise ValueError(f"unit_kinds is empty; choose from {', '.join(UNIT_KINDS)}")
        if not isinstance(self.update_every, int) or self.update_every < 1:
            raise ValueError(f"update_every must be a positive integer; got {self.update_every!r}")
        if float(self.noise_std) < 0:
            raise ValueError(f"noise_std must be >= 0; got {self.noise_std!r}")

    def event_steps(self, total_steps: int) -> list[int]:
        """Steps of the events; each must fall strictly inside training and they must differ."""
        if not isinstance(total_steps, int) or total_steps < 2:
            raise ValueError(f"total_steps must be an integer >= 2; got {total_steps!r}")
        steps = [int(e * total_steps) for e in self.events]
        late = [(e, s) for e, s in zip(self.events, steps) if not 1 <= s < total_steps]
        if late:
            raise ValueError(
                f"events {[e for e, _ in late]} fall at steps {[s for _, s in late]}, outside training "
                f"(steps 1..{total_steps - 1} of total_steps={total_steps})"
            )
        if len(set(steps)) != len(steps):
            raise ValueError(f"events {self.events} collapse onto the same steps {steps}; space them further apart")
        return steps


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed: {', '.join(map(str, allowed))}")


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


def _representative(module: nn.Module, name: str):
    """(parameter, view) whose rows, grouped per unit, are the unit's representative slice (A.4)."""
    if name == "mhsa":  # a head's columns of the output projection
        return module.out_proj.weight, lambda t: t.t()
    if name == "conv":  # a chunk's value rows of the first pointwise conv (GLU gate rows excluded)
        channels = module.depthwise.out_channels
        return module.pointwise_in.weight, lambda t: t[:channels]
    if name == "cgmlp":  # a chunk's value rows of the first linear layer (gate rows excluded), as for conv
        units = module.depthwise.out_channels
        return module.linear_in.weight, lambda t: t[:units]
    return module.linear_in.weight, lambda t: t  # an FFN chunk's rows of the first linear layer


def architecture_table(spec, config=None) -> str:
    """Module sizes per block, one row per module (for logs and records). With `config`, sizes are given in
    DMAO units (FFN chunks, heads, conv / cgMLP chunks); without, in hidden units / heads / channels."""
    step = {m: 1 for m in MODULE_NAMES}
    if config is not None:
        step.update(ffn1=config.ffn_chunk_size, ffn2=config.ffn_chunk_size, conv=config.conv_chunk_size,
                    cgmlp=config.cgmlp_chunk_size)
    header = ["module"] + [f"b{b}" for b in range(len(spec))] + ["total"]
    rows = [header]
    for module in (m for m in MODULE_NAMES if spec and m in spec[0]):  # the spec's block type
        values = [block[module] // step[module] for block in spec]
        rows.append([module] + [str(v) for v in values] + [str(sum(values))])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)


# --- the training component -----------------------------------------------------------------------------------------
class DMAO:
    """Utilisation scores per unit and grow-and-drop reallocation events (methods.md A.4)."""

    def __init__(self, model: nn.Module, cfg: DMAOConfig, total_steps: int):
        self.cfg = cfg
        self.total_steps = total_steps
        self.event_steps = cfg.event_steps(total_steps)
        self.events_done = 0
        self.num_updates = 0
        self._track(_unwrap(model).config)
        if not any(_KIND[c.module] in cfg.unit_kinds for c in self.index):
            present = sorted({_KIND[c.module] for c in self.index})
            raise ValueError(f"unit_kinds={list(cfg.unit_kinds)} selects no unit of this model; it has {present}")
        self._scores = torch.zeros(len(self.index))
        self._seen = torch.zeros(len(self.index), dtype=torch.bool)

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
                    values.append(self._module_values(getattr(layer, name), name, len(comps)))
        return torch.cat(values) if values else torch.zeros(0)

    def _module_values(self, module: nn.Module, name: str, num_units: int) -> torch.Tensor:
        param, view = _representative(module, name)
        weight = view(param.detach())
        if self.cfg.score == "weight":
            value = weight.abs()
        elif param.grad is None:
            return torch.full((num_units,), math.nan)
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
        """Drop the lowest-scored units and duplicate the highest-scored ones (methods.md A.4).

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
            transfer_optimizer_state(optimizer, swaps)
        self._apply_spec(model, new_spec, sources)
        order = [c.id for b in range(len(new_spec)) for m in MODULE_NAMES for c in sources.get((b, m), [])]
        self._scores, self._seen = self._scores[order].clone(), self._seen[order].clone()
        self.events_done += 1
        report = self._report(plan, old_index, old_spec, new_spec, sources, params_before, model, step)
        logger.info("DMAO event %d at step %s: dropped %d units, grew %d; params %d -> %d\n%s",
                    self.events_done, report["step"], len(plan["dropped"]), len(plan["grown"]),
                    params_before, report["params_after"], architecture_table(new_spec, self._unit_cfg))
        return report

    def _plan(self) -> dict:
        """Which units to drop and which to duplicate (unit ids of the current index, in order)."""
        costs = [component_params(self._unit_cfg, c) for c in self.index]
        movable = [c.id for c in self.index if _KIND[c.module] in self.cfg.unit_kinds]
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
        return {"dropped": dropped, "grown": grown, "budget": budget, "removed": removed, "added": added}

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
                removed += module_shared_params(self._unit_cfg, comp.module)
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
        gen = torch.Generator().manual_seed(self.cfg.seed + (step or 0))
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
        model.config._validate_spec()  # also normalises the spec's blocks to components.BlockSpec
        if model.dynasr.config is not model.config:
            model.dynasr.config._validate_spec()
        refresh_component_index(model)
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


__all__ = ["DMAO", "DMAOConfig", "architecture_table", "rebuild_module", "transfer_optimizer_state",
           "refresh_component_index", "remap_subnets", "unit_config"]
