"""Named subnets of DynaSRForCTC: add, switch, extract, and load one size from a supernet checkpoint.

A subnet is a binary mask over the component index, stored in `config.subnets[name]["components"]`.
`set_subnet` switches the size in place (modules with no component left are skipped); `extract_subnet`
slices the weights into a standalone, physically smaller model whose config carries the subnet's
architecture spec and whose only CTC head (`lm_head`) is that size's head.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from .components_dynasr import MODULE_NAMES, ComponentIndex
from .modules_dynasr import MODULE_CLASSES, ModuleRoute

logger = logging.getLogger(__name__)

FULL = "full"  # reserved name: the whole network described by the config


class SubnetMixin:
    """Mixed into DynaSRForCTC; relies on `self.config`, `self.dynasr`, `self.lm_head`, `self.subnet_heads`."""

    # --- set-up -----------------------------------------------------------------------------------
    def _init_subnets(self) -> None:
        self._index = ComponentIndex(self.config)
        self._route_cache: dict[str, list] = {}
        self._costs = None
        for name, entry in sorted(self.config.subnets.items()):  # heads in name order, see _sort_heads
            if name == FULL:
                raise ValueError(f"'{FULL}' is reserved for the whole network; rename that subnet")
            if not self._covers_all(entry.get("components")):
                self.subnet_heads[name] = nn.Linear(self.config.hidden_size, self.config.vocab_size)
        self._check_subnet_name(self.config.active_subnet)

    @property
    def component_index(self) -> ComponentIndex:
        """The components of this model (ids = positions), at the config's granularity."""
        return self._index

    def component_costs(self):
        """Per-component parameters and FLOPs (cached); see `costs_dynasr.component_costs`."""
        from .costs_dynasr import component_costs

        if self._costs is None:
            self._costs = component_costs(self.config, self._index)
        return self._costs

    @property
    def available_subnets(self) -> list[str]:
        return [*self.config.subnets, FULL]

    def _check_subnet_name(self, name: str | None) -> None:
        if name is not None and name != FULL and name not in self.config.subnets:
            raise ValueError(f"unknown subnet '{name}'; available: {', '.join(self.available_subnets)}")

    def _covers_all(self, components) -> bool:
        return components is not None and len(set(components)) == len(self._index)

    # --- public API -------------------------------------------------------------------------------
    def add_subnet(self, name: str, components=None, criterion: str = "manual", target: float | None = None):
        """Record a named subnet (creating its CTC head) and fill in its measured size.

        `components`: component ids or names (see `component_index`), or `None` while the selection is
        still being learned (training stage 1; the head exists, the mask does not yet)."""
        from .costs_dynasr import count_parameters, measure_flops

        if name == FULL or hasattr(nn.ModuleDict, name):
            raise ValueError(f"subnet name '{name}' is reserved (the whole network or a ModuleDict attribute); "
                             "choose another, e.g. '20M' or 'small'")
        entry = {"criterion": criterion, "target": target, "components": None}
        if components is not None:
            ids = self._index.ids(components)
            if not ids:
                raise ValueError(f"subnet '{name}' keeps no component; keep at least one")
            sub_config = self._subnet_config(name, ids)
            entry.update(components=ids, num_parameters=count_parameters(sub_config), flops=measure_flops(sub_config))
        trial = copy.deepcopy(self.config)
        trial.subnets = {**self.config.subnets, name: entry}
        trial._validate()  # raises before anything changes
        self.config.subnets = trial.subnets
        if not self._covers_all(entry["components"]) and name not in self.subnet_heads:
            param = self.lm_head.weight
            self.subnet_heads[name] = nn.Linear(param.shape[1], param.shape[0], device=param.device, dtype=param.dtype)
            self.subnet_heads[name].load_state_dict(self.lm_head.state_dict())  # start from the full head
            self._sort_heads()
        self._route_cache.pop(name, None)
        return entry

    def _sort_heads(self) -> None:
        """Keep the heads in name order, whatever order sizes were added in: optimizer states are saved and
        restored by parameter position, and two heads of equal shape must never swap their moments."""
        self.subnet_heads = nn.ModuleDict(sorted(self.subnet_heads.items()))

    def set_subnet(self, name: str | None) -> None:
        """Switch the active size in place (`None` or "full" = whole network)."""
        self._check_subnet_name(name)
        if name not in (None, FULL) and self.config.subnets[name].get("components") is None:
            raise ValueError(f"subnet '{name}' has no selected components yet (selection still in training)")
        self.config.active_subnet = None if name == FULL else name

    def subnet_mask(self, name: str | None) -> torch.Tensor:
        """Binary mask [num_components] of a size."""
        mask = torch.zeros(len(self._index), dtype=torch.bool)
        ids = self._subnet_ids(name)
        mask[ids if ids is not None else slice(None)] = True
        return mask

    def extract_subnet(self, name: str):
        """A standalone model of size `name`: sliced weights, the subnet's spec, one CTC head."""
        self._check_subnet_name(name)
        ids = self._subnet_ids(name)
        if ids is None:
            ids = list(range(len(self._index)))
        sub_config = self._subnet_config(name, ids)
        state = self.state_dict()
        plan = subnet_slice_plan(self.config, self._index, ids, head=self._head_key(name))
        sliced = {new: _take(state[src], slices) for new, (src, slices) in plan.items()}
        with torch.device("meta"):
            model = type(self)(sub_config)
        model.load_state_dict(sliced, strict=True, assign=True)
        model.train(self.training)
        return model

    # --- used by forward --------------------------------------------------------------------------
    def _resolve_subnet(self, subnet: str | None) -> str | None:
        name = self.config.active_subnet if subnet is None else subnet
        self._check_subnet_name(name)
        return None if name == FULL else name

    def _subnet_ids(self, name: str | None):
        if name is None:
            return None
        ids = self.config.subnets[name].get("components")
        if ids is None:
            raise ValueError(f"subnet '{name}' has no selected components yet (selection still in training)")
        return None if self._covers_all(ids) else sorted(ids)

    def _head(self, name: str | None) -> nn.Linear:
        return self.subnet_heads[name] if name in self.subnet_heads else self.lm_head

    def _head_key(self, name: str | None) -> str:
        return f"subnet_heads.{name}" if name in self.subnet_heads else "lm_head"

    def _routes(self, name: str | None, gates: torch.Tensor | None):
        """Per block, per module: the kept units (hard mask of `name`) and soft gates from `gates`."""
        ids = None
        if name is not None and name in self.config.subnets and self.config.subnets[name].get("components") is None:
            if gates is None:
                raise ValueError(f"subnet '{name}' has no selected components yet; pass component_gates")
        else:
            ids = self._subnet_ids(name)
        if gates is None:
            if ids is None:
                return None
            if name not in self._route_cache:
                self._route_cache[name] = build_routes(self._index, self.config, ids, None)
            return self._route_cache[name]
        if gates.shape[-1] != len(self._index) or gates.dim() not in (1, 2):
            raise ValueError(
                f"component_gates must have shape [{len(self._index)}] or [batch, {len(self._index)}]; "
                f"got {tuple(gates.shape)}"
            )
        return build_routes(self._index, self.config, ids, gates)

    def _subnet_config(self, name: str, ids: list[int]):
        """Config of the standalone model that keeps `ids`: its spec, one subnet covering everything."""
        spec = self._index.spec_for(self.config, ids)
        if not any(size for block in spec for size in block.values()):
            logger.warning("subnet '%s' keeps no encoder module; only frontend and head remain", name)
        entry = copy.deepcopy(self.config.subnets.get(name, {}))
        sub = copy.deepcopy(self.config)
        sub.architecture_spec, sub.subnets, sub.active_subnet = spec, {}, None
        sub._validate()
        entry.update(components=list(range(len(ComponentIndex(sub)))), supernet_components=list(ids))
        sub.subnets = {name: entry}
        sub.active_subnet = name
        return sub

    # --- loading ----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`from_pretrained(path_or_repo, subnet="40M")` returns the compact 40M model.

        Without `subnet` (and no `active_subnet` in the checkpoint) it returns the whole checkpoint.
        A strict size is loaded lazily: only its tensors and slices are read from the safetensors
        weights (see `lazy_loading.py`); other cases use the regular loader."""
        from .loading_dynasr import load_subnet_lazily

        # weights only from safetensors: a Hub repo's pytorch_model.bin would be unpickled (issue 8)
        kwargs.setdefault("use_safetensors", True)
        loaded = load_subnet_lazily(cls, pretrained_model_name_or_path, *model_args, **kwargs)
        if loaded is not None:
            return loaded
        model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        name = model.config.active_subnet
        if name is not None and name != FULL and model._subnet_ids(name) is not None:
            model = model.extract_subnet(name)
        return model


def build_routes(index: ComponentIndex, config, keep_ids, gates):
    """Turn a component mask (`keep_ids`, None = all) and soft gates ([N] or [B, N]) into ModuleRoutes."""
    keep = None if keep_ids is None else set(keep_ids)
    routes = []
    for b, block in enumerate(config.architecture_spec):
        block_routes = {}
        for module in MODULE_NAMES:
            comps = index.by_module.get((b, module), [])
            kept = comps if keep is None else [c for c in comps if c.id in keep]
            if not kept:
                block_routes[module] = ModuleRoute(skip=True)
                continue
            route = ModuleRoute()
            if len(kept) < len(comps):
                units = [u for c in kept for u in range(c.start, c.stop)]
                route.keep = torch.tensor(units, dtype=torch.long)
            if gates is not None:
                ids = torch.tensor([c.id for c in kept], dtype=torch.long, device=gates.device)
                picked = gates.index_select(-1, ids)  # [K] or [B, K]
                if kept[0].kind == "module":
                    route.out_gate = picked[..., 0]
                else:
                    route.unit_gate = picked.repeat_interleave(kept[0].stop - kept[0].start, dim=-1)
            block_routes[module] = route
        routes.append(block_routes)
    return routes


def subnet_slice_plan(config, index: ComponentIndex, keep_ids, head: str = "lm_head") -> dict:
    """For each parameter of the extracted model: (source key, [(dim, indices), ...]).

    Extraction and lazy loading both follow this plan, so they cannot disagree."""
    kept = index.kept_units(keep_ids)
    plan = {}
    module_params = {}
    for b, block in enumerate(config.architecture_spec):
        for module in MODULE_NAMES:
            size = block[module]
            if size == 0:
                continue
            units = kept.get((b, module))
            prefix = f"dynasr.layers.{b}.{module}."
            module_params[prefix] = (units, MODULE_CLASSES[module].slice_plan(
                torch.tensor(units or [], dtype=torch.long), size, config))
    for key in _supernet_keys(config):
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


def _supernet_keys(config) -> list[str]:
    from .costs_dynasr import single_head_config
    from .modeling_dynasr import DynaSRForCTC

    with torch.device("meta"):
        model = DynaSRForCTC(single_head_config(config))
    return list(model.state_dict())


def _take(tensor: torch.Tensor, slices) -> torch.Tensor:
    for dim, index in slices:
        tensor = tensor.index_select(dim, index.to(tensor.device))
    return tensor.clone() if not slices else tensor
