"""DMAO grow-and-drop (Xu et al., Interspeech 2025): utilisation scores, the drop/grow plan, the reshape of
weights and optimizer state, and reports of the resulting architecture."""

from hf_dynasr.dmao.grow_and_drop import DMAO, DMAOConfig, architecture_table, unit_config
from hf_dynasr.dmao.reshape import rebuild_module, refresh_component_index, remap_subnets, transfer_optimizer_state

__all__ = ["DMAO", "DMAOConfig", "architecture_table", "rebuild_module", "refresh_component_index", "remap_subnets",
           "transfer_optimizer_state", "unit_config"]
