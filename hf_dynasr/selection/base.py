"""The interface every subnet-selection method implements (papers 1 and 2: two-stage supernet training).

A selector owns the learnable selection scores (``nn.Parameter``s, optimised together with the model) and
the schedule state (persistent buffers, so ``load_state_dict`` resumes stage 1 exactly). It never touches
the model: it hands out soft gates over the component index (``model(component_gates=...)``), a
regulariser to add to the loss, the components LayerDrop should hit on the full path, and at the stage
boundary one nested binary mask per size for ``model.add_subnet(name, components=mask)``.

Steps are 0-based: steps ``0 .. stage1_steps() - 1`` are stage 1 (papers 1 and 2: ~60% of the updates).
Call order per training step ``t``: ``gates(name, t)`` / ``regularizer(name, t)`` / ``layerdrop_components(t)``,
backward, optimizer step, then ``end_of_step(t)`` exactly once. The selector counts the steps itself and
refuses a ``gates``/``regularizer`` call for another step than the one it is at, so a forgotten
``end_of_step`` or a resume without the selector's state_dict fails loudly instead of silently
running another schedule.

Sizes are fractions of the criterion's total cost (``costs.of(criterion)``); the full net is implicit. The
kept cost of a mask is ``rest + sum(kept component costs)``, where ``rest`` (frontend, output layer, final
norms...) is never pruned.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from hf_dynasr.models.dynasr import FULL
from hf_dynasr.models.dynasr.components_dynasr import ComponentIndex
from hf_dynasr.models.dynasr.costs_dynasr import COST_CRITERIA, ComponentCosts

CRITERIA = COST_CRITERIA  # the cost criteria a size target may use
#: share of the training steps spent in stage 1 (papers 1 and 2 train 60 % of the updates in stage 1)
DEFAULT_STAGE1_FRACTION = 0.6


def check_stage1_fraction(value) -> None:
    """A ValueError unless `value` is a share of the training steps in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
        raise ValueError(f"stage1_fraction must be in (0, 1]; got {value!r}")


class SubnetSelector(nn.Module, abc.ABC):
    """Abstract base: validation, sizes, costs, step counting and the budget fitting shared by all methods.

    Args:
        costs: per-component costs of the supernet (`model.component_costs()`).
        sizes: size name -> target as a fraction in (0, 1) of the criterion's total, e.g.
            `{"small": 0.35, "mid": 0.67}`. The full net is implicit and must not be listed.
        criterion: `"params"` or `"flops"` (which cost vector of `costs` budgets refer to).
        total_steps: optimizer steps of the whole run (stage 1 + stage 2); all schedules are fractions of it.
        stage1_fraction: share of `total_steps` spent in stage 1 (default 0.6, as in papers 1 and 2).
        index: the model's `ComponentIndex` (optional; only checked against `costs` and used for names).
        **method_kwargs: the method's own options, see `DEFAULTS` of each subclass.
    """

    #: registry name of the method (`build_selector(method, ...)`)
    method: ClassVar[str] = ""
    #: method kwarg -> default. Each subclass documents every entry with its paper value.
    DEFAULTS: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        costs: ComponentCosts,
        sizes: dict[str, float],
        *,
        criterion: str = CRITERIA[0],
        total_steps: int,
        stage1_fraction: float = DEFAULT_STAGE1_FRACTION,
        index: ComponentIndex | None = None,
        **method_kwargs,
    ):
        super().__init__()
        if criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {criterion!r}; allowed: {', '.join(CRITERIA)}")
        comp_costs, total = costs.of(criterion)
        comp_costs = tuple(int(c) for c in comp_costs)
        if not comp_costs:
            raise ValueError("the model has no prunable components; nothing to select")
        if any(c <= 0 for c in comp_costs):
            bad = [i for i, c in enumerate(comp_costs) if c <= 0]
            raise ValueError(f"component costs must be positive; components {bad[:10]} cost <= 0 ({criterion})")
        if index is not None and len(index) != len(comp_costs):
            raise ValueError(f"index has {len(index)} components but costs describe {len(comp_costs)}")
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be a positive integer; got {total_steps!r}")
        check_stage1_fraction(stage1_fraction)
        unknown = sorted(set(method_kwargs) - set(self.DEFAULTS))
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for method '{self.method}'; allowed: {', '.join(self.DEFAULTS) or 'none'}"
            )

        self.criterion = criterion
        self.total_steps = total_steps
        self.stage1_fraction = float(stage1_fraction)
        self.index = index
        self.component_cost: tuple[int, ...] = comp_costs
        self.total_cost = int(total)
        self.rest_cost = self.total_cost - sum(comp_costs)
        self.sizes: dict[str, float] = self._check_sizes(sizes)
        self.hparams: dict[str, Any] = {**self.DEFAULTS, **method_kwargs}
        # Parameters and buffers are created like any module's (no device=: a torch.device context applies) and
        # move with `.to(device)`; the trainer moves the selector to the accelerator's device.
        # costs as fractions of the total (float, for the differentiable cost-aware parts); not state
        self.register_buffer(
            "cost_fraction", torch.tensor(comp_costs, dtype=torch.float64).div(self.total_cost).float(),
            persistent=False,
        )
        #: number of completed steps (= the step the selector expects next); persistent schedule state
        self.register_buffer("step_count", torch.zeros((), dtype=torch.long))

    # --- validation -------------------------------------------------------------------------------
    def _check_sizes(self, sizes) -> dict[str, float]:
        if not isinstance(sizes, dict) or not sizes:
            raise ValueError("sizes must be a non-empty dict name -> fraction of the total cost, e.g. {'small': 0.35}")
        out = {}
        min_fraction = self.rest_cost / self.total_cost
        for name, fraction in sizes.items():
            if not isinstance(name, str) or not name or name == FULL:
                raise ValueError(f"size names must be non-empty strings other than '{FULL}'; got {name!r}")
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
                raise ValueError(
                    f"size '{name}' has fraction {fraction!r}; fractions must lie in the open interval (0, 1) "
                    f"(target / total {self.criterion}; the full net is implicit)"
                )
            if fraction <= min_fraction:
                raise ValueError(
                    f"size '{name}' (fraction {fraction}) is not above the never-pruned rest of the model "
                    f"({self.rest_cost} of {self.total_cost} {self.criterion} = {min_fraction:.4f}); "
                    "choose a larger fraction"
                )
            out[name] = float(fraction)
        return dict(sorted(out.items(), key=lambda item: (item[1], item[0])))  # ascending fraction

    def _check_name(self, name: str) -> float:
        if name not in self.sizes:
            raise ValueError(f"unknown size {name!r}; sizes: {', '.join(self.sizes)}")
        return self.sizes[name]

    def _check_step(self, step: int) -> None:
        if int(step) != int(self.step_count):
            raise ValueError(
                f"the selector is at step {int(self.step_count)} but was called for step {step}; call "
                "end_of_step(step) once after every optimizer step, and load the selector's state_dict on resume"
            )

    # --- shared helpers ---------------------------------------------------------------------------
    @property
    def num_components(self) -> int:
        return len(self.component_cost)

    @property
    def smallest(self) -> str:
        return next(iter(self.sizes))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A DMAO event reshapes the model only after stage 1 (events in stage 1 are refused at start-up) and leaves
        # the selector, whose selection is over, as it was. A run resumed after an event builds its selector on the
        # reshaped model, so the tensors sized by the component count differ from the checkpoint's: once stage 1 is
        # over they are taken as saved, in place (the optimizer keeps the same Parameter objects), so the resumed
        # selector equals the uninterrupted run's. In stage 1 a shape mismatch stays an error.
        saved_steps = state_dict.get(prefix + "step_count")
        if saved_steps is not None and int(saved_steps) >= self.stage1_steps():
            for name, tensor in [*self._parameters.items(), *self._buffers.items()]:
                saved = state_dict.get(prefix + name)
                if tensor is not None and saved is not None and saved.shape != tensor.shape:
                    tensor.data = saved.detach().to(device=tensor.device, dtype=tensor.dtype).clone()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def stage1_steps(self) -> int:
        """Steps of stage 1: `round(stage1_fraction * total_steps)`, at least 1."""
        return max(1, int(round(self.stage1_fraction * self.total_steps)))

    def target(self, name: str) -> float:
        """Absolute budget of a size in the criterion's unit."""
        return self._check_name(name) * self.total_cost

    def kept_cost(self, ids: Sequence[int]) -> int:
        """Cost of the net that keeps exactly `ids`: rest + their costs."""
        return self.rest_cost + sum(self.component_cost[i] for i in ids)

    def _prefix_length(self, order: Sequence[int], fraction: float, mode: str) -> int:
        """How many leading components of `order` a size of `fraction` keeps (always >= 1).

        `"floor"`: the largest prefix whose cost fits the budget (paper 1: top-m that fit). Its kept cost is at
        most the target and less than one component below it.
        `"nearest"`: the prefix whose cost is closest to the budget, ties to the shorter one (paper 2's K(p)
        formula on hard costs). Its kept cost is within half a component of the target.
        Both are non-decreasing in `fraction`, so prefixes of one order are nested."""
        target = fraction * self.total_cost
        cum, best, best_gap = self.rest_cost, 1, math.inf
        for m, cid in enumerate(order, start=1):
            cum += self.component_cost[cid]
            if mode == "floor":
                if cum > target:
                    break
                best = m
            else:
                gap = abs(cum - target)
                if gap < best_gap:
                    best, best_gap = m, gap
        return best

    def _masks_from_order(self, order: Sequence[int], mode: str) -> dict[str, list[int]]:
        """Nested masks: every size keeps a prefix of one global order."""
        order = [int(i) for i in order]
        if sorted(order) != list(range(self.num_components)):
            raise AssertionError("selection order must be a permutation of the component ids")
        masks = {name: sorted(order[: self._prefix_length(order, p, mode)]) for name, p in self.sizes.items()}
        return masks

    def _ranking(self, scores: torch.Tensor) -> list[int]:
        """Component ids by descending score; ties go to the lower id (deterministic)."""
        return torch.argsort(scores.detach().cpu(), descending=True, stable=True).tolist()

    # --- the interface ----------------------------------------------------------------------------
    @abc.abstractmethod
    def gates(self, name: str, step: int) -> torch.Tensor:
        """[N] soft gates in [0, 1] of size `name` in stage 1, differentiable w.r.t. the scores."""

    @abc.abstractmethod
    def regularizer(self, name: str, step: int) -> torch.Tensor:
        """Scalar loss term of the method (add it to the training loss)."""

    @abc.abstractmethod
    def layerdrop_components(self, step: int) -> torch.Tensor:
        """[N] bool: the components the smallest subnet currently drops (papers 1 and 2: LayerDrop on the
        whole network's path hits exactly these)."""

    @abc.abstractmethod
    def final_masks(self) -> dict[str, list[int]]:
        """Size name -> sorted kept component ids; binary, nested, each within one component's cost of its
        target. Call at the stage boundary and pass to `model.add_subnet(name, components=mask)`."""

    def end_of_step(self, step: int) -> None:
        """Advance the schedules after the optimizer step of `step` (no grad)."""
        self._check_step(step)
        with torch.no_grad():
            self.step_count.add_(1)
            self._update(int(self.step_count))

    @abc.abstractmethod
    def _update(self, next_step: int) -> None:
        """Bring the schedule state to the start of `next_step` (called under no_grad)."""

    def describe(self, step: int) -> dict:
        """A few numbers for logging: the step and stage, and in stage 1 the method's own (`selection_stats`).
        After stage 1 the selection is frozen into the config: its numbers no longer change, and after a DMAO event
        they would describe components the reshaped model no longer has."""
        stage = 1 if int(step) < self.stage1_steps() else 2
        return {"step": int(step), "stage": stage, **(self.selection_stats() if stage == 1 else {})}

    def selection_stats(self) -> dict:
        """The method's own numbers for logging in stage 1 (none here)."""
        return {}

    def extra_repr(self) -> str:
        sizes = ", ".join(f"{n}={p:g}" for n, p in self.sizes.items())
        return (
            f"N={self.num_components}, criterion={self.criterion}, sizes=({sizes}), total_steps={self.total_steps}, "
            f"stage1_steps={self.stage1_steps()}"
        )
