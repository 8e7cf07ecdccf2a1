"""Module surgery and bookkeeping of a DMAO reshape (`hf_dynasr.dmao.grow_and_drop`): rebuilt modules, optimizer
state.

`rebuild_module` builds a module holding chosen units of an old one (kept units, then copies, with the
"copy", "function_preserving" or "random_split" init and optional growth noise); `transfer_optimizer_state`
swaps the new parameters into the optimizer and slices their state like the weights; `refresh_component_index` and
`remap_subnets` bring the model's component index and its subnet masks in line with the new spec.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from hf_dynasr.models.dynasr.components_dynasr import Component, ComponentIndex
from hf_dynasr.models.dynasr.modules_dynasr import MODULE_CLASSES

logger = logging.getLogger("hf_dynasr.dmao.grow_and_drop")  # the name these log lines had before the split


# --- module surgery ----------------------------------------------------------------------------------------
def rebuild_module(old: nn.Module, name: str, comps: list[Component], old_size: int, config,
                   init: str = "copy", noise_std: float = 0.0, gen: torch.Generator | None = None):
    """A new module holding the units `comps` of `old` (repeats = copies, after the kept units), or None.

    Returns (new module, [(old param, new param or None, (dim, indices, copy indices or None) or None)]): the
    indices select the new parameter's slices from the old one, the copy indices are the new positions that
    belong to grown copies (for the "fresh" optimizer state of `DMAOConfig.copy_state`)."""
    if not comps:
        return None, [(p, None, None) for p in old.parameters()]
    device = next(old.parameters()).device  # the indices live with the weights they select from
    units = torch.tensor([u for c in comps for u in range(c.start, c.stop)], dtype=torch.long, device=device)
    new_size = units.numel()
    plan = MODULE_CLASSES[name].slice_plan(units, old_size, config)
    copy_plan = _copy_positions(name, comps, new_size, config, device)
    state, slices = {}, {}
    for pname, param in old.named_parameters():
        entry = plan.get(pname)
        slices[pname] = None if entry is None else (*entry[:2], copy_plan.get(pname))
        state[pname] = _slice_param(param.detach(), entry, init, noise_std, copy_plan.get(pname), gen)
    with torch.device("meta"):
        new = MODULE_CLASSES[name](config, new_size)
    new.load_state_dict(state, strict=True, assign=True)
    new.train(old.training)
    new_params = dict(new.named_parameters())
    swaps = []
    for pname, param in old.named_parameters():
        new_params[pname].requires_grad_(param.requires_grad)
        swaps.append((param, new_params[pname], slices[pname]))
    return new, swaps


def _copy_positions(name, comps, new_size, config, device) -> dict:
    """Per parameter: indices (in the new module) that belong to copies, for the growth noise."""
    seen, positions, start = set(), [], 0
    for comp in comps:
        width = comp.stop - comp.start
        if comp.id in seen:
            positions.extend(range(start, start + width))
        seen.add(comp.id)
        start += width
    if not positions:
        return {}
    plan = MODULE_CLASSES[name].slice_plan(torch.tensor(positions, dtype=torch.long, device=device), new_size, config)
    return {pname: entry[1] for pname, entry in plan.items()}


def _slice_param(tensor, entry, init, noise_std, copy_idx, gen) -> torch.Tensor:
    if entry is None:
        return tensor.clone()
    dim, idx, outgoing = entry
    idx = idx.to(tensor.device)
    out = tensor.index_select(dim, idx)
    if outgoing and init in ("function_preserving", "random_split"):  # split the parent's output among its copies
        out = out * _split_shares(idx, tensor.shape[dim], init, gen).to(out.device, out.dtype).view(
            [-1 if d == dim else 1 for d in range(out.dim())])
    if noise_std > 0 and copy_idx is not None:
        shape = list(out.shape)
        shape[dim] = copy_idx.numel()
        noise = torch.randn(shape, generator=gen, device="cpu") * noise_std  # CPU generator: see DMAO._rebuild
        out.index_add_(dim, copy_idx.to(out.device), noise.to(out.device, out.dtype))
    return out


def _split_shares(idx: torch.Tensor, old_width: int, init: str, gen) -> torch.Tensor:
    """Per new outgoing position, its share of the old position it copies; the shares of one old position sum to
    1, so the module's output is unchanged. "function_preserving": equal shares (Net2Net); "random_split": random
    shares (uniform in [0.5, 1.5] before normalising), so a copy's incoming gradient differs from its parent's and
    the two diverge even without dropout (drawn on the CPU generator: the same on every rank)."""
    idx = idx.cpu()
    if init == "function_preserving":
        weights = torch.ones(idx.numel())
    else:
        weights = 0.5 + torch.rand(idx.numel(), generator=gen, device="cpu")
    sums = torch.zeros(old_width).index_add_(0, idx, weights)
    return weights / sums[idx]


# --- optimizer and model bookkeeping -----------------------------------------------------------------------
def transfer_optimizer_state(optimizer, swaps, copy_state: str = "parent") -> None:
    """Swap new parameters into the param groups in place and carry their state over.

    Every state tensor shaped like the old parameter (AdamW exp_avg / exp_avg_sq, SGD momentum) is sliced
    exactly like the weight: kept units keep their moments, copies get their parent's (`copy_state="parent"`)
    or zeros (`"fresh"`); other entries (the `step` count) are cloned. Parameters of removed modules leave the
    groups and the state. The group dicts stay the same objects, so an LR scheduler continues unchanged."""
    opt = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps a torch one
    by_id = {id(old): (old, new, sl) for old, new, sl in swaps}
    for group in opt.param_groups:
        params, keep = [], []
        for pos, param in enumerate(group["params"]):
            old, new, sl = by_id.get(id(param), (param, param, None))
            if new is not param:
                state = opt.state.pop(old, None)
                if new is not None and state:
                    opt.state[new] = {k: _slice_state(v, old, sl, copy_state) for k, v in state.items()}
            if new is not None:
                params.append(new)
                keep.append(pos)
        if "param_names" in group:  # optimizers built from named_parameters() keep names aligned
            group["param_names"][:] = [group["param_names"][pos] for pos in keep]
        group["params"][:] = params


def _slice_state(value, param, sl, copy_state: str = "parent"):
    if not torch.is_tensor(value):
        return copy.deepcopy(value)
    if sl is None or value.shape != param.shape:
        return value.clone()
    dim, idx, copies = sl
    out = value.index_select(dim, idx.to(value.device))
    if copy_state == "fresh" and copies is not None:
        out.index_fill_(dim, copies.to(out.device), 0.0)
    return out


#: the highest dropout rate `adjust_dropout` sets (a module grown to many times its nominal size)
MAX_ADJUSTED_DROPOUT = 0.9


def adjust_dropout(model) -> None:
    """Paper 3's "adjust_dropout" (its published TED-LIUM E-Branchformer config): every dropout of each FFN and
    self-attention module is the config's rate times the module's size over its nominal size (capped at
    `MAX_ADJUSTED_DROPOUT`), so a grown module is regularised more and a shrunken one less. The rates follow from
    the config and the architecture spec only, so a resumed run sets the same ones again."""
    config = model.config
    for layer, block in zip(model.dynasr.layers, config.architecture_spec):
        for name in ("ffn1", "mhsa", "ffn2"):
            module = getattr(layer, name, None)
            if module is None:
                continue
            factor = block[name] / MODULE_CLASSES[name].nominal_size(config)
            module.dropout.p = min(config.hidden_dropout * factor, MAX_ADJUSTED_DROPOUT)
            if name == "mhsa":
                module.attention_dropout = min(config.attention_dropout * factor, MAX_ADJUSTED_DROPOUT)
            else:
                module.activation_dropout.p = min(config.activation_dropout * factor, MAX_ADJUSTED_DROPOUT)


def refresh_component_index(model) -> None:
    """Rebuild what the model derives from its spec (component index, route and cost caches); the same as
    `model.refresh_component_index()`, kept as part of the `hf_dynasr.dmao` API."""
    model.refresh_component_index()


def remap_subnets(model, old_index: ComponentIndex, new_units: ComponentIndex, origin: dict) -> None:
    """Carry `config.subnets` masks over a reshape: a kept unit keeps its membership, a copy inherits its
    parent's, a dropped unit leaves every mask. At coarser granularity, a component of the new index is in
    a mask if all its units come from components in that mask. Sizes are re-measured; a mask left empty is
    reset to `components=None` (selection must be learned again), with a warning."""
    for name, entry in list(model.config.subnets.items()):
        ids = entry.get("components")
        if ids is None:
            continue
        keep = set(ids)
        new_ids = [comp.id for comp in model.component_index
                   if all(_owner(old_index, origin[(u.block, u.module, u.start)]) in keep
                          for u in _units_in(new_units, comp))]
        if not new_ids:
            logger.warning("DMAO: subnet '%s' lost all its components; its mask is reset to None", name)
            model.config.subnets[name] = {**entry, "components": None}
            continue
        fresh = model.add_subnet(name, new_ids, criterion=entry.get("criterion") or "manual",
                                 target=entry.get("target"))
        model.config.subnets[name] = {**entry, **fresh}
        logger.info("DMAO: remapped subnet '%s' mask: %d -> %d components (%d -> %d params)", name,
                    len(ids), len(new_ids), entry.get("num_parameters", -1), fresh["num_parameters"])


def _units_in(units: ComponentIndex, comp: Component) -> list[Component]:
    return [u for u in units.by_module[(comp.block, comp.module)] if comp.start <= u.start < comp.stop]


def _owner(index: ComponentIndex, unit: Component) -> int:
    return next(c.id for c in index.by_module[(unit.block, unit.module)] if c.start <= unit.start < c.stop)
