"""The component index: the one abstraction the three selection methods share.

A component is a prunable piece of one module of one block: a chunk of FFN hidden units, one attention
head, a chunk of conv channels, a chunk of cgMLP units (E-Branchformer), or a whole module (module-wise
granularity, paper 1). Soft gates over components scale their outputs (training); a binary mask over
components removes them (inference, extraction). Ids are positions in the index, which is fully
determined by the config's `block_type`, `architecture_spec`, `granularity`, `conv_granularity` and chunk sizes.
What a component of each module type is (its units, its name, its cost) is asked of the module class
(`modules_dynasr.MODULE_CLASSES`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .modules_dynasr import MODULE_CLASSES

#: Prunable modules of each block type, in component-index order; a block's spec has exactly these keys.
#: Conformer: FFN1, MHSA, Conv, FFN2 (the i6 ConformerBlockV1 order). E-Branchformer: FFN1, the
#: two parallel branches MHSA (global) and cgMLP (local), FFN2 (its branch merge is not prunable: "rest").
BLOCK_MODULES = {
    "conformer": ("ffn1", "mhsa", "conv", "ffn2"),
    "ebranchformer": ("ffn1", "mhsa", "cgmlp", "ffn2"),
}
#: Every module name of every block type, ordered so that each block type's order is a subsequence. Generic
#: code may loop over it: a `BlockSpec` reads 0 (absent) for the modules its block type does not have.
MODULE_NAMES = tuple(MODULE_CLASSES)
#: Residual scale of the modules a block adds one by one (macaron FFNs at 0.5).
RESIDUAL_SCALE = {"ffn1": 0.5, "mhsa": 1.0, "conv": 1.0, "ffn2": 0.5}


def module_names(config_or_block_type) -> tuple[str, ...]:
    """The prunable modules of a block type (or of a config's `block_type`), in component-index order."""
    block_type = getattr(config_or_block_type, "block_type", config_or_block_type)
    return BLOCK_MODULES[block_type]


class BlockSpec(dict):
    """One block of an architecture spec: module name -> size (0 = absent). It holds exactly its block
    type's keys (so config.json shows them) and reads 0 for the other names in `MODULE_NAMES` (an
    E-Branchformer block has no "conv", a Conformer block no "cgmlp"), so code that loops over all module
    names works for every block type. It serialises as a plain dict."""

    def __missing__(self, key):
        if key in MODULE_NAMES:
            return 0
        raise KeyError(key)


@dataclass(frozen=True)
class Component:
    """One prunable piece. `start:stop` is its range of units inside the module: hidden units (FFN),
    heads (MHSA) or channels (conv). `kind` is "module" when it is the whole module, else the module
    class's `component_kind` ("ffn_chunk", "head", "conv_chunk", "cgmlp_chunk")."""

    id: int
    name: str
    block: int
    module: str
    kind: str
    start: int
    stop: int


def _iter_components(config):
    cid = 0
    for b, block in enumerate(config.architecture_spec):
        for module in module_names(config):
            size = block[module]
            if size == 0:
                continue
            module_class = MODULE_CLASSES[module]
            step = module_class.unit_step(config)
            if step == 0:
                yield Component(cid, f"b{b}.{module}", b, module, "module", 0, size)
                cid += 1
                continue
            for j, start in enumerate(range(0, size, step)):
                name = f"b{b}.{module}.{module_class.component_tag}{j}"
                yield Component(cid, name, b, module, module_class.component_kind, start, start + step)
                cid += 1


def count_components(config) -> int:
    return sum(1 for _ in _iter_components(config))


class ComponentIndex(Sequence):
    """All components of a config, in id order, with lookups by module."""

    def __init__(self, config):
        self.components: tuple[Component, ...] = tuple(_iter_components(config))
        self.by_module: dict[tuple[int, str], list[Component]] = {}
        for comp in self.components:
            self.by_module.setdefault((comp.block, comp.module), []).append(comp)
        self._names = {c.name: c.id for c in self.components}

    def __len__(self) -> int:
        return len(self.components)

    def __getitem__(self, i):
        return self.components[i]

    def ids(self, items: Iterable[int | str]) -> list[int]:
        """Normalise a list of component ids or names to sorted unique ids; unknown ones raise ValueError."""
        out = set()
        for item in items:
            if isinstance(item, str):
                if item not in self._names:
                    raise ValueError(f"unknown component name {item!r}; names look like 'b0.ffn1.c0', 'b3.mhsa.h2'")
                out.add(self._names[item])
            elif isinstance(item, int) and not isinstance(item, bool) and 0 <= item < len(self):
                out.add(int(item))
            else:
                raise ValueError(f"component id {item!r} does not exist; valid ids are 0..{len(self) - 1}")
        return sorted(out)

    def covers_all(self, ids: Iterable[int] | None) -> bool:
        """Whether a mask (component ids; None = not selected yet) keeps every component: the whole network."""
        return ids is not None and len(set(ids)) == len(self)

    def kept_units(self, keep_ids: Iterable[int]) -> dict[tuple[int, str], list[int]]:
        """Per (block, module): the sorted unit indices a binary mask keeps (modules not listed keep none)."""
        kept: dict[tuple[int, str], list[int]] = {}
        for cid in sorted(set(keep_ids)):
            comp = self.components[cid]
            kept.setdefault((comp.block, comp.module), []).extend(range(comp.start, comp.stop))
        return kept

    def spec_for(self, config, keep_ids: Iterable[int]) -> list[dict]:
        """The architecture spec of the subnet that keeps `keep_ids` (sizes = kept units, 0 = module gone)."""
        kept = self.kept_units(keep_ids)
        return [
            BlockSpec({module: len(kept.get((b, module), ())) for module in module_names(config)})
            for b in range(len(config.architecture_spec))
        ]

    def is_nested(self, small: Iterable[int], large: Iterable[int]) -> bool:
        return set(small) <= set(large)


def component_params(config, comp: Component) -> int:
    """Exact parameters of a component: its units' parameters, plus the module's shared parameters when the
    component is the whole module. The E-Branchformer branch merge has no unit: it is part of the "rest"."""
    module_class = MODULE_CLASSES[comp.module]
    cost = (comp.stop - comp.start) * module_class.unit_params(config)
    if comp.kind == "module":  # the whole module goes with it
        cost += module_class.shared_params(config)
    return cost
