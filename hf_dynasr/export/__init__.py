"""Per-size export (checkpoints, ONNX, model cards from `model_cards/`) and the Hub push."""

from hf_dynasr.export.hub import HubPushError, export_subnets, push_to_hub

__all__ = ["HubPushError", "export_subnets", "push_to_hub"]
