"""Multi-head self-attention with one prunable unit per head, run through transformers' attention interface
(`config._attn_implementation`: "sdpa" by default, "eager" when attention weights are wanted, "flex_attention").

With `config.position_encoding = "relative"` it is the Conformer's relative positional self-attention (Gulati
et al. 2020, sec. 2.1) in the Transformer-XL form (Dai et al. 2019, sec. 3.3, eq. 4): the score of query i and key j
is (q_i + u)^T k_j + (q_i + v)^T W_R r_{i-j}, with r the sinusoidal encoding of the distance i - j, u and v a
content and a position bias. Every positional parameter belongs to one head (the head's rows of W_R, its rows of
u and v), so removing, extracting, lazily loading or duplicating a head (DMAO) takes them along.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .gating_dynasr import GatedModule, ModuleRoute, select_columns, select_rows


def eager_attention_forward(module: nn.Module, query, key, value, attention_mask, scaling: float,
                            dropout: float = 0.0, position_bias=None, **kwargs):
    """Attention with explicit weights. query/key/value [B, H, T, hd]; attention_mask additive [B, 1, 1|T, T];
    position_bias [B|1, H, T, T] (added to the scores). Returns ([B, T, H, hd], weights [B, H, T, T])."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # [B, H, T, T]
    if position_bias is not None:
        scores = scores + position_bias
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def relative_positions(time: int, hidden_size: int, like: torch.Tensor) -> torch.Tensor:
    """Sinusoidal encodings [1, 2T - 1, d] of the distances T - 1, ..., -(T - 1) (Vaswani et al. 2017, sec. 3.5;
    sin and cos interleaved as in Parakeet), on the device and in the dtype of `like`."""
    distances = torch.arange(time - 1, -time, -1, device=like.device, dtype=torch.float32)  # [2T - 1]
    inv_freq = torch.exp(torch.arange(0, hidden_size, 2, device=like.device, dtype=torch.float32)
                         * (-math.log(10000.0) / hidden_size))  # [d / 2]
    angles = distances[:, None] * inv_freq[None, :]  # [2T - 1, d / 2]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(1, 2 * time - 1, hidden_size).to(like.dtype)


def relative_shift(scores: torch.Tensor) -> torch.Tensor:
    """[B, H, T, 2T - 1] scores against distances T - 1 .. -(T - 1) -> [B, H, T, T] with entry (i, j) the score of
    distance i - j, which sits in column T - 1 - i + j. Gathered by index rather than Transformer-XL's pad-and-fold
    views (Dai et al. 2019, appendix B; same numbers): the views put shape guards on T that torch.export cannot
    solve for a dynamic time axis."""
    batch, heads, time, _ = scores.shape
    steps = torch.arange(time, device=scores.device)
    index = (time - 1) - steps[:, None] + steps[None, :]  # [T, T]
    return scores.gather(-1, index.expand(batch, heads, time, time))


class DynaSRSelfAttention(GatedModule):
    """LN -> multi-head self-attention (padding mask, optional relative positions) -> dropout. Units: heads."""

    component_kind = "head"
    component_tag = "h"
    dmao_kind = "mhsa"
    unit_name = "heads"
    chunk_size_field = None  # one head per component

    @classmethod
    def nominal_size(cls, config) -> int:
        return config.num_attention_heads

    @classmethod
    def unit_params(cls, config) -> int:
        # q, k, v rows + biases and out_proj columns of one head; with relative positions also its rows of the
        # position projection W_R and of the biases u and v
        base = config.head_dim * (3 * (config.hidden_size + 1) + config.hidden_size)
        if config.position_encoding == "relative":
            base += config.head_dim * (config.hidden_size + 2)
        return base

    @staticmethod
    def slice_plan(units: torch.Tensor, size: int, config) -> dict:
        rows = (units[:, None] * config.head_dim + torch.arange(config.head_dim, device=units.device)).reshape(-1)
        plan = {f"{p}_proj.{t}": (0, rows, False) for p in "qkv" for t in ("weight", "bias")}
        plan["out_proj.weight"] = (1, rows, True)
        if config.position_encoding == "relative":
            plan["pos_proj.weight"] = (0, rows, False)
            plan["pos_bias_u"] = (0, units, False)
            plan["pos_bias_v"] = (0, units, False)
        return plan

    def importance_slice(self):  # a head's columns of the output projection
        return self.out_proj.weight, lambda t: t.t()

    def __init__(self, config, num_heads: int):
        super().__init__()
        self.config = config  # `_attn_implementation` picks the attention function at each call
        self.head_dim = config.head_dim
        self.scaling = self.head_dim ** -0.5
        self.is_causal = False
        inner = num_heads * self.head_dim
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.q_proj = nn.Linear(config.hidden_size, inner)
        self.k_proj = nn.Linear(config.hidden_size, inner)
        self.v_proj = nn.Linear(config.hidden_size, inner)
        self.out_proj = nn.Linear(inner, config.hidden_size)
        self.relative = config.position_encoding == "relative"
        if self.relative:
            self.pos_proj = nn.Linear(config.hidden_size, inner, bias=False)  # W_R
            # zeros as in Parakeet/NeMo: at initialisation the biases add nothing (set again by `_init_weights`)
            self.pos_bias_u = nn.Parameter(torch.zeros(num_heads, self.head_dim))
            self.pos_bias_v = nn.Parameter(torch.zeros(num_heads, self.head_dim))
        self.attention_dropout = config.attention_dropout
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states, attention_mask, route: ModuleRoute):
        """hidden_states [B, T, d], attention_mask [B, T] bool -> (output [B, T, d], weights [B, H, T, T] or None).
        Weights come back only from the "eager" implementation."""
        batch, time, _ = hidden_states.shape
        rows = None
        if route.keep is not None:  # head ids -> rows of the projections
            offsets = torch.arange(self.head_dim, device=route.keep.device)
            rows = (route.keep[:, None] * self.head_dim + offsets).reshape(-1)
        hidden_states = self.layer_norm(hidden_states)

        def project(linear, inputs):  # [B', T', d] -> [B', H, T', hd]
            out = F.linear(inputs, select_rows(linear.weight, rows), select_rows(linear.bias, rows))
            return out.view(inputs.shape[0], inputs.shape[1], -1, self.head_dim).transpose(1, 2)

        query = project(self.q_proj, hidden_states)
        key, value = project(self.k_proj, hidden_states), project(self.v_proj, hidden_states)
        implementation = self.config._attn_implementation
        padded = ~attention_mask[:, None, None, :]  # [B, 1, 1, T]: padded keys are never attended
        lowest = torch.finfo(query.dtype).min
        if self.relative:
            # the positional scores are a fresh tensor: the padding goes into them in place, and the attention
            # function gets one additive bias instead of a bias plus a mask to add
            mask, position_bias = None, self.position_scores(query, rows, route.keep, time).masked_fill_(padded, lowest)
            query = query + select_rows(self.pos_bias_u, route.keep)[None, :, None, :]
        else:
            position_bias = None
            mask = torch.zeros(padded.shape, dtype=query.dtype, device=query.device).masked_fill_(padded, lowest)
        if implementation == "flex_attention" and mask is not None:
            # flex reads a mask as mask[b][0][q][k], which crashed compiled on CPU (torch 2.13); it reads the
            # bias as bias[b, h, q, k], so the mask goes into a bias, materialised [B, H, T, T]
            position_bias, mask = mask.expand(batch, query.shape[1], time, time).contiguous(), None
        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        context, weights = attention(
            self, query, key, value, mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling, position_bias=position_bias,
        )  # [B, T, H, hd]
        if route.unit_gate is not None:
            gate = route.unit_gate
            context = context * (gate[None, None, :, None] if gate.dim() == 1 else gate[:, None, :, None])
        context = context.reshape(batch, time, -1)  # [B, T, H * hd]
        out = F.linear(context, select_columns(self.out_proj.weight, rows), self.out_proj.bias)
        return self.dropout(out), weights

    def position_scores(self, query, rows, keep, time: int) -> torch.Tensor:
        """Terms (b) + (d) of Transformer-XL's eq. 4, (q_i + v)^T W_R r_{i-j}, scaled like the content scores:
        [B, H, T, T]."""
        positions = relative_positions(time, self.config.hidden_size, query)  # [1, 2T - 1, d]
        pos_key = F.linear(positions, select_rows(self.pos_proj.weight, rows))  # [1, 2T - 1, H * hd]
        pos_key = pos_key.view(1, 2 * time - 1, -1, self.head_dim).permute(0, 2, 3, 1)  # [1, H, hd, 2T - 1]
        biased = query + select_rows(self.pos_bias_v, keep)[None, :, None, :]  # [B, H, T, hd]
        return relative_shift(torch.matmul(biased, pos_key)) * self.scaling
