"""Conformer and E-Branchformer parts with component gates (one module type per class, i6_models style):
feed-forward, convolution module and cgMLP here, self-attention in attention_dynasr.py, the gating interface they
share (`ModuleRoute`, `GatedModule`) in gating_dynasr.py. The E-Branchformer block and its (not prunable) branch
merge are in ebranchformer_dynasr.py.

Departures from the papers' gating, chosen so that gate 0 equals removal and gate 1 equals the plain model:
- FFN chunk: the gate scales the chunk's activations after the nonlinearity (paper 2 scales W1/b1 rows and
  W2 columns, which applies the gate twice for soft values).
- Head: the gate scales the head's output (paper 2 scales Q, K and V, which also sharpens the attention).
- Conv: when its chunks are components, the LayerNorm after the depthwise conv normalises each chunk of
  `conv_chunk_size` channels on its own, so a chunk can be removed without changing the others (paper 3's conv
  channel chunks); a conv module that is one component keeps the papers' single LayerNorm (`conv_norm`).
- cgMLP (E-Branchformer): likewise, the LayerNorm of its gating unit normalises each chunk of
  `cgmlp_chunk_size` units on its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention_dynasr import DynaSRSelfAttention
from .gating_dynasr import GatedModule, ModuleRoute, apply_module, gate_units, select_columns, select_rows


def _chunk_layer_norm(hidden_states, chunk: int, eps: float, weight, bias) -> torch.Tensor:
    """LayerNorm over each chunk of `chunk` channels of `[B, T, C]` separately, then the affine map."""
    batch, time, channels = hidden_states.shape
    grouped = hidden_states.reshape(batch, time, channels // chunk, chunk)
    return F.layer_norm(grouped, (chunk,), eps=eps).reshape(batch, time, channels) * weight + bias


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
        hidden_states = F.linear(hidden_states, select_rows(self.linear_in.weight, keep), select_rows(self.linear_in.bias, keep))
        hidden_states = gate_units(F.silu(hidden_states), route.unit_gate)  # [B, T, H]
        hidden_states = self.activation_dropout(hidden_states)
        return self.dropout(F.linear(hidden_states, select_columns(self.linear_out.weight, keep), self.linear_out.bias))


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

    def value_gateselect_rows(self, keep: torch.Tensor | None) -> torch.Tensor | None:
        """Rows of the input projection that the kept units own (values, then gates); None = all."""
        return None if keep is None else torch.cat([keep, keep + self.depthwise.out_channels])

    @classmethod
    def norm_chunk(cls, config, channels: int) -> int:
        """Channels each LayerNorm group covers: all of them when the module is one component and
        `config.conv_norm="auto"` (the papers' single LayerNorm), else one chunk."""
        return channels if config.conv_norm == "auto" and cls.unit_step(config) == 0 else cls.chunk_size(config)

    def chunk_norm(self, hidden_states, keep: torch.Tensor | None) -> torch.Tensor:  # [B, T, C]
        """LayerNorm over each chunk of `self.chunk` kept channels on its own, so removing a chunk leaves the
        others unchanged."""
        return _chunk_layer_norm(hidden_states, self.chunk, self.eps, select_rows(self.norm_weight, keep),
                                 select_rows(self.norm_bias, keep))

    def depthwise_conv(self, hidden_states, attention_mask, keep: torch.Tensor | None) -> torch.Tensor:
        """The depthwise conv over time of the kept channels [B, T, C], padded frames zeroed first so a padded
        batch gives each utterance what it gets alone."""
        hidden_states = hidden_states.masked_fill(~attention_mask[..., None], 0.0)
        channels = hidden_states.shape[-1]
        return F.conv1d(
            hidden_states.transpose(1, 2), select_rows(self.depthwise.weight, keep), select_rows(self.depthwise.bias, keep),
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
        self.chunk = self.norm_chunk(config, channels)
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
        glu_rows = self.value_gateselect_rows(keep)
        hidden_states = self.layer_norm(hidden_states)
        hidden_states = F.linear(
            hidden_states, select_rows(self.pointwise_in.weight, glu_rows), select_rows(self.pointwise_in.bias, glu_rows)
        )
        hidden_states = F.glu(hidden_states, dim=-1)  # [B, T, C]
        hidden_states = self.chunk_norm(self.depthwise_conv(hidden_states, attention_mask, keep), keep)
        hidden_states = gate_units(F.silu(hidden_states), route.unit_gate)
        return self.dropout(F.linear(hidden_states, select_columns(self.pointwise_out.weight, keep), self.pointwise_out.bias))


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
        self.chunk = self.norm_chunk(config, units)
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
        both = self.value_gateselect_rows(keep)
        hidden_states = self.layer_norm(hidden_states)
        hidden_states = F.linear(hidden_states, select_rows(self.linear_in.weight, both), select_rows(self.linear_in.bias, both))
        values, gates = F.gelu(hidden_states).split(units, dim=-1)  # [B, T, U] each
        gates = self.depthwise_conv(self.chunk_norm(gates, keep), attention_mask, keep)
        hidden_states = gate_units(values * self.activation_dropout(gates), route.unit_gate)  # [B, T, U]
        return self.dropout(F.linear(hidden_states, select_columns(self.linear_out.weight, keep), self.linear_out.bias))


#: The prunable module class of each spec key, in component-index order within a block (the modules of each
#: block type, `components_dynasr.BLOCK_MODULES`, are a subsequence of it).
MODULE_CLASSES: dict[str, type[GatedModule]] = {
    "ffn1": DynaSRFeedForward,
    "mhsa": DynaSRSelfAttention,
    "conv": DynaSRConvModule,
    "cgmlp": DynaSRConvolutionalGatingMLP,
    "ffn2": DynaSRFeedForward,
}

__all__ = [
    "MODULE_CLASSES",
    "DynaSRConvModule",
    "DynaSRConvolutionalGatingMLP",
    "DynaSRFeedForward",
    "DynaSRSelfAttention",
    "GatedChannelModule",
    "GatedModule",
    "ModuleRoute",
    "apply_module",
]
