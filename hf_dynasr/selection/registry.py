"""The selection methods by name: `METHODS` and `build_selector`."""

from __future__ import annotations

from hf_dynasr.selection.base import SubnetSelector
from hf_dynasr.selection.iterative_zero_out import IterativeZeroOutSelector
from hf_dynasr.selection.ortho_softmax import OrthoSoftmaxSelector
from hf_dynasr.selection.simple_top_k import SimpleTopKSelector

#: method name -> selector class
METHODS: dict[str, type[SubnetSelector]] = {
    cls.method: cls for cls in (SimpleTopKSelector, IterativeZeroOutSelector, OrthoSoftmaxSelector)
}


def build_selector(method: str, costs, sizes: dict[str, float], **kwargs) -> SubnetSelector:
    """The selector of `method` ("simple_top_k", "iterative_zero_out", "ortho_softmax"); `kwargs` are the
    common arguments of `SubnetSelector` (criterion, total_steps, stage1_fraction, index) plus the
    method's own options (see each class's `DEFAULTS`)."""
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; allowed: {', '.join(METHODS)}")
    return METHODS[method](costs, sizes, **kwargs)
