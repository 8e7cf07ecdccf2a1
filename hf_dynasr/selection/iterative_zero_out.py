"""Iterative-Zero-Out, paper 1 (Xu et al., Interspeech 2024, arXiv:2407.18930).

Sigmoid gates on learnable scores, a sparsity loss toward a stepwise target, and at the end of every
iteration the lowest-scored components have their score overwritten with a large negative value; after
stage 1 every size keeps the top-scored components that fit its budget (one global ranking => nested).
"""

from __future__ import annotations

import torch
from torch import nn

from hf_dynasr.selection.base import SubnetSelector


class IterativeZeroOutSelector(SubnetSelector):
    """Iterative-Zero-Out with cost-aware budgets.

    Options (`method_kwargs`), with the values of paper 1 and its published configs:
        init_score (10.0): initial score, gate sigmoid(10) ~ 1 [code] (an identity variant starts at 1.0).
        zero_value (-5.0): score written into a zeroed component (sigmoid ~ 0.0067); it stays trainable [code].
        sparsity_weight (5.0): weight of the sparsity loss [code].
        num_iterations (16): zero-out iterations in stage 1. Paper: LBS {16,32,48}: 16 x 27,450 steps;
            TED: 8 (sizes {24,48} and {16,32,48}) or 36 ({12,24,36,48}).
        first_iteration_fraction (None): share of stage 1 taken by the first iteration, the others split
            the rest evenly. Paper: LBS equal iterations (None); TED a longer first one, e.g. 63,000 of
            210,000 steps = 0.3 for {24,48}, 42,000 / 218,400 ~ 0.19 for {16,32,48}.

    Schedule (paper 1, expressed in cost): let Z be the cost that must be removed for the smallest size to fit
    (prunable cost - (p_min * total - rest)). Iteration i (0-based) targets the zeroed cost
    Z_i = (i + 1) / num_iterations * Z; at its end the lowest-scored not-yet-zeroed components are zeroed
    (score <- zero_value, lower id first on ties) until the zeroed cost reaches Z_i. The last iteration
    ends with the last stage-1 step, so the smallest size's budget is reached exactly then. With equal
    costs this is the paper's count schedule (e.g. LBS: 2, 4, ..., 32 of 48 modules).

    Sparsity loss (paper 1, cost-weighted generalisation): `w * |sum_j c_j (1 - sigmoid(s_j)) / C_prunable - rho_i|`
    with rho_i = Z_i / C_prunable of the current iteration. With equal costs it is the paper's
    `|(N - sum_j sigmoid(s_j)) / N - rho_i|`.

    Several sizes: as in the paper, stage 1 has one soft-gated subnet, `sigmoid(s)` on all components,
    shrinking toward the smallest size; `gates(name)` returns it for every size (the caller still uses the
    size's own CTC head) and the sparsity loss is the same for all sizes. The larger sizes are read off the
    same ranking at the end.

    Final masks (paper 1): global ranking by score (zeroed components last unless they recovered); size p keeps
    the top-m components, m the largest count whose cost fits its target => nested.
    """

    method = "iterative_zero_out"
    DEFAULTS = {
        "init_score": 10.0,
        "zero_value": -5.0,
        "sparsity_weight": 5.0,
        "num_iterations": 16,
        "first_iteration_fraction": None,
    }

    def __init__(self, costs, sizes, **kwargs):
        super().__init__(costs, sizes, **kwargs)
        hp, n = self.hparams, self.num_components
        iters = hp["num_iterations"]
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
            raise ValueError(f"num_iterations must be a positive integer; got {iters!r}")
        first = hp["first_iteration_fraction"]
        if first is not None and not 0.0 < float(first) < 1.0:
            raise ValueError(f"first_iteration_fraction must be None or in (0, 1); got {first!r}")
        self.num_iterations = iters
        self.iteration_ends = self._iteration_ends(iters, first)
        prunable = sum(self.component_cost)
        self.zero_target_total = prunable - (self.sizes[self.smallest] * self.total_cost - self.rest_cost)
        #: zeroed cost each iteration aims at (Z_i)
        self.zero_targets = [(i + 1) / iters * self.zero_target_total for i in range(iters)]
        self.scores = nn.Parameter(torch.full((n,), float(hp["init_score"])))
        #: components zeroed so far (persistent schedule state)
        self.register_buffer("zeroed", torch.zeros(n, dtype=torch.bool))
        #: number of completed zero-out iterations (persistent schedule state)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def _iteration_ends(self, iters: int, first) -> list[int]:
        """Exclusive end step of each iteration; the last one is the end of stage 1."""
        s1 = self.stage1_steps()
        if first is None:
            return [round(s1 * (i + 1) / iters) for i in range(iters)]
        head = round(s1 * float(first))
        if iters == 1:
            return [s1]
        return [head] + [head + round((s1 - head) * (i + 1) / (iters - 1)) for i in range(iters - 1)]

    # --- schedule ---------------------------------------------------------------------------------
    def _current_iteration(self) -> int:
        return min(int(self.iteration), self.num_iterations - 1)

    def _update(self, next_step: int) -> None:
        while int(self.iteration) < self.num_iterations and self.iteration_ends[int(self.iteration)] <= next_step:
            self._zero_out(self.zero_targets[int(self.iteration)])
            self.iteration.add_(1)

    def _zero_out(self, target_cost: float) -> None:
        zeroed_cost = sum(self.component_cost[i] for i in torch.nonzero(self.zeroed).flatten().tolist())
        order = torch.argsort(self.scores.detach().cpu(), stable=True).tolist()  # ascending, lower id first
        alive = [i for i in order if not bool(self.zeroed[i])]
        for cid in alive[:-1]:  # never zero the last component
            if zeroed_cost >= target_cost:
                break
            self.zeroed[cid] = True
            self.scores.data[cid] = float(self.hparams["zero_value"])
            zeroed_cost += self.component_cost[cid]

    # --- interface --------------------------------------------------------------------------------
    def gates(self, name: str, step: int) -> torch.Tensor:
        self._check_name(name)
        self._check_step(step)
        return torch.sigmoid(self.scores)

    def sparsity(self) -> torch.Tensor:
        """Cost-weighted soft sparsity: the share of prunable cost whose gate is off."""
        c = self.cost_fraction
        return (c * (1.0 - torch.sigmoid(self.scores))).sum() / c.sum()

    def target_sparsity(self) -> float:
        return self.zero_targets[self._current_iteration()] / sum(self.component_cost)

    def regularizer(self, name: str, step: int) -> torch.Tensor:
        self._check_name(name)
        self._check_step(step)
        return float(self.hparams["sparsity_weight"]) * (self.sparsity() - self.target_sparsity()).abs()

    def layerdrop_components(self, step: int) -> torch.Tensor:
        return self.zeroed.clone()  # paper 1: LayerDrop on the modules already zeroed out

    def final_masks(self) -> dict[str, list[int]]:
        return self._masks_from_order(self._ranking(self.scores), "floor")

    def selection_stats(self) -> dict:
        return dict(
            iteration=int(self.iteration),
            zeroed=int(self.zeroed.sum()),
            sparsity=float(self.sparsity().detach()),
            target_sparsity=self.target_sparsity(),
        )
