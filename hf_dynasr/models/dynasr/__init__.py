"""The DynaSR model folder: configuration, modelling and loading of a CTC Conformer supernet.

This folder is closed: it imports only torch, transformers, safetensors and its own files (relatively, as
`from .x_dynasr import ...`), because `save_pretrained` copies exactly the modelling file, the configuration
file and their relative imports next to a checkpoint for `trust_remote_code=True` loading.
"""

from .components_dynasr import Component, ComponentIndex
from .configuration_dynasr import SUBNET_CRITERIA, DynaSRConfig
from .costs_dynasr import COST_CRITERIA, ComponentCosts
from .modeling_dynasr import DynaSRForCTC, DynaSRModel, DynaSRPreTrainedModel
from .subnets_dynasr import FULL

__all__ = ["COST_CRITERIA", "FULL", "SUBNET_CRITERIA", "Component", "ComponentCosts", "ComponentIndex",
           "DynaSRConfig", "DynaSRForCTC", "DynaSRModel", "DynaSRPreTrainedModel"]
