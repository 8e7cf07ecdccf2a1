"""Named subnets of DynaSRForCTC: add, switch and extract sizes, and the routes and slice plan they follow.

A subnet is a binary mask over the component index, stored in `config.subnets[name]["components"]`.
`set_subnet` switches the size in place (modules with no component left are skipped); `extract_subnet`
slices the weights into a standalone, physically smaller model whose config carries the subnet's
architecture spec and whose only CTC head (`lm_head`) is that size's head.

The whole network (the supernet with no mask) has one name, `FULL`; the public API also accepts `None` for
it, and a size whose mask keeps every component runs as the whole network.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from .components_dynasr import MODULE_NAMES, ComponentIndex
from .costs_dynasr import component_costs, count_parameters, meta_model, measure_flops
from .modules_dynasr import MODULE_CLASSES, ModuleRoute
from .processor_files_dynasr import ProcessorFilesMixin

logger = logging.getLogger(__name__)

#: The name of the whole network described by the config; no subnet may take it.
FULL = "full"


class SubnetMixin(ProcessorFilesMixin):
    """Mixed into DynaSRForCTC; relies on `self.config`, `self.dynasr`, `self.lm_head`, `self.subnet_heads`.
    `save_pretrained` also copies the processor files of the checkpoint the model came from
    (`processor_files_dynasr`), so an extracted size saves as a folder the ASR pipeline loads."""

    # --- set-up -----------------------------------------------------------------------------------
    def init_subnets(self) -> None:
        """Build the component index and one CTC head per named size smaller than the whole network."""
        self.refresh_component_index()
        for name, entry in sorted(self.config.subnets.items()):  # heads in name order, see _sort_heads
            if name == FULL:
                raise ValueError(f"'{FULL}' is reserved for the whole network; rename that subnet")
            if not self._index.covers_all(entry.get("components")):
                self.subnet_heads[name] = nn.Linear(self.config.hidden_size, self.config.vocab_size)
        self._check_subnet_name(self.config.active_subnet)

    def refresh_component_index(self) -> None:
        """Rebuild what is derived from `config.architecture_spec`: the component index and the route and
        cost caches. Call it after changing the spec in place (DMAO does)."""
        self._index = ComponentIndex(self.config)
        # routes hold index tensors on the device of the weights they select from: one entry per (size, device)
        self._route_cache: dict[tuple[str | None, torch.device], list] = {}
        self._costs = None

    @property
    def component_index(self) -> ComponentIndex:
        """The components of this model (ids = positions), at the config's granularity."""
        return self._index

    def component_costs(self):
        """Per-component parameters and FLOPs (cached); see `costs_dynasr.component_costs`."""
        if self._costs is None:
            self._costs = component_costs(type(self), self.config, self._index)
        return self._costs

    @classmethod
    def count_parameters(cls, config) -> int:
        """Exact parameters of the one-head model of this class with `config` (a size's deployable model)."""
        return count_parameters(cls, config)

    @classmethod
    def measure_flops(cls, config) -> int:
        """Forward FLOPs of the one-head model of this class with `config` at its reference duration."""
        return measure_flops(cls, config)

    @property
    def available_subnets(self) -> list[str]:
        return [*self.config.subnets, FULL]

    def _check_subnet_name(self, name: str | None) -> None:
        if name is not None and name != FULL and name not in self.config.subnets:
            raise ValueError(f"unknown subnet '{name}'; available: {', '.join(self.available_subnets)}")

    # --- public API -------------------------------------------------------------------------------
    def add_subnet(self, name: str, components=None, criterion: str = "manual", target: float | None = None):
        """Record a named subnet (creating its CTC head) and fill in its measured size.

        `components`: component ids or names (see `component_index`), or `None` while the selection is
        still being learned (training stage 1; the head exists, the mask does not yet)."""
        if name == FULL or hasattr(nn.ModuleDict, name):
            raise ValueError(f"subnet name '{name}' is reserved (the whole network or a ModuleDict attribute); "
                             "choose another, e.g. '20M' or 'small'")
        entry = {"criterion": criterion, "target": target, "components": None}
        if components is not None:
            ids = self._index.ids(components)
            if not ids:
                raise ValueError(f"subnet '{name}' keeps no component; keep at least one")
            sub_config = subnet_config(self.config, self._index, name, ids)
            entry.update(components=ids, num_parameters=self.count_parameters(sub_config),
                         flops=self.measure_flops(sub_config))
        trial = copy.deepcopy(self.config)
        trial.subnets = {**self.config.subnets, name: entry}
        trial.check_consistency()  # raises before anything changes
        self.config.subnets = trial.subnets
        if not self._index.covers_all(entry["components"]) and name not in self.subnet_heads:
            param = self.lm_head.weight
            self.subnet_heads[name] = nn.Linear(param.shape[1], param.shape[0], device=param.device, dtype=param.dtype)
            self.subnet_heads[name].load_state_dict(self.lm_head.state_dict())  # start from the full head
            self._sort_heads()
        self._route_cache = {key: routes for key, routes in self._route_cache.items() if key[0] != name}
        return entry

    def _sort_heads(self) -> None:
        """Keep the heads in name order, whatever order sizes were added in: optimizer states are saved and
        restored by parameter position, and two heads of equal shape must never swap their moments."""
        self.subnet_heads = nn.ModuleDict(sorted(self.subnet_heads.items()))

    def set_subnet(self, name: str | None) -> None:
        """Switch the active size in place (`None` or `FULL` = whole network)."""
        self._check_subnet_name(name)
        if name not in (None, FULL) and self.config.subnets[name].get("components") is None:
            raise ValueError(f"subnet '{name}' has no selected components yet (selection still in training)")
        self.config.active_subnet = None if name == FULL else name

    def subnet_mask(self, name: str | None, device: torch.device | str | None = None) -> torch.Tensor:
        """Binary mask [num_components] of a size, on `device` (default: the device of the weights)."""
        mask = torch.zeros(len(self._index), dtype=torch.bool, device=device or self.lm_head.weight.device)
        ids = self.subnet_ids(name)
        mask[ids if ids is not None else slice(None)] = True
        return mask

    def subnet_ids(self, name: str | None) -> list[int] | None:
        """The sorted component ids a size keeps, or None when it runs as the whole network (`None`, `FULL`
        or a mask that keeps every component). Raises while the size's selection is still being learned."""
        if name is None or name == FULL:
            return None
        ids = self.config.subnets[name].get("components")
        if ids is None:
            raise ValueError(f"subnet '{name}' has no selected components yet (selection still in training)")
        return None if self._index.covers_all(ids) else sorted(ids)

    def extract_subnet(self, name: str | None):
        """A standalone model of size `name`: sliced weights, the subnet's spec, one CTC head. `FULL` (or `None`)
        gives the whole network alone: every weight, `lm_head`, no named size."""
        self._check_subnet_name(name)
        ids = self.subnet_ids(name)
        if ids is None:
            ids = list(range(len(self._index)))
        if name in (None, FULL):
            sub_config = copy.deepcopy(self.config)
            sub_config.subnets, sub_config.active_subnet = {}, None
        else:
            sub_config = subnet_config(self.config, self._index, name, ids)
        state = self.state_dict()
        plan = subnet_slice_plan(type(self), self.config, self._index, ids, head=self.head_key(name))
        sliced = {new: _take(state[src], slices) for new, (src, slices) in plan.items()}
        with torch.device("meta"):
            model = type(self)(sub_config)
        model.load_state_dict(sliced, strict=True, assign=True)
        model.train(self.training)
        return model

    # --- used by forward --------------------------------------------------------------------------
    def resolve_subnet(self, subnet: str | None) -> str | None:
        """The size a forward call runs: `subnet`, else the active one; None for the whole network."""
        name = self.config.active_subnet if subnet is None else subnet
        self._check_subnet_name(name)
        return None if name == FULL else name

    def subnet_head(self, name: str | None) -> nn.Linear:
        """The CTC output layer of a size (`lm_head` for the whole network and sizes that cover it)."""
        return self.subnet_heads[name] if name in self.subnet_heads else self.lm_head

    def head_key(self, name: str | None) -> str:
        """State-dict prefix of a size's CTC output layer."""
        return f"subnet_heads.{name}" if name in self.subnet_heads else "lm_head"

    def subnet_routes(self, name: str | None, gates: torch.Tensor | None):
        """Per block, per module: the kept units (hard mask of `name`) and soft gates from `gates`; the unit
        indices live on the device of the weights they select from."""
        ids = None
        if name is not None and name in self.config.subnets and self.config.subnets[name].get("components") is None:
            if gates is None:
                raise ValueError(f"subnet '{name}' has no selected components yet; pass component_gates")
        else:
            ids = self.subnet_ids(name)
        device = self.lm_head.weight.device
        if gates is None:
            if ids is None:
                return None
            if (name, device) not in self._route_cache:
                self._route_cache[(name, device)] = build_routes(self._index, self.config, ids, None, device)
            return self._route_cache[(name, device)]
        if gates.shape[-1] != len(self._index) or gates.dim() not in (1, 2):
            raise ValueError(
                f"component_gates must have shape [{len(self._index)}] or [batch, {len(self._index)}]; "
                f"got {tuple(gates.shape)}"
            )
        return build_routes(self._index, self.config, ids, gates, device)


def subnet_config(config, index: ComponentIndex, name: str, ids: list[int]):
    """Config of the standalone model of size `name` that keeps `ids` of `index` (the component index of
    `config`): its spec, and one subnet `name` covering everything, active."""
    spec = index.spec_for(config, ids)
    if not any(size for block in spec for size in block.values()):
        logger.warning("subnet '%s' keeps no encoder module; only frontend and head remain", name)
    entry = copy.deepcopy(config.subnets.get(name, {}))
    sub = copy.deepcopy(config)
    sub.architecture_spec, sub.subnets, sub.active_subnet = spec, {}, None
    sub.check_consistency()
    entry.update(components=list(range(len(ComponentIndex(sub)))), supernet_components=list(ids))
    sub.subnets = {name: entry}
    sub.active_subnet = name
    return sub


def build_routes(index: ComponentIndex, config, keep_ids, gates, device: torch.device | str | None = None):
    """Turn a component mask (`keep_ids`, None = all) and soft gates ([N] or [B, N]) into ModuleRoutes whose
    kept-unit indices live on `device` (the weights'; default: the gates' device, else the CPU)."""
    device = device if device is not None else (gates.device if gates is not None else None)
    keep = None if keep_ids is None else set(keep_ids)
    routes = []
    for b in range(len(config.architecture_spec)):
        block_routes = {}
        for module in MODULE_NAMES:
            comps = index.by_module.get((b, module), [])
            kept = comps if keep is None else [c for c in comps if c.id in keep]
            block_routes[module] = _module_route(comps, kept, gates, device)
        routes.append(block_routes)
    return routes


def _module_route(comps, kept, gates, device) -> ModuleRoute:
    """The route of one module: its kept units (None = all) on `device` and the gates of its kept components."""
    if not kept:
        return ModuleRoute(skip=True)
    route = ModuleRoute()
    if len(kept) < len(comps):
        units = [u for c in kept for u in range(c.start, c.stop)]
        route.keep = torch.tensor(units, dtype=torch.long, device=device)
    if gates is not None:
        ids = torch.tensor([c.id for c in kept], dtype=torch.long, device=gates.device)
        picked = gates.index_select(-1, ids)  # [K] or [B, K]
        if kept[0].kind == "module":
            route.out_gate = picked[..., 0]
        else:
            route.unit_gate = picked.repeat_interleave(kept[0].stop - kept[0].start, dim=-1)
    return route


def subnet_slice_plan(model_class, config, index: ComponentIndex, keep_ids, head: str = "lm_head") -> dict:
    """For each parameter of the extracted model: (source key, [(dim, indices), ...]), for a supernet of
    `model_class` with `config`. Extraction and lazy loading both follow this plan, so they cannot disagree."""
    kept = index.kept_units(keep_ids)
    module_params = {}
    for b, block in enumerate(config.architecture_spec):
        for module in MODULE_NAMES:
            size = block[module]
            if size == 0:
                continue
            units = kept.get((b, module))
            # CPU indices: the plan is applied to state dicts on any device (`_take` moves them) and to
            # safetensors files read on the CPU (lazy loading)
            module_params[f"dynasr.layers.{b}.{module}."] = (units, MODULE_CLASSES[module].slice_plan(
                torch.tensor(units or [], dtype=torch.long, device="cpu"), size, config))
    plan = {}
    for key in meta_model(model_class, config).state_dict():
        if key.startswith(("lm_head.", "subnet_heads.")):
            continue
        prefix = next((p for p in module_params if key.startswith(p)), None)
        if prefix is None:
            plan[key] = (key, [])
            continue
        units, slices = module_params[prefix]
        if not units:
            continue  # module removed
        local = key[len(prefix):]
        plan[key] = (key, [slices[local][:2]] if local in slices else [])
    for suffix in ("weight", "bias"):
        plan[f"lm_head.{suffix}"] = (f"{head}.{suffix}", [])
    return plan


def _take(tensor: torch.Tensor, slices) -> torch.Tensor:
    for dim, index in slices:
        tensor = tensor.index_select(dim, index.to(tensor.device))
    return tensor.clone() if not slices else tensor
