"""DMAO grow-and-drop (paper 3, Xu et al., Interspeech 2025, arXiv:2506.13180): utilisation scores, the drop/grow
plan and events (`grow_and_drop`), its options (`config`), the reshape of weights and optimizer state
(`reshape`), and reports of the resulting architecture (`report`, `cli`)."""

from hf_dynasr.dmao.config import DMAOConfig
from hf_dynasr.dmao.grow_and_drop import DMAO, unit_config
from hf_dynasr.dmao.report import architecture_table
from hf_dynasr.dmao.reshape import rebuild_module, refresh_component_index, remap_subnets, transfer_optimizer_state

__all__ = ["DMAO", "DMAOConfig", "architecture_table", "rebuild_module", "refresh_component_index", "remap_subnets",
           "transfer_optimizer_state", "unit_config"]
