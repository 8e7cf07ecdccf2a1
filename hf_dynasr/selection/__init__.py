"""Subnet selection: one interface (`SubnetSelector`), three methods (papers 1 and 2), typed options.

```python
from hf_dynasr.selection import build_selector

selector = build_selector("ortho_softmax", model.component_costs(), {"small": 0.35, "mid": 0.67},
                          criterion="params", total_steps=400_000, index=model.component_index)
optimizer = torch.optim.AdamW([*model.parameters(), *selector.parameters()], lr=4e-4)
for step in range(selector.stage1_steps()):
    name = pick_size(step)                       # the caller chooses the size trained this step
    loss = model(feats, mask, labels, subnet=name, component_gates=selector.gates(name, step)).loss
    loss = loss + selector.regularizer(name, step)  # + the whole network's loss, LayerDrop on
    ...                                          # selector.layerdrop_components(step)
    loss.backward(); optimizer.step(); optimizer.zero_grad(); selector.end_of_step(step)
for name, ids in selector.final_masks().items():  # nested binary masks at the stage boundary
    model.add_subnet(name, components=ids, criterion="params", target=selector.target(name))
```

Simple-Top-k and Iterative-Zero-Out: paper 1 (Xu et al., Interspeech 2024, arXiv:2407.18930); OrthoSoftmax:
paper 2 (Xu et al., ICASSP 2025, arXiv:2501.18895). `SelectionConfig` holds a training run's `selection:` options.
"""

from __future__ import annotations

from hf_dynasr.selection.base import CRITERIA, DEFAULT_STAGE1_FRACTION, SubnetSelector
from hf_dynasr.selection.iterative_zero_out import IterativeZeroOutSelector
from hf_dynasr.selection.options import FIXED, LOSS_WEIGHTS, STAGE1_SUBNETS, SelectionConfig
from hf_dynasr.selection.ortho_softmax import OrthoSoftmaxSelector, orthogonality_penalty
from hf_dynasr.selection.registry import METHODS, build_selector
from hf_dynasr.selection.simple_top_k import SimpleTopKSelector, soft_top_k

__all__ = [
    "CRITERIA",
    "DEFAULT_STAGE1_FRACTION",
    "FIXED",
    "LOSS_WEIGHTS",
    "METHODS",
    "IterativeZeroOutSelector",
    "OrthoSoftmaxSelector",
    "STAGE1_SUBNETS",
    "SelectionConfig",
    "SimpleTopKSelector",
    "SubnetSelector",
    "build_selector",
    "orthogonality_penalty",
    "soft_top_k",
]
