"""`SelectionConfig`: the `selection:` options of a supernet training run, typed, with their defaults.

In YAML (or as JSON on the command line) the options sit in one flat mapping; the keys that are not fields
of `SelectionConfig` are the chosen method's own options (each selector class documents them in its
docstring and lists their defaults in `DEFAULTS`):

    selection:
      method: ortho_softmax     # simple_top_k | iterative_zero_out | ortho_softmax | fixed
      criterion: flops          # params | flops
      stage1_fraction: 0.6
      loss_weight: focal        # paper1 | focal
      layerdrop_stage2: 0.1
      tau0: 2.0                 # an OrthoSoftmax option

    config = SelectionConfig.from_dict(yaml_mapping["selection"])
    config.method_options       # {"tau0": 2.0}
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from hf_dynasr.selection.base import CRITERIA, DEFAULT_STAGE1_FRACTION, check_stage1_fraction
from hf_dynasr.selection.registry import METHODS

#: no selector: the sizes keep the masks the model already has (from `--init_from` or a resumed checkpoint)
FIXED = "fixed"
#: weight of each subnet's CTC loss next to the whole network's (weight 1): "paper1" = 0.3 (paper 1,
#: arXiv:2407.18930), "focal" = 1 - exp(-L), not detached (paper 2, arXiv:2501.18895)
LOSS_WEIGHTS = ("paper1", "focal")
#: which size stage 1 trains beside the whole network: "random" = a size drawn uniformly each step (paper 2
#: and its published configs), "annealed" = always the smallest, the one subnet whose gates the selector anneals
#: toward the smallest budget (paper 1's stage 1 in its published code: Simple-Top-k's k(t), Iterative-Zero-Out's
#: zeroed modules)
STAGE1_SUBNETS = ("random", "annealed")


@dataclass
class SelectionConfig:
    """How a supernet run picks and trains its sizes (papers 1 and 2: two-stage training with nested subnets).

    method: "simple_top_k", "iterative_zero_out" (paper 1), "ortho_softmax" (paper 2), or "fixed" (no
        selector; the sizes keep the masks the model already has).
    criterion: cost the sizes' budgets refer to, "params" or "flops" (a `subnets:` entry may name its own).
    stage1_fraction: share of the training steps spent in stage 1, where the selector learns the masks
        (papers 1 and 2: 0.6); in (0, 1].
    loss_weight: weight of each subnet's CTC loss, "paper1" (0.3) or "focal" (1 - exp(-L), paper 2).
    layerdrop_stage1: LayerDrop rate on the whole network's path in stage 1 (components the selector's
        smallest size currently drops), in [0, 1).
    layerdrop_stage2: the same in stage 2 (components the smallest size's frozen mask drops), in [0, 1).
    stage1_subnet: the size stage 1 trains beside the whole network: "random" (paper 2) or "annealed" (paper 1:
        the single subnet that the selector anneals toward the smallest size, trained with the smallest
        size's CTC head).
    distillation_weight: in-place distillation (once-for-all, Cai et al. 2020; BigNAS, Yu et al. 2020; not in
        the papers): in stage 2 each subnet also learns the whole network's frame posteriors of the same step
        (detached), `weight * mean over frames of KL(p_whole || p_subnet)`, added to its weighted CTC loss. 0 =
        off (the papers); >= 0.
    adaptive_ffn_dropout: paper 2's "adaptive FFN dropout" (its published configs): in stage 2 a subnet's FFN
        dropout rates are scaled by the share of the FFN's hidden units its mask keeps (the whole network's
        stay as they are). Not with gradient checkpointing (the recomputed forward would see other rates).
    paper_rest_share: the never-pruned share (frontend, output layer) of the cost in the paper a recipe's size
        fractions come from, or None (fractions used as given). With it each fraction p is re-derived so the
        size keeps the same share of the prunable cost as in the paper: `r + (1 - r) (p - r_p) / (1 - r_p)`,
        with r_p this value and r this model's rest share. Paper 2's FLOPs units (its published configs): rest
        110 of 400 on TED-LIUM (0.275), 110 of 620 on LibriSpeech (0.177); this model's FLOPs count its
        frontend lighter, so the paper's fractions would keep 16-26 % more FLOPs. In [0, 1).
    method_options: the method's own options (keys of the selector class's `DEFAULTS`); in YAML they sit
        next to the fields above.
    """

    method: str = "ortho_softmax"
    criterion: str = CRITERIA[0]
    stage1_fraction: float = DEFAULT_STAGE1_FRACTION
    loss_weight: str = "paper1"
    layerdrop_stage1: float = 0.0
    layerdrop_stage2: float = 0.1
    stage1_subnet: str = "random"
    distillation_weight: float = 0.0
    adaptive_ffn_dropout: bool = False
    paper_rest_share: float | None = None
    method_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        _choice("method", self.method, (*METHODS, FIXED))
        _choice("criterion", self.criterion, CRITERIA)
        _choice("loss_weight", self.loss_weight, LOSS_WEIGHTS)
        _choice("stage1_subnet", self.stage1_subnet, STAGE1_SUBNETS)
        check_stage1_fraction(self.stage1_fraction)
        weight = self.distillation_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight < float("inf"):
            raise ValueError(f"selection.distillation_weight must be a number >= 0 (0 = off); got {weight!r}")
        if not isinstance(self.adaptive_ffn_dropout, bool):
            raise ValueError(f"selection.adaptive_ffn_dropout must be true or false; got {self.adaptive_ffn_dropout!r}")
        share = self.paper_rest_share
        if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float))
                                  or not 0.0 <= share < 1.0):
            raise ValueError(f"selection.paper_rest_share must be None or in [0, 1) (e.g. 0.177 for paper 2's "
                             f"LibriSpeech FLOPs); got {share!r}")
        for name in ("layerdrop_stage1", "layerdrop_stage2"):
            rate = getattr(self, name)
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
                raise ValueError(f"selection.{name} must be in [0, 1); got {rate!r}")
        unknown = sorted(set(self.method_options) - set(self.allowed_method_options()))
        if unknown:
            raise ValueError(f"unknown selection option(s) {unknown} for method '{self.method}'; allowed keys: "
                             f"{', '.join(self.allowed_keys())}")

    @classmethod
    def from_dict(cls, values: dict | None) -> SelectionConfig:
        """The flat `selection:` mapping -> a config; keys that are not fields are the method's options."""
        values = dict(values or {})
        own = {f.name for f in fields(cls)} - {"method_options"}
        return cls(**{k: v for k, v in values.items() if k in own},
                   method_options={k: v for k, v in values.items() if k not in own})

    @property
    def learns_masks(self) -> bool:
        """Whether a selector learns the masks in stage 1 (every method but "fixed")."""
        return self.method != FIXED

    def allowed_method_options(self) -> tuple[str, ...]:
        return tuple(METHODS[self.method].DEFAULTS) if self.learns_masks else ()

    def allowed_keys(self) -> tuple[str, ...]:
        """Every key a `selection:` mapping with this method may hold."""
        return (*(f.name for f in fields(self) if f.name != "method_options"), *self.allowed_method_options())


def _choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"unknown selection.{name} {value!r}; allowed: {', '.join(allowed)}")
