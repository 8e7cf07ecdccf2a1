"""Sizes in parameters and FLOPs: per component, per subnet and in total.

Parameters are counted exactly on a model built on the meta device (no memory, no init). FLOPs are
measured with `torch.utils.flop_counter` (matmuls, convolutions and attention; elementwise ops are not
counted) on meta tensors at the config's reference duration, batch 1, eval mode.

Against paper 2's FLOPs units (its published configs): there a head costs 0.252 of an FFN chunk (d=512), about
its projections alone; here a head also carries its attention products at the reference duration (0.311 of an
FFN chunk at 10 s without positions, ~0.5 with relative positions, which add a projection of 2T-1 positions), a
real cost of long utterances. Their never-pruned share (frontend, output layer) is larger too (17.7 % on
LibriSpeech, 27.5 % on TED-LIUM, against ~10 % here): `SelectionConfig.paper_rest_share` re-derives a paper's size
fractions so each size keeps the paper's share of the prunable FLOPs; the head-to-FFN ratio stays this model's.

The functions take the model class (`DynaSRForCTC`, which defines `count_parameters` and `measure_flops`
classmethods over them), so this file does not import the modelling file that uses it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch.utils.flop_counter import FlopCounterMode

from .components_dynasr import ComponentIndex, component_params
from .modules_dynasr import MODULE_CLASSES, ModuleRoute

#: The costs a size target can be measured in: paper 2's parameter-aware and FLOPs-aware selection, and "count",
#: the number of components (every component costs 1, the rest 0): paper 1's sizes of 16 / 32 / 48 of the 48
#: modules at `granularity="module"` (arXiv:2407.18930 and its published configs).
COST_CRITERIA = ("params", "flops", "count")


@dataclass(frozen=True)
class ComponentCosts:
    """Costs of a model with one CTC head: `total == rest + sum(per component)` for params and FLOPs."""

    params: tuple[int, ...]
    flops: tuple[int, ...]
    total_params: int
    total_flops: int

    @property
    def rest_params(self) -> int:
        return self.total_params - sum(self.params)

    @property
    def rest_flops(self) -> int:
        return self.total_flops - sum(self.flops)

    def of(self, criterion: str) -> tuple[tuple[int, ...], int]:
        """(per-component costs, total) for criterion "params", "flops" or "count" (1 per component, no rest)."""
        if criterion == "count":
            return (1,) * len(self.params), len(self.params)
        if criterion == "params":
            return self.params, self.total_params
        if criterion == "flops":
            return self.flops, self.total_flops
        raise ValueError(f"unknown cost criterion {criterion!r}; allowed: {', '.join(COST_CRITERIA)}")


def single_head_config(config):
    """The config of the deployable model: same spec, no extra subnet heads."""
    out = copy.deepcopy(config)
    out.subnets = {}
    out.active_subnet = None
    return out


def meta_model(model_class, config):
    """A one-head model of `model_class` with `config`'s spec on the meta device (no memory, no init)."""
    with torch.device("meta"):
        return model_class(single_head_config(config))


def count_parameters(model_class, config) -> int:
    """Exact parameter count of a one-head model of `model_class` with this config."""
    return sum(p.numel() for p in meta_model(model_class, config).parameters())


def reference_frames(config) -> int:
    """Input frames of the reference duration at which FLOPs are reported."""
    return int(round(config.reference_duration_s * config.sampling_rate / config.hop_length))


def measure_flops(model_class, config) -> int:
    """Forward FLOPs of a one-head model of `model_class` at the reference duration (batch 1)."""
    model = meta_model(model_class, config).eval()
    with torch.device("meta"):
        features = torch.zeros(1, reference_frames(config), config.num_mel_bins)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_features=features)
    return int(counter.get_total_flops())


@lru_cache(maxsize=256)
def _module_flops(module: str, size: int, frames: int, config_key) -> int:
    config = config_key.config
    with torch.device("meta"):
        layer = MODULE_CLASSES[module](config, size).eval()
        hidden = torch.zeros(1, frames, config.hidden_size)
        mask = torch.ones(1, frames, dtype=torch.bool)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        layer(hidden, mask, ModuleRoute())
    return int(counter.get_total_flops())


class _Key:
    """Hashable view of the config fields that change a module's FLOPs."""

    def __init__(self, config):
        self.config = config
        self.key = (config.hidden_size, config.num_attention_heads, config.conv_kernel_size, config.conv_chunk_size,
                    config.cgmlp_chunk_size, config.position_encoding)

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return self.key == other.key


def component_costs(model_class, config, index: ComponentIndex | None = None) -> ComponentCosts:
    """Per-component parameters (exact) and FLOPs at the reference duration of a model of `model_class`.

    A module's counted FLOPs are linear in its units (matmuls, depthwise conv, attention per head), so a
    component's FLOPs are its share of units times its module's measured FLOPs. Parts that are not units
    (frontend, block LayerNorms, module LayerNorms and output biases, the E-Branchformer merge, CTC head) are
    the rest: `total - sum(per component)`."""
    index = index or ComponentIndex(config)
    frames = reference_frames(config) // 4
    key = _Key(config)
    params, flops = [], []
    for comp in index:
        size = config.architecture_spec[comp.block][comp.module]
        params.append(component_params(config, comp))
        module_flops = _module_flops(comp.module, size, frames, key)
        flops.append(module_flops * (comp.stop - comp.start) // size)
    return ComponentCosts(tuple(params), tuple(flops), count_parameters(model_class, config),
                          measure_flops(model_class, config))
