"""Conformer and E-Branchformer parts with component gates (one module type per class, i6_models style).
The E-Branchformer block and its (not prunable) branch merge are in ebranchformer_dynasr.py.

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
is one class plus one entry in `MODULE_CLASSES`.

Departures from the papers' gating, chosen so that gate 0 equals removal and gate 1 equals the plain model:
- FFN chunk: the gate scales the chunk's activations after the nonlinearity (paper 2 scales W1/b1 rows and
  W2 columns, which applies the gate twice for soft values).
- Head: the gate scales the head's output (paper 2 scales Q, K and V, which also sharpens the attention).
- Conv: the LayerNorm after the depthwise conv normalises each chunk of `conv_chunk_size` channels on its
  own, so a chunk can be removed without changing the others (paper 3's conv channel chunks).
- cgMLP (E-Branchformer): likewise, the LayerNorm of its gating unit normalises each chunk of
  `cgmlp_chunk_size` units on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModuleRoute:
    keep: torch.Tensor | None = None
    unit_gate: torch.Tensor | None = None
    out_gate: torch.Tensor | None = None
    skip: bool = False


def _gate_units(hidden_states: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """Scale the last dim of `[B, T, U]` by a gate of shape `[U]` or `[B, U]`."""
    if gate is None:
        return hidden_states
    return hidden_states * (gate if gate.dim() == 1 else gate[:, None, :])


def _rows(weight: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    return weight if keep is None else weight.index_select(0, keep)


def _columns(weight: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    return weight if keep is None else weight.index_select(1, keep)


def apply_module(module: nn.Module | None, hidden_states, attention_mask, route: ModuleRoute):
    """A module's output with its route (kept units, unit gates, module gate); None if absent or skipped."""
    if module is None or route.skip:
        return None
    out = module(hidden_states, attention_mask, route)
    if route.out_gate is not None:
        gate = route.out_gate
        out = out * (gate if gate.dim() == 0 else gate[:, None, None])
    return out


def _chunk_layer_norm(hidden_states, chunk: int, eps: float, weight, bias) -> torch.Tensor:
    """LayerNorm over each chunk of `chunk` channels of `[B, T, C]` separately, then the affine map."""
    batch, time, channels = hidden_states.shape
    grouped = hidden_states.reshape(batch, time, channels // chunk, chunk)
    return F.layer_norm(grouped, (chunk,), eps=eps).reshape(batch, time, channels) * weight + bias


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


class DynaSRFeedForward(GatedModule):
    """LN -> Linear(d, H) -> SiLU -> dropout -> Linear(H, d) -> dropout. Units: the H hidden units."""

    component_kind = "ffn_chunk"
    dmao_kind = "ffn"
    unit_name = "hidden units"
    chunk_size_field = "ffn_chunk_size"

    @classmethod
    def nominal_size(cls, config) -> int:
        return config.intermediate_size

    @classmethod
    def unit_params(cls, config) -> int:  # linear_in row + bias, linear_out column
        return 2 * config.hidden_size + 1

    @staticmethod
    def slice_plan(units: torch.Tensor, size: int, config) -> dict:
        return {"linear_in.weight": (0, units, False), "linear_in.bias": (0, units, False),
                "linear_out.weight": (1, units, True)}

    def importance_slice(self):  # an FFN chunk's rows of the first linear layer
        return self.linear_in.weight, lambda t: t

    def __init__(self, config, intermediate_size: int):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.linear_in = nn.Linear(config.hidden_size, intermediate_size)
        self.linear_out = nn.Linear(intermediate_size, config.hidden_size)
        self.activation_dropout = nn.Dropout(config.activation_dropout)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states, attention_mask, route: ModuleRoute):  # [B, T, d]
        keep = route.keep
        hidden_states = self.layer_norm(hidden_states)
        hidden_states = F.linear(hidden_states, _rows(self.linear_in.weight, keep), _rows(self.linear_in.bias, keep))
        hidden_states = _gate_units(F.silu(hidden_states), route.unit_gate)  # [B, T, H]
        hidden_states = self.activation_dropout(hidden_states)
        return self.dropout(F.linear(hidden_states, _columns(self.linear_out.weight, keep), self.linear_out.bias))


class DynaSRSelfAttention(GatedModule):
    """LN -> multi-head self-attention (SDPA with the padding mask) -> dropout. Units: heads."""

    component_kind = "head"
    component_tag = "h"
    dmao_kind = "mhsa"
    unit_name = "heads"
    chunk_size_field = None  # one head per component

    @classmethod
    def nominal_size(cls, config) -> int:
        return config.num_attention_heads

    @classmethod
    def unit_params(cls, config) -> int:  # q, k, v rows + biases and out_proj columns of one head
        return config.head_dim * (3 * (config.hidden_size + 1) + config.hidden_size)

    @staticmethod
    def slice_plan(units: torch.Tensor, size: int, config) -> dict:
        rows = (units[:, None] * config.head_dim + torch.arange(config.head_dim, device=units.device)).reshape(-1)
        plan = {f"{p}_proj.{t}": (0, rows, False) for p in "qkv" for t in ("weight", "bias")}
        plan["out_proj.weight"] = (1, rows, True)
        return plan

    def importance_slice(self):  # a head's columns of the output projection
        return self.out_proj.weight, lambda t: t.t()

    def __init__(self, config, num_heads: int):
        super().__init__()
        self.head_dim = config.head_dim
        inner = num_heads * self.head_dim
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.q_proj = nn.Linear(config.hidden_size, inner)
        self.k_proj = nn.Linear(config.hidden_size, inner)
        self.v_proj = nn.Linear(config.hidden_size, inner)
        self.out_proj = nn.Linear(inner, config.hidden_size)
        self.attention_dropout = config.attention_dropout
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states, attention_mask, route: ModuleRoute):  # [B, T, d], mask [B, T] bool
        batch, time, _ = hidden_states.shape
        rows = None
        if route.keep is not None:  # head ids -> rows of the projections
            offsets = torch.arange(self.head_dim, device=route.keep.device)
            rows = (route.keep[:, None] * self.head_dim + offsets).reshape(-1)
        hidden_states = self.layer_norm(hidden_states)

        def project(linear):  # [B, T, d] -> [B, H, T, hd]
            out = F.linear(hidden_states, _rows(linear.weight, rows), _rows(linear.bias, rows))
            return out.view(batch, time, -1, self.head_dim).transpose(1, 2)

        query, key, value = project(self.q_proj), project(self.k_proj), project(self.v_proj)
        context = F.scaled_dot_product_attention(
            query, key, value,
            attn_mask=attention_mask[:, None, None, :],  # [B, 1, 1, T]: padded keys are never attended
            dropout_p=self.attention_dropout if self.training else 0.0,
        )  # [B, H, T, hd]
        if route.unit_gate is not None:
            gate = route.unit_gate
            context = context * (gate[:, None, None] if gate.dim() == 1 else gate[:, :, None, None])
        context = context.transpose(1, 2).reshape(batch, time, -1)  # [B, T, H * hd]
        return self.dropout(F.linear(context, _columns(self.out_proj.weight, rows), self.out_proj.bias))


class GatedChannelModule(GatedModule):
    """Base of the gated channel modules (conv module, cgMLP): unit u owns rows u and size + u of the input
    projection (value and gate), its depthwise channel and its chunk-wise norm, and column u of the output
    projection. Subclasses name their two projections."""

    linear_in_name = "linear_in"
    linear_out_name = "linear_out"

    @classmethod
    def unit_params(cls, config) -> int:
        # 2 rows of the input projection (value + gate) with biases, depthwise kernel + bias, norm weight + bias,
        # one column of the output projection
        return 2 * (config.hidden_size + 1) + (config.conv_kernel_size + 1) + 2 + config.hidden_size

    @classmethod
    def slice_plan(cls, units: torch.Tensor, size: int, config) -> dict:
        both = torch.cat([units, units + size])
        plan = {f"{cls.linear_in_name}.{t}": (0, both, False) for t in ("weight", "bias")}
        for name in ("depthwise.weight", "depthwise.bias", "norm_weight", "norm_bias"):
            plan[name] = (0, units, False)
        plan[f"{cls.linear_out_name}.weight"] = (1, units, True)
        return plan

    def importance_slice(self):  # a chunk's value rows of the input projection (gate rows excluded)
        size = self.depthwise.out_channels
        return getattr(self, self.linear_in_name).weight, lambda t: t[:size]

    def value_gate_rows(self, keep: torch.Tensor | None) -> torch.Tensor | None:
        """Rows of the input projection that the kept units own (values, then gates); None = all."""
        return None if keep is None else torch.cat([keep, keep + self.depthwise.out_channels])

    def chunk_norm(self, hidden_states, keep: torch.Tensor | None) -> torch.Tensor:  # [B, T, C]
        """LayerNorm over each chunk of `self.chunk` kept channels on its own, so removing a chunk leaves the
        others unchanged."""
        return _chunk_layer_norm(hidden_states, self.chunk, self.eps, _rows(self.norm_weight, keep),
                                 _rows(self.norm_bias, keep))

    def depthwise_conv(self, hidden_states, attention_mask, keep: torch.Tensor | None) -> torch.Tensor:
        """The depthwise conv over time of the kept channels [B, T, C], padded frames zeroed first so a padded
        batch gives each utterance what it gets alone."""
        hidden_states = hidden_states.masked_fill(~attention_mask[..., None], 0.0)
        channels = hidden_states.shape[-1]
        return F.conv1d(
            hidden_states.transpose(1, 2), _rows(self.depthwise.weight, keep), _rows(self.depthwise.bias, keep),
            padding=self.depthwise.padding, groups=channels,
        ).transpose(1, 2)


class DynaSRConvModule(GatedChannelModule):
    """LN -> pointwise (GLU) -> depthwise conv -> chunk-wise LN -> SiLU -> pointwise -> dropout.

    Units: channels. LayerNorm instead of the Conformer's BatchNorm, because running statistics shared by all
    subnets are wrong for each of them."""

    component_kind = "conv_chunk"
    dmao_kind = "conv"
    unit_name = "channels"
    chunk_size_field = "conv_chunk_size"
    linear_in_name = "pointwise_in"
    linear_out_name = "pointwise_out"

    @classmethod
    def nominal_size(cls, config) -> int:
        return config.conv_channels

    @classmethod
    def unit_step(cls, config) -> int:
        """Component granularity keeps the conv module whole (paper 2) unless `conv_granularity="chunk"`
        (paper 3's channel chunks)."""
        return cls.chunk_size(config) if config.conv_granularity == "chunk" else 0

    def __init__(self, config, channels: int):
        super().__init__()
        self.chunk = self.chunk_size(config)
        self.eps = config.layer_norm_eps
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pointwise_in = nn.Linear(config.hidden_size, 2 * channels)  # rows [0, C): values, [C, 2C): GLU gates
        self.depthwise = nn.Conv1d(
            channels, channels, config.conv_kernel_size, padding=config.conv_kernel_size // 2, groups=channels
        )
        # no device=: like nn.Linear's weights they follow a torch.device context (meta for costs and extraction)
        self.norm_weight = nn.Parameter(torch.ones(channels))
        self.norm_bias = nn.Parameter(torch.zeros(channels))
        self.pointwise_out = nn.Linear(channels, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states, attention_mask, route: ModuleRoute):  # [B, T, d]
        keep = route.keep
        glu_rows = self.value_gate_rows(keep)
        hidden_states = self.layer_norm(hidden_states)
        hidden_states = F.linear(
            hidden_states, _rows(self.pointwise_in.weight, glu_rows), _rows(self.pointwise_in.bias, glu_rows)
        )
        hidden_states = F.glu(hidden_states, dim=-1)  # [B, T, C]
        hidden_states = self.chunk_norm(self.depthwise_conv(hidden_states, attention_mask, keep), keep)
        hidden_states = _gate_units(F.silu(hidden_states), route.unit_gate)
        return self.dropout(F.linear(hidden_states, _columns(self.pointwise_out.weight, keep), self.pointwise_out.bias))


class DynaSRConvolutionalGatingMLP(GatedChannelModule):
    """cgMLP, the local branch of an E-Branchformer block (Kim et al. 2022; ESPnet ConvolutionalGatingMLP):
    LN -> Linear(d, 2U) -> GELU -> convolutional spatial gating unit (values = first U channels, gates = last U:
    chunk-wise LN -> depthwise conv -> dropout on the gates; values * gates) -> Linear(U, d) -> dropout.

    Units: the U gating channels, owned like a conv channel (so the same cost formula and slicing)."""

    component_kind = "cgmlp_chunk"
    dmao_kind = "cgmlp"
    chunk_size_field = "cgmlp_chunk_size"

    @classmethod
    def nominal_size(cls, config) -> int:
        return config.cgmlp_intermediate_size // 2

    def __init__(self, config, units: int):
        super().__init__()
        self.chunk = self.chunk_size(config)
        self.eps = config.layer_norm_eps
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.linear_in = nn.Linear(config.hidden_size, 2 * units)  # rows [0, U): values, [U, 2U): gates
        self.norm_weight = nn.Parameter(torch.ones(units))  # no device=, see DynaSRConvModule
        self.norm_bias = nn.Parameter(torch.zeros(units))
        self.depthwise = nn.Conv1d(units, units, config.conv_kernel_size, padding=config.conv_kernel_size // 2,
                                   groups=units)
        self.linear_out = nn.Linear(units, config.hidden_size)
        self.activation_dropout = nn.Dropout(config.activation_dropout)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states, attention_mask, route: ModuleRoute):  # [B, T, d]
        keep = route.keep
        units = self.depthwise.out_channels if keep is None else keep.numel()
        both = self.value_gate_rows(keep)
        hidden_states = self.layer_norm(hidden_states)
        hidden_states = F.linear(hidden_states, _rows(self.linear_in.weight, both), _rows(self.linear_in.bias, both))
        values, gates = F.gelu(hidden_states).split(units, dim=-1)  # [B, T, U] each
        gates = self.depthwise_conv(self.chunk_norm(gates, keep), attention_mask, keep)
        hidden_states = _gate_units(values * self.activation_dropout(gates), route.unit_gate)  # [B, T, U]
        return self.dropout(F.linear(hidden_states, _columns(self.linear_out.weight, keep), self.linear_out.bias))


#: The prunable module class of each spec key, in component-index order within a block (the modules of each
#: block type, `components_dynasr.BLOCK_MODULES`, are a subsequence of it).
MODULE_CLASSES: dict[str, type[GatedModule]] = {
    "ffn1": DynaSRFeedForward,
    "mhsa": DynaSRSelfAttention,
    "conv": DynaSRConvModule,
    "cgmlp": DynaSRConvolutionalGatingMLP,
    "ffn2": DynaSRFeedForward,
}
