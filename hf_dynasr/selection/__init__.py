"""Subnet selection: one interface (`SubnetSelector`), three methods (methods.md A.2, A.3).

```python
from hf_dynasr.selection import build_selector

selector = build_selector("ortho_softmax", model.component_costs(), {"small": 0.35, "mid": 0.67},
                          criterion="params", total_steps=400_000, index=model.component_index)
optimizer = torch.optim.AdamW([*model.parameters(), *selector.parameters()], lr=4e-4)
for step in range(selector.stage1_steps()):
    name = pick_size(step)                       # the caller chooses the size trained this step
    loss = model(feats, mask, labels, subnet=name, component_gates=selector.gates(name, step)).loss
    loss = loss + selector.regularizer(name, step)  # + the full net's loss, LayerDrop on
    ...                                          # selector.layerdrop_components(step)
    loss.backward(); optimizer.step(); optimizer.zero_grad(); selector.end_of_step(step)
for name, ids in selector.final_masks().items():  # nested binary masks at the stage boundary
    model.add_subnet(name, components=ids, criterion="params", target=selector.target(name))
```
"""

from __future__ import annotations

from hf_dynasr.selection.base import CRITERIA, SubnetSelector
from hf_dynasr.selection.iterative_zero_out import IterativeZeroOutSelector
from hf_dynasr.selection.ortho_softmax import OrthoSoftmaxSelector, orthogonality_penalty
from hf_dynasr.selection.simple_top_k import SimpleTopKSelector, soft_top_k

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


__all__ = [
    "CRITERIA",
    "METHODS",
    "IterativeZeroOutSelector",
    "OrthoSoftmaxSelector",
    "SimpleTopKSelector",
    "SubnetSelector",
    "build_selector",
    "orthogonality_penalty",
    "soft_top_k",
]
