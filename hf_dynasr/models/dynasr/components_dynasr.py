"""The component index: the one abstraction the three selection methods share (architecture.md).

A component is a prunable piece of one module of one block: a chunk of FFN hidden units, one attention
head, a chunk of conv channels, a chunk of cgMLP units (E-Branchformer), or a whole module (module-wise
granularity, paper 1). Soft gates over components scale their outputs (training); a binary mask over
components removes them (inference, extraction). Ids are positions in the index, which is fully
determined by the config's `block_type`, `architecture_spec`, `granularity`, `conv_granularity` and chunk sizes.

This file is imported by the config, so it must not import torch-heavy modelling code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: Prunable modules of each block type, in component-index order; a block's spec has exactly these keys.
#: Conformer: FFN1, MHSA, Conv, FFN2 (i6 ConformerBlockV1 order, methods.md A.2). E-Branchformer: FFN1, the
#: two parallel branches MHSA (global) and cgMLP (local), FFN2 (its branch merge is not prunable: "rest").
BLOCK_MODULES = {
    "conformer": ("ffn1", "mhsa", "conv", "ffn2"),
    "ebranchformer": ("ffn1", "mhsa", "cgmlp", "ffn2"),
}
#: Every module name of every block type, ordered so that each block type's order is a subsequence. Generic
#: code may loop over it: a `BlockSpec` reads 0 (absent) for the modules its block type does not have.
MODULE_NAMES = ("ffn1", "mhsa", "conv", "cgmlp", "ffn2")
#: Residual scale of the modules a Conformer block adds one by one (macaron FFNs at 0.5).
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
    heads (MHSA) or channels (conv). `kind` is "module" when it is the whole module."""

    id: int
    name: str
    block: int
    module: str
    kind: str  # "module" | "ffn_chunk" | "head" | "conv_chunk" | "cgmlp_chunk"
    start: int
    stop: int


def _unit_step(config, module: str) -> int:
    """Units per component of a module at the config's granularity (0 = whole module)."""
    if config.granularity == "module":
        return 0
    if module in ("ffn1", "ffn2"):
        return config.ffn_chunk_size
    if module == "mhsa":
        return 1
    if module == "cgmlp":  # chunked like the FFNs; `conv_granularity` concerns the Conformer conv only
        return config.cgmlp_chunk_size
    return config.conv_chunk_size if config.conv_granularity == "chunk" else 0


_KINDS = {"ffn1": "ffn_chunk", "ffn2": "ffn_chunk", "mhsa": "head", "conv": "conv_chunk", "cgmlp": "cgmlp_chunk"}


def _iter_components(config):
    cid = 0
    for b, block in enumerate(config.architecture_spec):
        for module in module_names(config):
            size = block[module]
            if size == 0:
                continue
            step = _unit_step(config, module)
            if step == 0:
                yield Component(cid, f"b{b}.{module}", b, module, "module", 0, size)
                cid += 1
                continue
            kind = _KINDS[module]
            for j, start in enumerate(range(0, size, step)):
                tag = "h" if module == "mhsa" else "c"
                yield Component(cid, f"b{b}.{module}.{tag}{j}", b, module, kind, start, start + step)
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


# --- parameter costs (exact, from the module definitions in conformer_dynasr.py) ----------------------
# The E-Branchformer branch merge (ebranchformer_dynasr.py) has no unit: it is part of the "rest".


def module_unit_params(config, module: str) -> int:
    """Parameters that scale with one unit of a module (one hidden unit, head or channel)."""
    d = config.hidden_size
    if module in ("ffn1", "ffn2"):  # linear_in row + bias, linear_out column
        return d + 1 + d
    if module == "mhsa":  # q, k, v rows + biases and out_proj columns of one head
        return config.head_dim * (3 * (d + 1) + d)
    # conv: 2 rows of pointwise_in (GLU) + biases, depthwise kernel + bias, norm weight + bias, pointwise_out column;
    # cgmlp: the same shapes (linear_in value + gate rows, the gate's norm and depthwise conv, linear_out column)
    return 2 * (d + 1) + (config.conv_kernel_size + 1) + 2 + d


def module_shared_params(config, module: str) -> int:
    """Parameters of a module that do not belong to any unit: its pre-LayerNorm and output bias."""
    return 2 * config.hidden_size + config.hidden_size


def component_params(config, comp: Component) -> int:
    units = comp.stop - comp.start
    cost = units * module_unit_params(config, comp.module)
    if comp.kind == "module":  # the whole module goes with it
        cost += module_shared_params(config, comp.module)
    return cost
