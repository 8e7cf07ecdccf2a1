"""Simple-Top-k, paper 1 (Xu et al., Interspeech 2024, arXiv:2407.18930).

One learnable score per component; a soft top-k relaxation of the scores gates the stage-1 subnet while k
is annealed from N - r down to k_min; after stage 1 every size keeps the top-scored components that fit its
budget, from one global ranking, so the sizes are nested.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from hf_dynasr.selection.base import SubnetSelector

EPSILON = float(np.finfo(np.float32).tiny)  # the author code's epsilon inside log(max(1 - a, eps))


def soft_top_k(scores: torch.Tensor, k: int, *, temperature: float = 1.0, eps: float = EPSILON) -> torch.Tensor:
    """Relaxed k-hot vector of `scores` [N]: in [0, 1] and summing to k, differentiable.

    The subset-operator relaxation of paper 1 (Xie & Ermon 2019; the author code links the UvA DL top-k
    notebook), repeated k times: `s <- s + log(max(1 - a, eps)); a = softmax(s / temperature); khot += a`.

    Departure (needed for gates in [0, 1]): that iteration alone sums to k but can exceed 1 when the
    scores are far apart (scores (10, 0, 0), k = 2 give (1.5, 0.25, 0.25)); a gate above 1 would amplify
    a module. Entries above 1 are therefore capped at 1 and the excess is handed to the other entries in
    proportion to their values (repeated until none exceeds 1; at most N rounds). Where no entry exceeds 1,
    which is the case for nearby scores such as the uniform initialisation, the output is the paper's."""
    n = scores.shape[-1]
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}]; got {k}")
    s = scores / temperature
    khot = torch.zeros_like(s)
    onehot = torch.zeros_like(s)
    for _ in range(int(k)):
        s = s + torch.log(torch.clamp(1.0 - onehot, min=eps))
        onehot = torch.softmax(s, dim=-1)
        khot = khot + onehot
    return cap_at_one(khot, k)


def cap_at_one(khot: torch.Tensor, k: int) -> torch.Tensor:
    """Cap entries at 1 and rescale the uncapped ones so the sum stays `k` (see `soft_top_k`)."""
    fixed = torch.zeros_like(khot, dtype=torch.bool)
    for _ in range(khot.shape[-1]):
        over = (khot > 1.0).detach() & ~fixed
        if not bool(over.any()):
            break
        fixed = fixed | over
        free = ~fixed
        need = float(k) - float(fixed.sum())
        free_sum = (khot * free).sum()
        if float(free_sum.detach()) > 0.0:
            scaled = khot * (need / free_sum)
        else:  # every free entry underflowed to 0: spread the rest evenly
            scaled = torch.full_like(khot, need / max(int(free.sum()), 1))
        khot = torch.where(fixed, torch.ones_like(khot), scaled)
    return khot.clamp(0.0, 1.0)


class SimpleTopKSelector(SubnetSelector):
    """Simple-Top-k with cost-aware sizes.

    Options (`method_kwargs`), with the values of paper 1 and its published configs:
        init_score (0.5): initial score of every component [code].
        anneal_step (1): r, components removed from k per annealing iteration. Paper: r = 1 (LBS, and TED
            with 4 sizes), r = 4 (TED with 2 or 3 sizes).
        k_min (None): the k at the end of stage 1. Paper: the smallest size's module count. `None` = the
            count of components of average cost that fits the smallest size's budget (exact for equal
            costs, i.e. the paper's count-based sizes).
        straight_through (False): forward the hard top-k indicator, backward through the soft k-hot. Paper:
            LBS True, TED False (i6_models `RelaxedTopK` default `hard=False`).
        temperature (1.0): softmax temperature inside the relaxation. Paper: the LBS config carries a
            Gumbel temperature schedule but the code never applies it, i.e. effectively 1 and no noise.

    Schedule (paper 1): `k(t) = max(N - r - floor(t / T_iter) * r, k_min)` with `T_iter = stage1_steps /
    ceil((N - k_min) / r)`, so k reaches k_min in the last annealing iteration of stage 1 (the paper's
    T_iter, e.g. 14,640 steps on LBS, is exactly this for its run length). If stage 1 has fewer steps than
    iterations, k is set to k_min at the last stage-1 step.

    Several sizes (generalisation; the paper anneals one k toward the smallest size): size p is gated with
    `k_p = max(m_p, k(t))`, where m_p is the number of top-scored components whose cost (rest + sum) fits
    p's budget under the current ranking. So every size starts near the full net, the annealed k shrinks
    all of them, and each size stops at its own cost-aware count; the smallest follows k(t) to k_min.

    Final masks (paper 1): size p keeps the top-m components by raw score, m the largest count whose cost fits
    its target; one global ranking, so the sizes are nested. Ties in scores go to the lower id.
    """

    method = "simple_top_k"
    DEFAULTS = {"init_score": 0.5, "anneal_step": 1, "k_min": None, "straight_through": False, "temperature": 1.0}

    def __init__(self, costs, sizes, **kwargs):
        super().__init__(costs, sizes, **kwargs)
        hp, n = self.hparams, self.num_components
        r = hp["anneal_step"]
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"anneal_step must be a positive integer; got {r!r}")
        if float(hp["temperature"]) <= 0:
            raise ValueError(f"temperature must be > 0; got {hp['temperature']!r}")
        k_min = hp["k_min"]
        if k_min is None:
            budget = self.sizes[self.smallest] * self.total_cost - self.rest_cost
            k_min = min(max(int(budget // (sum(self.component_cost) / n)), 1), n)
        if isinstance(k_min, bool) or not isinstance(k_min, int) or not 1 <= k_min <= n:
            raise ValueError(f"k_min must be an integer in [1, {n}]; got {k_min!r}")
        self.k_min, self.anneal_step = k_min, r
        self.num_iterations = max(1, math.ceil((n - self.k_min) / r))
        self.scores = nn.Parameter(torch.full((n,), float(hp["init_score"])))
        #: current annealed k (persistent schedule state)
        self.register_buffer("k", torch.tensor(self._k_at(0), dtype=torch.long))

    # --- schedule ---------------------------------------------------------------------------------
    def _k_at(self, t: int) -> int:
        n, r, s1 = self.num_components, self.anneal_step, self.stage1_steps()
        if t >= s1 - 1:
            return self.k_min
        iteration = (t * self.num_iterations) // s1  # floor(t / T_iter), T_iter = s1 / num_iterations
        return max(n - r - iteration * r, self.k_min)

    def _update(self, next_step: int) -> None:
        self.k.fill_(self._k_at(next_step))

    def _k_for(self, name: str, ranking: list[int]) -> int:
        m_p = self._prefix_length(ranking, self.sizes[name], "floor")
        return max(m_p, int(self.k))

    # --- interface --------------------------------------------------------------------------------
    def gates(self, name: str, step: int) -> torch.Tensor:
        self._check_name(name)
        self._check_step(step)
        ranking = self._ranking(self.scores)
        k = self._k_for(name, ranking)
        soft = soft_top_k(self.scores, k, temperature=float(self.hparams["temperature"]))
        if not self.hparams["straight_through"]:
            return soft
        hard = torch.zeros_like(soft)
        hard[torch.tensor(ranking[:k], dtype=torch.long, device=soft.device)] = 1.0
        return hard + (soft - soft.detach())  # forward: hard top-k; backward: soft k-hot (paper 1, LBS)

    def regularizer(self, name: str, step: int) -> torch.Tensor:
        self._check_name(name)
        self._check_step(step)
        return self.scores.new_zeros(())  # Simple-Top-k has no auxiliary loss

    def layerdrop_components(self, step: int) -> torch.Tensor:
        ranking = self._ranking(self.scores)
        k = self._k_for(self.smallest, ranking)  # paper 1: LayerDrop on the N - k currently lowest
        drop = torch.zeros(self.num_components, dtype=torch.bool, device=self.scores.device)
        drop[torch.tensor(ranking[k:], dtype=torch.long, device=drop.device)] = True
        return drop

    def final_masks(self) -> dict[str, list[int]]:
        return self._masks_from_order(self._ranking(self.scores), "floor")

    def selection_stats(self) -> dict:
        ranking = self._ranking(self.scores)
        scores = self.scores.detach()
        out = dict(k=int(self.k), k_min=self.k_min, score_min=float(scores.min()), score_max=float(scores.max()))
        out.update({f"k_{name}": self._k_for(name, ranking) for name in self.sizes})
        return out
