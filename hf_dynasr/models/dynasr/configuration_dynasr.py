"""DynaSRConfig: a CTC Conformer supernet with an architecture spec and named, nested subnets.

The config is the single source of truth for the model's shape: ``architecture_spec`` gives, per
block, the size of each module (0 = absent), so the supernet, every extracted size and every
DMAO-reshaped model are all loaded by one class without shape surprises.
"""

from __future__ import annotations

import re

from transformers import PretrainedConfig

from .components_dynasr import BLOCK_MODULES, BlockSpec, count_components, module_names
from .costs_dynasr import COST_CRITERIA
from .modules_dynasr import MODULE_CLASSES

SUBNETS_SCHEMA_VERSION = 1
BLOCK_TYPES = tuple(BLOCK_MODULES)  # ("conformer", "ebranchformer")
FRONTEND_TYPES = ("vgg4x", "conv2d4x")
GRANULARITIES = ("module", "component")
CONV_GRANULARITIES = ("module", "chunk")
POSITION_ENCODINGS = ("relative", "none")
#: order of the two middle modules of a Conformer block: MHSA then Conv (i6 ConformerBlockV1, papers 1 and 2 on
#: LibriSpeech) or Conv then MHSA (the authors' published paper-1 TED-LIUM and paper-3 LibriSpeech configs)
BLOCK_ORDERS = ("mhsa_conv", "conv_mhsa")
#: LayerNorm of the conv module's (and cgMLP's) channels: per chunk unless the module is one component ("auto"),
#: or always per chunk ("chunk", every checkpoint saved before the option)
CONV_NORMS = ("auto", "chunk")
#: criteria a named subnet may record: a cost criterion, or "manual" (components picked by hand)
SUBNET_CRITERIA = (*COST_CRITERIA, "manual")
_SUBNET_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


class DynaSRConfig(PretrainedConfig):
    r"""Configuration of [`DynaSRForCTC`]. Defaults follow the LibriSpeech model of the RWTH papers
    (12 Conformer blocks, d=512, 8 heads of 64, FFN 2048, conv kernel 31, VGG 4x frontend, dropout 0.1).

    Args:
        vocab_size (`int`, defaults to 30): CTC output labels, blank (= `pad_token_id`) included.
        num_mel_bins (`int`, defaults to 80): log-mel features per input frame (10 ms hop).
        hidden_size (`int`, defaults to 512): model dimension d.
        num_hidden_layers (`int`, defaults to 12): Conformer blocks.
        num_attention_heads (`int`, defaults to 8): nominal heads per block; must divide `hidden_size`
            and fixes the head size `hidden_size // num_attention_heads`.
        intermediate_size (`int`, defaults to 2048): nominal FFN hidden units.
        conv_channels (`int`, *optional*): nominal channels of the conv module; `None` = `hidden_size`.
        conv_kernel_size (`int`, defaults to 31): depthwise conv kernel (odd).
        block_type (`str`, defaults to `"conformer"`): `"conformer"` (FFN1, MHSA, Conv, FFN2) or `"ebranchformer"`
            (E-Branchformer, Kim et al. 2022: FFN1, then MHSA and cgMLP in parallel merged by a depthwise conv and
            Linear(2d, d), then FFN2; paper 3's TED-LIUM model). The block type fixes the spec keys.
        block_order (`str`, defaults to `"mhsa_conv"`): Conformer blocks only: `"mhsa_conv"` (FFN1, MHSA, Conv, FFN2;
            the i6 ConformerBlockV1 order of papers 1 and 2 on LibriSpeech) or `"conv_mhsa"` (FFN1, Conv, MHSA, FFN2;
            the authors' published configs of paper 1 on TED-LIUM and paper 3 on LibriSpeech). Only the order of
            computation changes: the component index and the weights' names stay the same.
        frontend_type (`str`, defaults to `"vgg4x"`): `"vgg4x"` (the papers' VGG 4-layer frontend, 4x time
            subsampling) or `"conv2d4x"` (two strided convs, the second depthwise-separable; much cheaper
            on CPU). Both give `frames // 4` output frames.
        frontend_channels (`int`, defaults to 64): channels of the `"conv2d4x"` frontend.
        hidden_dropout (`float`, defaults to 0.1): dropout on every residual branch output.
        activation_dropout (`float`, defaults to 0.1): dropout inside the FFN, after the activation.
        attention_dropout (`float`, defaults to 0.1): dropout on attention weights.
        position_encoding (`str`, defaults to `"none"`): positional information in self-attention.
            `"relative"`: relative positional encoding as in the Conformer (Gulati et al. 2020, sec. 2.1), the
            Transformer-XL form (Dai et al. 2019, sec. 3.3) with per-head content and position biases and a
            per-head projection of sinusoidal relative positions, as Parakeet/NeMo use; its parameters belong
            to their head, so a pruned head takes them along. It costs about 11 % of a training step and 17 %
            of the FLOPs of the demo model (T' = 250 frames at 10 s). `"none"`: attention is order-blind and only
            the convolutions carry position. The default is `"none"` because it measured better on the demo
            recipe at equal wall time (full-size test CER 25.0 % against 26.0 %, one seed each, the README's
            position-encoding table); the paper recipes (`training/configs/librispeech_960h*.yaml`,
            `tedlium2*.yaml`) use `"relative"`, as the Conformers of the papers do. A checkpoint whose config has
            no such key (saved before the option existed) loads as `"none"`.
        final_dropout (`float`, defaults to 0.0): dropout before the CTC output layers.
        layer_norm_eps (`float`, defaults to 1e-5): LayerNorm epsilon.
        architecture_spec (`list[dict]`, *optional*): per block `{"ffn1": units, "mhsa": heads, "conv":
            channels, "ffn2": units}` (Conformer) or `{"ffn1", "mhsa", "cgmlp": units, "ffn2"}` (E-Branchformer);
            0 removes the module. `None` = uniform nominal sizes. FFN sizes must be multiples of `ffn_chunk_size`,
            conv sizes of `conv_chunk_size`, cgMLP sizes of `cgmlp_chunk_size`.
        ffn_chunk_size (`int`, *optional*): FFN hidden units per component; `None` = `intermediate_size // 4`.
        conv_chunk_size (`int`, *optional*): conv channels per chunk; `None` = `conv_channels // 4`. When the conv
            module's chunks are components (`conv_granularity="chunk"`), its LayerNorm normalises each chunk
            separately, so removing a chunk does not change the others (a departure from the single LayerNorm of
            the papers, needed for exact extraction); see `conv_norm`.
        conv_norm (`str`, defaults to `"auto"`): `"auto"`: the conv module's LayerNorm (and the cgMLP's) covers all
            its channels, as in the papers, when the module is one component (`granularity="module"`, or
            `conv_granularity="module"` for the conv module), and each chunk otherwise. `"chunk"`: always per
            chunk. A checkpoint whose config has no such key (saved before the option) loads as `"chunk"`.
        granularity (`str`, defaults to `"component"`): unit of selection. `"module"`: 4 components per block
            (FFN1, MHSA, Conv, FFN2, paper 1). `"component"`: FFN chunks, single heads and conv as one
            component or chunks (paper 2 / paper 3).
        conv_granularity (`str`, defaults to `"module"`): with `granularity="component"`, the conv module is
            one component (`"module"`, paper 2) or `conv_channels / conv_chunk_size` chunks (`"chunk"`, DMAO).
            The cgMLP branch is always chunked at component granularity (like the FFNs).
        cgmlp_intermediate_size (`int`, *optional*): E-Branchformer only: output width of the cgMLP's first linear
            layer, `2U` (values and gates, ESPnet's `cgmlp_linear_units`; the paper's "cgMLP 3072" for d=512). Must
            be even. The nominal cgMLP size in the spec is `U = cgmlp_intermediate_size // 2` gating units.
            `None` = 1.5 x `intermediate_size`, made even (3072 for FFN 2048, 2304 for FFN 1536, as in paper 3;
            its per-chunk cost, 384 units x 1572 params = 603,648, is close to the 604,032 of paper 3's d=512 model).
        cgmlp_chunk_size (`int`, *optional*): cgMLP units per component; `None` = nominal units // 4 (4 chunks per
            block, as in paper 3). The cgMLP's LayerNorm normalises each chunk separately, like the conv module's.
        subnets (`dict`, *optional*): named sizes, `name -> {"components": [ids] or None, "criterion":
            "params" | "flops" | "manual", "target": float | None, "num_parameters": int, "flops": int}`.
            Component ids index the component index of this config. Subnets of a supernet are nested.
        subnets_schema_version (`int`, defaults to 1): version of the `subnets` schema.
        active_subnet (`str`, *optional*): the size the model runs (`None` = whole supernet). Also
            reachable as the keyword `subnet`, e.g. `from_pretrained(path, subnet="40M")`.
        reference_duration_s (`float`, defaults to 10.0): audio length at which FLOPs are reported.
        sampling_rate (`int`, defaults to 16000) and hop_length (`int`, defaults to 160): feature framing;
            `inputs_to_logits_ratio = hop_length * 4` samples per output frame.
        apply_spec_augment (`bool`, defaults to `False`): SpecAugment in training mode with the papers' values
            below (time masks of at most `mask_time_max_width` frames, one per `mask_time_per_frames` frames and
            at least `mask_time_min_masks`; `mask_feature_num_masks` frequency masks of at most
            `mask_feature_max_width` bins).
        ctc_loss_reduction (`str`, defaults to `"mean"`): `"mean"` or `"sum"` over the batch (mean divides each
            utterance's loss by its label length, as `torch.nn.CTCLoss`).
        ctc_zero_infinity (`bool`, defaults to `True`): zero infinite CTC losses (infeasible alignments).
        interctc_layers (`list[int]`, defaults to `[]`): blocks (1-based) whose outputs also get a CTC loss,
            intermediate CTC (Lee & Watanabe, ICASSP 2021), through the running size's own CTC output layer (no
            extra parameters). Not in the RWTH papers; it only changes the training loss, inference is unchanged.
        interctc_weight (`float`, defaults to 0.0): with `interctc_layers`, the loss is `(1 - w) * final CTC +
            w * mean of the intermediate CTCs`; must be in [0, 1).
        pad_token_id (`int`, defaults to 0): padding id, also the CTC blank.
        initializer_range (`float`, defaults to 0.02): std of the normal init of linear layers.
    """

    model_type = "dynasr"
    attribute_map = {"subnet": "active_subnet"}

    vocab_size: int = 30
    num_mel_bins: int = 80
    hidden_size: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    intermediate_size: int = 2048
    conv_channels: int | None = None
    conv_kernel_size: int = 31
    block_type: str = "conformer"
    block_order: str = "mhsa_conv"
    cgmlp_intermediate_size: int | None = None
    cgmlp_chunk_size: int | None = None
    frontend_type: str = "vgg4x"
    frontend_channels: int = 64
    hidden_dropout: float = 0.1
    activation_dropout: float = 0.1
    attention_dropout: float = 0.1
    position_encoding: str = "none"
    final_dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    architecture_spec: list | None = None
    ffn_chunk_size: int | None = None
    conv_chunk_size: int | None = None
    granularity: str = "component"
    conv_granularity: str = "module"
    conv_norm: str = "auto"
    subnets: dict | None = None
    subnets_schema_version: int = SUBNETS_SCHEMA_VERSION
    active_subnet: str | None = None
    reference_duration_s: float = 10.0
    sampling_rate: int = 16000
    hop_length: int = 160
    apply_spec_augment: bool = False
    mask_time_max_width: int = 20
    mask_time_per_frames: int = 25
    mask_time_min_masks: int = 2
    mask_feature_max_width: int = 8
    mask_feature_num_masks: int = 5
    ctc_loss_reduction: str = "mean"
    ctc_zero_infinity: bool = True
    interctc_layers: list | None = None
    interctc_weight: float = 0.0
    pad_token_id: int | None = 0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.conv_channels is None:
            self.conv_channels = self.hidden_size
        if self.ffn_chunk_size is None:
            self.ffn_chunk_size = max(1, self.intermediate_size // 4)
        if self.conv_chunk_size is None:
            self.conv_chunk_size = max(1, self.conv_channels // 4)
        if self.cgmlp_intermediate_size is None:
            self.cgmlp_intermediate_size = 2 * max(1, self.intermediate_size * 3 // 4)
        if self.cgmlp_chunk_size is None:
            self.cgmlp_chunk_size = max(1, self.cgmlp_intermediate_size // 2 // 4)
        if self.architecture_spec is None:
            names = module_names(self.block_type) if self.block_type in BLOCK_MODULES else BLOCK_MODULES["conformer"]
            nominal = {m: MODULE_CLASSES[m].nominal_size(self) for m in names}
            self.architecture_spec = [dict(nominal) for _ in range(self.num_hidden_layers)]
        self.subnets = {name: dict(entry) for name, entry in (self.subnets or {}).items()}
        self.interctc_layers = list(self.interctc_layers or [])
        self.check_consistency()
        super().__post_init__(**kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """A saved config without `position_encoding` predates the option: its model had no positional
        information in self-attention, and it keeps loading (and behaving) as `"none"`; likewise one without
        `conv_norm` loads as `"chunk"`."""
        if "position_encoding" not in config_dict:
            config_dict = {**config_dict, "position_encoding": "none"}
        if "conv_norm" not in config_dict:  # saved before the option: its conv norm was per chunk
            config_dict = {**config_dict, "conv_norm": "chunk"}
        return super().from_dict(config_dict, **kwargs)

    # --- derived values -------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def subsampling_factor(self) -> int:
        return 4

    @property
    def inputs_to_logits_ratio(self) -> int:
        """Audio samples per output frame; the ASR pipeline uses it for chunking and timestamps."""
        return self.hop_length * self.subsampling_factor

    @property
    def num_components(self) -> int:
        return count_components(self)

    # --- validation -------------------------------------------------------------------------------
    def check_consistency(self) -> None:
        """Check every field and their combinations (spec, chunk sizes, subnets); raise ValueError naming the
        field. Runs at construction; call it again after changing fields in place."""
        check_choice("block_type", self.block_type, BLOCK_TYPES)
        check_choice("block_order", self.block_order, BLOCK_ORDERS)
        check_choice("frontend_type", self.frontend_type, FRONTEND_TYPES)
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("conv_granularity", self.conv_granularity, CONV_GRANULARITIES)
        check_choice("conv_norm", self.conv_norm, CONV_NORMS)
        check_choice("ctc_loss_reduction", self.ctc_loss_reduction, ("mean", "sum"))
        check_choice("position_encoding", self.position_encoding, POSITION_ENCODINGS)
        for name in ("vocab_size", "num_mel_bins", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "conv_channels", "ffn_chunk_size", "conv_chunk_size", "frontend_channels",
                     "sampling_rate", "hop_length", "cgmlp_intermediate_size", "cgmlp_chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} does not divide hidden_size={self.hidden_size}; "
                f"choose heads from the divisors of {self.hidden_size}, e.g. "
                f"{[h for h in range(1, 17) if self.hidden_size % h == 0]}"
            )
        if self.cgmlp_intermediate_size % 2:
            raise ValueError(
                f"cgmlp_intermediate_size={self.cgmlp_intermediate_size} must be even (value and gate halves of 2U)"
            )
        if self.conv_kernel_size < 1 or self.conv_kernel_size % 2 == 0:
            raise ValueError(f"conv_kernel_size must be odd and positive; got {self.conv_kernel_size}")
        for name in ("hidden_dropout", "activation_dropout", "attention_dropout", "final_dropout", "interctc_weight"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                raise ValueError(f"{name} must be in [0, 1); got {getattr(self, name)!r}")
        if self.pad_token_id is None or not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id (the CTC blank) must be in [0, {self.vocab_size}); got {self.pad_token_id}")
        self._validate_interctc()
        self.check_spec()
        self._validate_subnets()

    def _validate_interctc(self) -> None:
        last = self.num_hidden_layers - 1
        bad = [b for b in self.interctc_layers if not isinstance(b, int) or isinstance(b, bool) or not 1 <= b <= last]
        if bad:
            raise ValueError(
                f"interctc_layers {bad} are not intermediate blocks; allowed: 1..{last} (1-based; the last block "
                f"{self.num_hidden_layers} already feeds the final CTC)"
            )
        if self.interctc_weight > 0 and not self.interctc_layers:
            raise ValueError(
                f"interctc_weight={self.interctc_weight} needs interctc_layers (e.g. [{max(1, last // 2 + 1)}]); "
                f"or set interctc_weight to 0"
            )

    def check_spec(self) -> None:
        """Check the spec against the block type and chunk sizes; normalises its blocks to `BlockSpec`
        (also after code such as DMAO or extraction assigns a new spec of plain dicts)."""
        spec = self.architecture_spec
        names = module_names(self.block_type)
        if len(spec) != self.num_hidden_layers:
            raise ValueError(
                f"architecture_spec has {len(spec)} blocks but num_hidden_layers={self.num_hidden_layers}; "
                f"give one {{{', '.join(map(repr, names))}}} entry per block"
            )
        for b, block in enumerate(spec):
            if not isinstance(block, dict) or set(block) != set(names):
                got = sorted(block) if isinstance(block, dict) else type(block).__name__
                raise ValueError(
                    f"architecture_spec[{b}] must have exactly the keys {list(names)} for "
                    f"block_type='{self.block_type}'; got {got}"
                )
            for module, size in block.items():
                if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                    raise ValueError(f"architecture_spec[{b}]['{module}'] must be an integer >= 0; got {size!r}")
                module_class = MODULE_CLASSES[module]
                if size % module_class.chunk_size(self):
                    raise ValueError(
                        f"architecture_spec[{b}]['{module}']={size} is not a multiple of its chunk size "
                        f"{module_class.chunk_size(self)} ({module_class.chunk_size_field})"
                    )
        self.architecture_spec = [BlockSpec(block) for block in spec]

    def _validate_subnets(self) -> None:
        if self.subnets_schema_version != SUBNETS_SCHEMA_VERSION:
            raise ValueError(
                f"subnets_schema_version {self.subnets_schema_version} is not supported; this hf_dynasr reads "
                f"version {SUBNETS_SCHEMA_VERSION}. Upgrade hf_dynasr to load this checkpoint."
            )
        num = count_components(self)
        for name, entry in self.subnets.items():
            if not isinstance(name, str) or not _SUBNET_NAME.match(name):
                raise ValueError(f"subnet name {name!r} must match [A-Za-z0-9_-]+ (it names a CTC head)")
            if not isinstance(entry, dict):
                raise ValueError(f"subnets['{name}'] must be a dict; got {type(entry).__name__}")
            if entry.get("criterion") is not None:
                check_choice(f"subnets['{name}']['criterion']", entry["criterion"], SUBNET_CRITERIA)
            ids = entry.get("components")
            if ids is None:
                continue
            bad = [i for i in ids if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < num]
            if bad:
                raise ValueError(
                    f"subnets['{name}'] names components {bad[:10]} that do not exist; this architecture has "
                    f"{num} components (ids 0..{num - 1}) at granularity '{self.granularity}'"
                )
            if len(set(ids)) != len(ids):
                raise ValueError(f"subnets['{name}'] lists a component twice")


def check_choice(name: str, value, allowed) -> None:
    """Raise ValueError naming the option and its allowed values when `value` is not one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed: {', '.join(map(str, allowed))}")
