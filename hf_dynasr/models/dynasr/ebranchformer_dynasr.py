"""E-Branchformer block with component gates (Kim et al. 2022, "E-Branchformer"; paper 3's TED-LIUM model).

    x += 0.5 FFN1(x)
    g = MHSA(x)      (global branch, heads)        } in parallel on the same input
    l = cgMLP(x)     (local branch, gating units)  }
    c = concat(g, l);  x += dropout(Linear(2d -> d)(c + depthwise_conv(c)))    (the branch merge)
    x += 0.5 FFN2(x);  x = LN(x)

FFN1, MHSA, cgMLP and FFN2 are the prunable modules (`components_dynasr.BLOCK_MODULES["ebranchformer"]`). They
are the gated classes of modules_dynasr.py (the cgMLP sits there too, in the one `MODULE_CLASSES` registry that
extraction, lazy loading, costs and DMAO read), so all of those treat them like the Conformer's. The merge
is not prunable: its parameters are part of the "rest". A branch that is absent (spec size 0) or fully
masked contributes zeros to its half of the concatenation, so a masked supernet and the extracted model
(whose spec has 0 for that branch) compute the same thing.

Departures from ESPnet's EBranchformerEncoderLayer: the pre-LayerNorms of the branches and FFNs sit inside the
modules (as in the Conformer parts here); the cgMLP's gate LayerNorm is chunk-wise (see modules_dynasr.py);
padded frames are zeroed before each depthwise conv, so a padded batch equals each utterance alone.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .components_dynasr import RESIDUAL_SCALE, module_names
from .gating_dynasr import ModuleRoute, apply_module
from .modules_dynasr import MODULE_CLASSES


class DynaSRBranchMerge(nn.Module):
    """concat(global, local) [B, T, 2d] -> c + depthwise conv(c) (kernel `conv_kernel_size`, the paper's merge
    kernel 31) -> Linear(2d, d) -> dropout. A missing branch is a zero half."""

    def __init__(self, config):
        super().__init__()
        width = 2 * config.hidden_size
        kernel = config.conv_kernel_size
        self.depthwise = nn.Conv1d(width, width, kernel, padding=kernel // 2, groups=width)
        self.linear = nn.Linear(width, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, global_out, local_out, hidden_states, attention_mask):  # branch outputs [B, T, d] or None
        zeros = hidden_states.new_zeros(hidden_states.shape)
        merged = torch.cat([zeros if global_out is None else global_out, zeros if local_out is None else local_out], -1)
        merged = merged.masked_fill(~attention_mask[..., None], 0.0)  # padded frames never reach real ones
        merged = merged + self.depthwise(merged.transpose(1, 2)).transpose(1, 2)
        return self.dropout(self.linear(merged))


class DynaSREBranchformerBlock(GradientCheckpointingLayer):
    """One E-Branchformer block; a module of size 0 in the architecture spec is absent (`None`). Checkpointed
    like the Conformer block (`DynaSREncoderBlock`) under `gradient_checkpointing_enable()`."""

    def __init__(self, config, block_spec: dict):
        super().__init__()
        for name in module_names("ebranchformer"):
            size = block_spec[name]
            setattr(self, name, MODULE_CLASSES[name](config, size) if size > 0 else None)
        self.merge = DynaSRBranchMerge(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states, attention_mask, routes: dict[str, ModuleRoute]):  # [B, T, d], [B, T]
        hidden_states = self._macaron("ffn1", hidden_states, attention_mask, routes)
        global_out = apply_module(self.mhsa, hidden_states, attention_mask, routes["mhsa"])
        local_out = apply_module(self.cgmlp, hidden_states, attention_mask, routes["cgmlp"])
        hidden_states = hidden_states + self.merge(global_out, local_out, hidden_states, attention_mask)
        hidden_states = self._macaron("ffn2", hidden_states, attention_mask, routes)
        return self.layer_norm(hidden_states)

    def _macaron(self, name, hidden_states, attention_mask, routes):
        out = apply_module(getattr(self, name), hidden_states, attention_mask, routes[name])
        return hidden_states if out is None else hidden_states + RESIDUAL_SCALE[name] * out


__all__ = ["DynaSRBranchMerge", "DynaSREBranchformerBlock"]
