"""Conformer and E-Branchformer parts with component gates (one module type per class, i6_models style).
The E-Branchformer block and its (not prunable) branch merge are in ebranchformer_dynasr.py.

Every prunable module takes a `ModuleRoute`:
- `keep`: unit indices kept by a binary mask (`None` = all). The module computes with the kept rows and
  columns only (index_select on the weights), so a masked supernet does the same arithmetic as the
  extracted model and costs what that smaller model costs;
- `unit_gate`: soft gates per kept unit, `[U]` or per sequence `[B, U]` (training, methods.md A.1-A.3);
- `out_gate`: a soft gate on the whole module output, `[]` or `[B]` (module-wise granularity, paper 1).

Departures from the papers' gating, chosen so that gate 0 equals removal and gate 1 equals the plain model:
- FFN chunk: the gate scales the chunk's activations after the nonlinearity (paper 2 scales W1/b1 rows and
  W2 columns, which applies the gate twice for soft values).
- Head: the gate scales the head's output (paper 2 scales Q, K and V, which also sharpens the attention).
- Conv: the LayerNorm after the depthwise conv normalises each chunk of `conv_chunk_size` channels on its
  own, so a chunk can be removed without changing the others (methods.md A.4 conv chunks).
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


def gated_slice_plan(linear_in: str, linear_out: str, units: torch.Tensor, size: int) -> dict:
    """Slice plan of a gated channel module (conv module, cgMLP): unit u owns rows u and size + u of the
    input projection (value and gate), its depthwise channel and norm, and column u of the output projection."""
    both = torch.cat([units, units + size])
    plan = {f"{linear_in}.{t}": (0, both, False) for t in ("weight", "bias")}
    for name in ("depthwise.weight", "depthwise.bias", "norm_weight", "norm_bias"):
        plan[name] = (0, units, False)
    plan[f"{linear_out}.weight"] = (1, units, True)
    return plan


def _rows(weight: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    return weight if keep is None else weight.index_select(0, keep)


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


class DynaSRFeedForward(nn.Module):
    """LN -> Linear(d, H) -> SiLU -> dropout -> Linear(H, d) -> dropout. Units: the H hidden units."""

    @staticmethod
    def slice_plan(units: torch.Tensor, size: int, config) -> dict:
        """Which parameters hold which units: name -> (dim, indices, is_outgoing). Used by extraction,
        lazy loading and DMAO (units may repeat there: a repeated unit is a copy)."""
        return {"linear_in.weight": (0, units, False), "linear_in.bias": (0, units, False),
                "linear_out.weight": (1, units, True)}

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
        w_out = self.linear_out.weight if keep is None else self.linear_out.weight.index_select(1, keep)
        return self.dropout(F.linear(hidden_states, w_out, self.linear_out.bias))  # [B, T, d]


class DynaSRSelfAttention(nn.Module):
    """LN -> multi-head self-attention (SDPA with the padding mask) -> dropout. Units: heads."""

    @staticmethod
    def slice_plan(units: torch.Tensor, size: int, config) -> dict:
        rows = (units[:, None] * config.head_dim + torch.arange(config.head_dim)).reshape(-1)
        plan = {f"{p}_proj.{t}": (0, rows, False) for p in "qkv" for t in ("weight", "bias")}
        plan["out_proj.weight"] = (1, rows, True)
        return plan

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
        w_out = self.out_proj.weight if rows is None else self.out_proj.weight.index_select(1, rows)
        return self.dropout(F.linear(context, w_out, self.out_proj.bias))


class DynaSRConvModule(nn.Module):
    """LN -> pointwise (GLU) -> depthwise conv -> chunk-wise LN -> SiLU -> pointwise -> dropout.

    Units: channels. LayerNorm instead of the original BatchNorm, because running statistics shared by
    all subnets are wrong for each of them (issue 2; Conformer paper uses BatchNorm)."""

    @staticmethod
    def slice_plan(units: torch.Tensor, size: int, config) -> dict:
        return gated_slice_plan("pointwise_in", "pointwise_out", units, size)

    def __init__(self, config, channels: int):
        super().__init__()
        self.chunk = config.conv_chunk_size
        self.eps = config.layer_norm_eps
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pointwise_in = nn.Linear(config.hidden_size, 2 * channels)  # rows [0, C): values, [C, 2C): GLU gates
        self.depthwise = nn.Conv1d(
            channels, channels, config.conv_kernel_size, padding=config.conv_kernel_size // 2, groups=channels
        )
        self.norm_weight = nn.Parameter(torch.ones(channels))
        self.norm_bias = nn.Parameter(torch.zeros(channels))
        self.pointwise_out = nn.Linear(channels, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states, attention_mask, route: ModuleRoute):  # [B, T, d]
        keep = route.keep
        channels = self.depthwise.out_channels if keep is None else keep.numel()
        glu_rows = None if keep is None else torch.cat([keep, keep + self.depthwise.out_channels])
        hidden_states = self.layer_norm(hidden_states)
        hidden_states = F.linear(
            hidden_states, _rows(self.pointwise_in.weight, glu_rows), _rows(self.pointwise_in.bias, glu_rows)
        )
        hidden_states = F.glu(hidden_states, dim=-1)  # [B, T, C]
        # zero the padded frames so the depthwise conv sees what a single unpadded utterance would see
        hidden_states = hidden_states.masked_fill(~attention_mask[..., None], 0.0)
        hidden_states = F.conv1d(
            hidden_states.transpose(1, 2),
            _rows(self.depthwise.weight, keep),
            _rows(self.depthwise.bias, keep),
            padding=self.depthwise.padding,
            groups=channels,
        ).transpose(1, 2)  # [B, T, C]
        hidden_states = _chunk_layer_norm(
            hidden_states, self.chunk, self.eps, _rows(self.norm_weight, keep), _rows(self.norm_bias, keep)
        )
        hidden_states = _gate_units(F.silu(hidden_states), route.unit_gate)
        w_out = self.pointwise_out.weight if keep is None else self.pointwise_out.weight.index_select(1, keep)
        return self.dropout(F.linear(hidden_states, w_out, self.pointwise_out.bias))


class DynaSRConvolutionalGatingMLP(nn.Module):
    """cgMLP, the local branch of an E-Branchformer block (Kim et al. 2022; ESPnet ConvolutionalGatingMLP):
    LN -> Linear(d, 2U) -> GELU -> convolutional spatial gating unit (values = first U channels, gates = last U:
    chunk-wise LN -> depthwise conv -> dropout on the gates; values * gates) -> Linear(U, d) -> dropout.

    Units: the U gating channels; unit u owns rows u and U + u of `linear_in`, its norm and depthwise channel
    and column u of `linear_out`, exactly like a conv channel (so the same cost formula and slicing)."""

    @staticmethod
    def slice_plan(units: torch.Tensor, size: int, config) -> dict:
        return gated_slice_plan("linear_in", "linear_out", units, size)

    def __init__(self, config, units: int):
        super().__init__()
        self.chunk = config.cgmlp_chunk_size
        self.eps = config.layer_norm_eps
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.linear_in = nn.Linear(config.hidden_size, 2 * units)  # rows [0, U): values, [U, 2U): gates
        self.norm_weight = nn.Parameter(torch.ones(units))
        self.norm_bias = nn.Parameter(torch.zeros(units))
        self.depthwise = nn.Conv1d(units, units, config.conv_kernel_size, padding=config.conv_kernel_size // 2,
                                   groups=units)
        self.linear_out = nn.Linear(units, config.hidden_size)
        self.activation_dropout = nn.Dropout(config.activation_dropout)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states, attention_mask, route: ModuleRoute):  # [B, T, d]
        keep = route.keep
        units = self.depthwise.out_channels if keep is None else keep.numel()
        both = None if keep is None else torch.cat([keep, keep + self.depthwise.out_channels])
        hidden_states = self.layer_norm(hidden_states)
        hidden_states = F.linear(hidden_states, _rows(self.linear_in.weight, both), _rows(self.linear_in.bias, both))
        values, gates = F.gelu(hidden_states).split(units, dim=-1)  # [B, T, U] each
        gates = _chunk_layer_norm(
            gates, self.chunk, self.eps, _rows(self.norm_weight, keep), _rows(self.norm_bias, keep)
        )
        gates = gates.masked_fill(~attention_mask[..., None], 0.0)  # padded frames as for a lone utterance
        gates = F.conv1d(
            gates.transpose(1, 2), _rows(self.depthwise.weight, keep), _rows(self.depthwise.bias, keep),
            padding=self.depthwise.padding, groups=units,
        ).transpose(1, 2)
        hidden_states = _gate_units(values * self.activation_dropout(gates), route.unit_gate)  # [B, T, U]
        w_out = self.linear_out.weight if keep is None else self.linear_out.weight.index_select(1, keep)
        return self.dropout(F.linear(hidden_states, w_out, self.linear_out.bias))


#: The prunable module class of each spec key (see components.BLOCK_MODULES).
MODULE_CLASSES = {
    "ffn1": DynaSRFeedForward,
    "mhsa": DynaSRSelfAttention,
    "conv": DynaSRConvModule,
    "cgmlp": DynaSRConvolutionalGatingMLP,
    "ffn2": DynaSRFeedForward,
}
