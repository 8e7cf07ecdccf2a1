"""The gating interface every prunable module type shares (one module type per class, i6_models style).

Every prunable module takes a `ModuleRoute`:
- `keep`: unit indices kept by a binary mask (`None` = all). The module computes with the kept rows and
  columns only (index_select on the weights), so a masked supernet does the same arithmetic as the
  extracted model and costs what that smaller model costs;
- `unit_gate`: soft gates per kept unit, `[U]` or per sequence `[B, U]` (training: the soft masks of the
  selection methods of papers 1 and 2);
- `out_gate`: a soft gate on the whole module output, `[]` or `[B]` (module-wise granularity, paper 1).

Each module class also owns what is specific to its type (see `GatedModule`): its unit and component sizes,
its parameter cost per unit, its slice plan, its DMAO importance slice and unit kind. The component index,
the costs, the config's spec checks, DMAO and the architecture report ask the class, so a new module type
is one class plus one entry in `modules_dynasr.MODULE_CLASSES`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ModuleRoute:
    keep: torch.Tensor | None = None
    unit_gate: torch.Tensor | None = None
    out_gate: torch.Tensor | None = None
    skip: bool = False


def gate_units(hidden_states: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """Scale the last dim of `[B, T, U]` by a gate of shape `[U]` or `[B, U]`."""
    if gate is None:
        return hidden_states
    return hidden_states * (gate if gate.dim() == 1 else gate[:, None, :])


def select_rows(weight: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    return weight if keep is None else weight.index_select(0, keep)


def select_columns(weight: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    return weight if keep is None else weight.index_select(1, keep)


def apply_module(module: nn.Module | None, hidden_states, attention_mask, route: ModuleRoute):
    """A module's output with its route (kept units, unit gates, module gate); None if absent or skipped.
    A module may return (output, extra) - self-attention returns its weights, which transformers' output capture
    records from that tuple (`_can_record_outputs`); only the output goes on."""
    if module is None or route.skip:
        return None
    out = module(hidden_states, attention_mask, route)
    if isinstance(out, tuple):
        out = out[0]
    if route.out_gate is not None:
        gate = route.out_gate
        out = out * (gate if gate.dim() == 0 else gate[:, None, None])
    return out


class GatedModule(nn.Module):
    """Base of the prunable module types: what is specific to a type, as class attributes and classmethods.

    A module's size (its entry in the architecture spec) counts its units: hidden units, heads, channels.
    Units are grouped into chunks of `chunk_size(config)` units, the components at component granularity
    and DMAO's units (paper 3). Subclasses set the attributes below and implement `slice_plan`,
    `unit_params`, `importance_slice` and `nominal_size`."""

    #: `Component.kind` of its components at component granularity ("module" is the whole-module kind)
    component_kind: str = ""
    #: letter of its components' names: "b0.ffn1.c3" (chunk 3), "b2.mhsa.h1" (head 1)
    component_tag: str = "c"
    #: the unit kind DMAO's `unit_kinds` option names
    dmao_kind: str = ""
    #: what one unit is, in reports
    unit_name: str = "units"
    #: the config field holding units per chunk; None: one unit per component (attention heads)
    chunk_size_field: str | None = None

    @classmethod
    def nominal_size(cls, config) -> int:
        """Its size in a uniform architecture spec (the config's nominal width)."""
        raise NotImplementedError

    @classmethod
    def chunk_size(cls, config) -> int:
        """Units per chunk; spec sizes are multiples of it."""
        return 1 if cls.chunk_size_field is None else getattr(config, cls.chunk_size_field)

    @classmethod
    def unit_step(cls, config) -> int:
        """Units per component at the config's granularity (0 = one component for the whole module)."""
        return 0 if config.granularity == "module" else cls.chunk_size(config)

    @classmethod
    def unit_params(cls, config) -> int:
        """Parameters that belong to one unit (they go with it when it is removed)."""
        raise NotImplementedError

    @classmethod
    def shared_params(cls, config) -> int:
        """Parameters of the module that belong to no unit: its pre-LayerNorm (weight, bias) and output bias."""
        return 2 * config.hidden_size + config.hidden_size

    @staticmethod
    def slice_plan(units: torch.Tensor, size: int, config) -> dict:
        """Which parameters hold which units: name -> (dim, indices, is_outgoing). Used by extraction, lazy
        loading and DMAO (units may repeat there: a repeated unit is a copy)."""
        raise NotImplementedError

    def importance_slice(self) -> tuple[nn.Parameter, object]:
        """(parameter, view) whose rows, grouped per unit, are the unit's representative weight slice for
        paper 3's utilisation score: `view(param)` and `view(param.grad)` have the units along dim 0."""
        raise NotImplementedError
