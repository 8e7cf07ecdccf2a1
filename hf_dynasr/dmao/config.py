"""DMAO's options: `DMAOConfig`, a typed and checked set of hyper-parameters (paper 3, Xu et al., Interspeech
2025, arXiv:2506.13180)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_dynasr.models.dynasr.configuration_dynasr import check_choice
from hf_dynasr.models.dynasr.modules_dynasr import MODULE_CLASSES

SCORES = ("taylor", "grad", "weight")
INITS = ("copy", "function_preserving", "random_split")
#: optimizer state of a grown copy: its parent's moments ("parent") or zero moments ("fresh")
COPY_STATES = ("parent", "fresh")
#: unit kinds, one per module type (FFN1 and FFN2 share "ffn"); a kind the block type lacks has no units
UNIT_KINDS = tuple(dict.fromkeys(module_class.dmao_kind for module_class in MODULE_CLASSES.values()))


@dataclass
class DMAOConfig:
    """Hyper-parameters of DMAO (paper 3, Xu et al., Interspeech 2025; defaults as there unless noted).

    events: reallocation points as fractions of the total training steps, each in (0, 1).
    rho: replaced fraction of the budget per event, in (0, 1).
    beta: EMA weight of the old score: `s <- beta*s + (1-beta)*s_new` (paper 0.1).
    score: "taylor" (|grad * weight|, paper default), "grad" (|grad|) or "weight" (|weight|).
    update_every: steps between score updates. Departure from the default rule above: 10, not the paper's
        1000, because the runs this project trains on a CPU are 1,000 to a few thousand updates long, where a
        score every 1,000 steps would be one or two measurements; the paper recipes set 1000.
    init: growth init. "copy" (paper): exact copies; with all dropout off a copy and its parent then get
        identical gradients and updates and stay clones forever. "function_preserving" (Net2Net, Chen et al.
        2016): the outgoing weights split equally between parent and copies; output unchanged, but still
        symmetric. "random_split": the outgoing weights split between parent and copies in random shares
        (each in [0.5, 1.5] before normalising to sum 1, per outgoing weight): output unchanged and the
        copies' incoming gradients differ from the parent's, so they diverge (not in the paper).
    noise_std: std of Gaussian noise added to grown copies' weights (paper default 0); also breaks the symmetry.
    copy_state: optimizer state of a grown copy: "parent" (its parent's AdamW moments) or "fresh" (zero
        moments; kept units keep theirs). The paper's handling is not visible in its code.
    adjust_dropout: paper 3's "adjust_dropout" (True in its published TED-LIUM E-Branchformer config): the
        dropout of each FFN and self-attention module scaled by its size over the nominal size
        (`hf_dynasr.dmao.reshape.adjust_dropout`). Default False (the paper's LibriSpeech configs).
    unit_kinds: kinds of units that may be dropped or grown, from ("ffn", "mhsa", "conv", "cgmlp").
    seed: seed of the growth noise (same on every rank, so all ranks build the same weights).
    """

    events: list[float] = field(default_factory=lambda: [0.15])
    rho: float = 0.15
    beta: float = 0.1
    score: str = "taylor"
    update_every: int = 10
    init: str = "copy"
    noise_std: float = 0.0
    copy_state: str = "parent"
    adjust_dropout: bool = False
    unit_kinds: tuple = UNIT_KINDS
    seed: int = 0

    def __post_init__(self):
        self.events = sorted(float(e) for e in self.events)
        self.unit_kinds = tuple(self.unit_kinds)
        if not 0.0 < float(self.rho) < 1.0:
            raise ValueError(f"rho must be in (0, 1) (the replaced fraction of the budget); got {self.rho!r}")
        if not self.events:
            raise ValueError("events is empty; give at least one fraction of training in (0, 1), e.g. [0.15]")
        bad = [e for e in self.events if not 0.0 < e < 1.0]
        if bad:
            raise ValueError(f"events must be fractions of training in (0, 1); got {bad}")
        if not 0.0 <= float(self.beta) <= 1.0:
            raise ValueError(f"beta must be in [0, 1]; got {self.beta!r}")
        check_choice("score", self.score, SCORES)
        check_choice("init", self.init, INITS)
        check_choice("copy_state", self.copy_state, COPY_STATES)
        for kind in self.unit_kinds:
            check_choice("unit_kinds entry", kind, UNIT_KINDS)
        if not self.unit_kinds:
            raise ValueError(f"unit_kinds is empty; choose from {', '.join(UNIT_KINDS)}")
        if not isinstance(self.adjust_dropout, bool):
            raise ValueError(f"adjust_dropout must be true or false; got {self.adjust_dropout!r}")
        if not isinstance(self.update_every, int) or self.update_every < 1:
            raise ValueError(f"update_every must be a positive integer; got {self.update_every!r}")
        if float(self.noise_std) < 0:
            raise ValueError(f"noise_std must be >= 0; got {self.noise_std!r}")

    def event_steps(self, total_steps: int) -> list[int]:
        """Steps of the events; each must fall strictly inside training and they must differ."""
        if not isinstance(total_steps, int) or total_steps < 2:
            raise ValueError(f"total_steps must be an integer >= 2; got {total_steps!r}")
        steps = [int(e * total_steps) for e in self.events]
        late = [(e, s) for e, s in zip(self.events, steps) if not 1 <= s < total_steps]
        if late:
            raise ValueError(
                f"events {[e for e, _ in late]} fall at steps {[s for _, s in late]}, outside training "
                f"(steps 1..{total_steps - 1} of total_steps={total_steps})"
            )
        if len(set(steps)) != len(steps):
            raise ValueError(f"events {self.events} collapse onto the same steps {steps}; space them further apart")
        return steps
