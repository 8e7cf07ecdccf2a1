"""Export and sharing: per-size checkpoints (`subnets`), torch.export and ONNX (`onnx_export`), running and measuring
the ONNX files (`onnx_report`), model cards from the templates in
`model_cards/` (`model_card`), Hub repository naming (`repo_layout`) and the push (`hub`).

Every public name imports from here.
"""

from hf_dynasr.export.hub import HubPushError, PushTarget, format_plan, plan_push, push_to_hub
from hf_dynasr.export.model_card import (
    PIPELINE_TAG,
    TAGS,
    TEMPLATE_ENV,
    clean_training_details,
    load_results,
    read_training_details,
    render_model_card,
    template_dir,
)
from hf_dynasr.export.onnx_export import export_onnx, export_program, quantize_int8
from hf_dynasr.export.onnx_report import ONNX_INT8_FILE, ONNX_REPORT, OnnxCTC
from hf_dynasr.export.repo_layout import LAYOUTS, check_layout, format_reference, is_repo_id, size_references
from hf_dynasr.export.subnets import EVAL_RESULTS, EXPORT_INFO, ONNX_FILE, PLOT_FILE, SUPERNET_DIR, export_subnets

__all__ = [
    "EVAL_RESULTS",
    "EXPORT_INFO",
    "HubPushError",
    "LAYOUTS",
    "ONNX_FILE",
    "ONNX_INT8_FILE",
    "ONNX_REPORT",
    "OnnxCTC",
    "PIPELINE_TAG",
    "PLOT_FILE",
    "PushTarget",
    "SUPERNET_DIR",
    "TAGS",
    "TEMPLATE_ENV",
    "check_layout",
    "clean_training_details",
    "export_onnx",
    "export_program",
    "export_subnets",
    "format_plan",
    "format_reference",
    "is_repo_id",
    "load_results",
    "plan_push",
    "push_to_hub",
    "quantize_int8",
    "read_training_details",
    "render_model_card",
    "size_references",
    "template_dir",
]
