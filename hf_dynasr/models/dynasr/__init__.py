"""The DynaSR model folder: configuration, modelling and loading of a CTC Conformer supernet.

This folder is closed: it imports only torch, transformers, safetensors and its own files, because
`save_pretrained` copies exactly these files next to a checkpoint for `trust_remote_code=True` loading.
"""

from .configuration_dynasr import DynaSRConfig
from .modeling_dynasr import DynaSRForCTC, DynaSRModel, DynaSRPreTrainedModel

__all__ = ["DynaSRConfig", "DynaSRForCTC", "DynaSRModel", "DynaSRPreTrainedModel"]
