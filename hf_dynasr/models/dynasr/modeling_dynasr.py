"""DynaSRForCTC: a CTC Conformer supernet whose named subnets are binary masks over components.

Data flow: log-mel [B, T, F] -> frontend (4x) -> Conformer (or E-Branchformer, `config.block_type`) blocks
with gates -> CTC head of the active size -> CTC loss (fp32 log-softmax) or logits for greedy decoding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import is_fake
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput
from transformers.utils import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .attention_dynasr import DynaSRSelfAttention
from .components_dynasr import MODULE_NAMES, RESIDUAL_SCALE, module_names
from .configuration_dynasr import DynaSRConfig
from .ebranchformer_dynasr import DynaSREBranchformerBlock
from .frontend_dynasr import FRONTENDS, frame_mask, subsampled_lengths
from .gating_dynasr import ModuleRoute, apply_module
from .loading_dynasr import check_whole_checkpoint, load_subnet_lazily
from .modules_dynasr import MODULE_CLASSES, GatedChannelModule
from .specaugment_dynasr import spec_augment
from .subnets_dynasr import FULL, SubnetMixin

logger = logging.getLogger(__name__)


class DynaSREncoderBlock(GradientCheckpointingLayer):
    """One Conformer block: x += 0.5 FFN1(x); x += MHSA(x); x += Conv(x); x += 0.5 FFN2(x); LN(x) (MHSA and Conv
    swapped with `config.block_order="conv_mhsa"`).
    A module of size 0 in the architecture spec is absent (`None`) and skipped.

    With `model.gradient_checkpointing_enable()` its activations are recomputed in the backward pass
    (GradientCheckpointingLayer). transformers' default, the non-reentrant checkpoint, also carries the
    gradient of tensors the block reads from `routes` (the soft gates of stage 1) and replays its dropout."""

    def __init__(self, config, block_spec: dict):
        super().__init__()
        for name in module_names("conformer"):
            size = block_spec[name]
            setattr(self, name, MODULE_CLASSES[name](config, size) if size > 0 else None)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        # `config.block_order`: the modules' order of computation (the component index keeps FFN1, MHSA, Conv, FFN2)
        conv_first = config.block_order == "conv_mhsa"
        self.order = ("ffn1", "conv", "mhsa", "ffn2") if conv_first else module_names("conformer")

    def forward(self, hidden_states, attention_mask, routes: dict[str, ModuleRoute]):  # [B, T, d], [B, T]
        for name in self.order:
            out = apply_module(getattr(self, name), hidden_states, attention_mask, routes[name])
            if out is not None:
                hidden_states = hidden_states + RESIDUAL_SCALE[name] * out
        return self.layer_norm(hidden_states)


#: The block class of each `config.block_type`.
BLOCK_CLASSES = {"conformer": DynaSREncoderBlock, "ebranchformer": DynaSREBranchformerBlock}


class DynaSRPreTrainedModel(PreTrainedModel):
    config: DynaSRConfig
    config_class = DynaSRConfig
    base_model_prefix = "dynasr"
    main_input_name = "input_features"
    input_modalities = "audio"
    _no_split_modules = ["DynaSREncoderBlock", "DynaSREBranchformerBlock"]
    # attention goes through transformers' attention interface (attention_dynasr.py); flash attention takes no
    # additive bias, which the padding mask and relative positions need
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_flash_attn = False
    _supports_attention_backend = True
    # `output_hidden_states`: the frontend output, then each block's output; `output_attentions`: each
    # self-attention's weights (the "eager" implementation computes them)
    _can_record_outputs = {
        "hidden_states": [DynaSREncoderBlock, DynaSREBranchformerBlock],
        "attentions": OutputRecorder(DynaSRSelfAttention, index=1),
    }
    supports_gradient_checkpointing = True  # the blocks are GradientCheckpointingLayers
    # the only tensors a checkpoint may lack: the chunk-wise norm's, which `_init_weights` sets to the identity
    # (ones, zeros), not to random values; any other missing tensor is refused (`check_whole_checkpoint`)
    _keys_to_ignore_on_load_missing = [r"\.norm_(weight|bias)$"]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, nn.Conv2d):
            # frontend convs feed ReLUs: He init keeps the signal, the generic N(0, 0.02) all but erases it
            # after two layers, and training then sits longer on the CTC blank plateau (measured on the demo)
            init.kaiming_normal_(module.weight, nonlinearity="relu")
        if isinstance(module, GatedChannelModule):  # the chunk-wise norm's parameters
            init.ones_(module.norm_weight)
            init.zeros_(module.norm_bias)
        if isinstance(module, DynaSRSelfAttention) and module.relative:  # the content and position biases
            init.zeros_(module.pos_bias_u)
            init.zeros_(module.pos_bias_v)

    def _get_feat_extract_output_lengths(self, input_lengths: torch.Tensor) -> torch.Tensor:
        return subsampled_lengths(input_lengths)

    def check_features(self, input_features, attention_mask) -> torch.Tensor:
        """Validate shapes and return the valid frames per utterance [B]."""
        bins = self.config.num_mel_bins
        if input_features.dim() != 3 or input_features.shape[-1] != bins:
            raise ValueError(
                f"input_features must have shape [batch, frames, {bins}] (log-mel, num_mel_bins={bins}); "
                f"got {tuple(input_features.shape)}. Use the checkpoint's feature extractor."
            )
        batch, frames, _ = input_features.shape
        if batch == 0 or frames == 0:
            raise ValueError(f"input_features is empty (shape {tuple(input_features.shape)}); pass at least one frame")
        if has_values(input_features) and not torch.isfinite(input_features).all():
            bad = (~torch.isfinite(input_features)).flatten(1).any(-1).nonzero().flatten().tolist()
            raise ValueError(
                f"input_features of utterance(s) {bad} contain NaN or Inf (audio with non-finite samples, or "
                "samples far outside [-1, 1]): refused, a transcript of them would be meaningless. Check the "
                "audio; hf_dynasr.data.load_audio decodes and scales it as training does."
            )
        if attention_mask is None:
            lengths = torch.full((batch,), frames, dtype=torch.long, device=input_features.device)
        elif tuple(attention_mask.shape) != (batch, frames):
            raise ValueError(
                f"attention_mask must have shape [batch, frames] = {(batch, frames)} like input_features; "
                f"got {tuple(attention_mask.shape)}"
            )
        else:
            lengths = attention_mask.long().sum(-1)
        if has_values(lengths) and (subsampled_lengths(lengths) < 1).any():
            raise ValueError(
                f"every utterance needs at least {self.config.subsampling_factor} valid frames (40 ms of audio) "
                f"to give one output frame; got valid lengths {lengths.tolist()}"
            )
        return lengths

    def check_embeds(self, inputs_embeds, attention_mask) -> torch.Tensor:
        """Validate a frontend output [B, T', d] and its mask [B, T']; return the valid frames per utterance [B]."""
        d = self.config.hidden_size
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != d or 0 in inputs_embeds.shape:
            raise ValueError(f"inputs_embeds must have shape [batch, frames, {d}] (the frontend output, "
                             f"hidden_size={d}); got {tuple(inputs_embeds.shape)}")
        if attention_mask is None:
            return torch.full(inputs_embeds.shape[:1], inputs_embeds.shape[1], dtype=torch.long,
                              device=inputs_embeds.device)
        if tuple(attention_mask.shape) != tuple(inputs_embeds.shape[:2]):
            raise ValueError(f"with inputs_embeds, attention_mask marks its frames: shape "
                             f"{tuple(inputs_embeds.shape[:2])} expected, got {tuple(attention_mask.shape)}")
        return attention_mask.long().sum(-1)


@dataclass
class DynaSREncoderOutput(BaseModelOutput):
    r"""
    attention_mask (`torch.LongTensor` of shape `(batch_size, output_frames)`):
        1 for the output frames of real input frames, 0 for padding, after the frontend's 4x subsampling (the
        time axis of `last_hidden_state` differs from the input's, as in Parakeet's encoder output).
    """

    attention_mask: torch.LongTensor | None = None


class DynaSRModel(DynaSRPreTrainedModel):
    """The encoder: frontend + blocks with gates. `AutoModel.from_pretrained(path)` loads it from any DynaSR
    checkpoint (the CTC output layers are left out). `routes` (one dict of ModuleRoute per block, from
    `DynaSRForCTC.subnet_routes`) carry a size's masks and gates; `None` runs the whole network."""

    def __init__(self, config: DynaSRConfig):
        super().__init__(config)
        self.frontend = FRONTENDS[config.frontend_type](config)
        block_class = BLOCK_CLASSES[config.block_type]
        self.layers = nn.ModuleList(block_class(config, spec) for spec in config.architecture_spec)
        self.post_init()

    @capture_outputs
    def forward(
        self,
        input_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        routes: list[dict[str, ModuleRoute]] | None = None,
        **kwargs,
    ) -> DynaSREncoderOutput:
        r"""
        input_features (`torch.FloatTensor` of shape `(batch, frames, num_mel_bins)`): log-mel features.
        attention_mask (`torch.Tensor` of shape `(batch, frames)`, *optional*): 1 for real frames, 0 for padding.
        inputs_embeds (`torch.FloatTensor` of shape `(batch, frames // 4, hidden_size)`, *optional*): the frontend
            output instead of `input_features` (`attention_mask` then marks its frames).
        routes (`list[dict[str, ModuleRoute]]`, *optional*): per block, each module's kept units and gates.
        """
        if (input_features is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_features (log-mel frames) and inputs_embeds (frontend output)")
        if inputs_embeds is None:
            lengths = self.check_features(input_features, attention_mask)
            input_features = input_features.to(self.dtype)  # float32 log-mel into an fp16/bf16 checkpoint
            if self.training and self.config.apply_spec_augment:
                input_features = spec_augment(input_features, lengths, self.config)
            hidden_states, lengths = self.frontend(input_features, lengths)  # [B, T', d]
        else:  # a frontend output [B, T', d]; its mask counts its frames
            lengths = self.check_embeds(inputs_embeds, attention_mask)
            hidden_states = inputs_embeds
        frames = frame_mask(lengths, hidden_states.shape[1])  # [B, T'] bool
        for b, layer in enumerate(self.layers):
            hidden_states = layer(hidden_states, frames, routes[b] if routes else _FULL_ROUTES)
        return DynaSREncoderOutput(last_hidden_state=hidden_states, attention_mask=frames.long())


_FULL_ROUTES = {name: ModuleRoute() for name in MODULE_NAMES}  # every block type's modules


def has_values(tensor: torch.Tensor) -> bool:
    """Whether Python can read `tensor`'s data: not on the meta device, not a FakeTensor (FakeTensorMode,
    torch.export) and not being traced by torch.compile. The data-dependent input checks (`if (x < 1).any():
    raise`) run only then, so real inputs are still validated and traced or fake runs never read data."""
    return not (tensor.device.type == "meta" or is_fake(tensor) or torch.compiler.is_compiling())


class DynaSRForCTC(SubnetMixin, DynaSRPreTrainedModel):
    """Supernet (or one extracted size) with one CTC output layer per size, as in the papers.

    `lm_head` serves the whole network described by the config; `subnet_heads[name]` serves each
    named subnet that is smaller than it."""

    def __init__(self, config: DynaSRConfig):
        super().__init__(config)
        self.dynasr = DynaSRModel(config)
        self.dropout = nn.Dropout(config.final_dropout)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.subnet_heads = nn.ModuleDict()
        self.init_subnets()
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        subnet: str | None = None,
        component_gates: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> CausalLMOutput:
        r"""
        input_features (`torch.FloatTensor` of shape `(batch, frames, num_mel_bins)`): log-mel features.
        attention_mask (`torch.Tensor` of shape `(batch, frames)`, *optional*): 1 for real frames, 0 for padding.
        labels (`torch.LongTensor` of shape `(batch, label_length)`, *optional*): token ids, -100 = padding.
        subnet (`str`, *optional*): run this named size (its mask and its CTC head) instead of
            `config.active_subnet`. `FULL` ("full"), or `None` with no active subnet, runs the whole network.
        component_gates (`torch.Tensor` of shape `(num_components,)` or `(batch, num_components)`, *optional*):
            soft gates in [0, 1] applied on top of the size's mask (training, stage 1).
        inputs_embeds (`torch.FloatTensor` of shape `(batch, frames // 4, hidden_size)`, *optional*): instead of
            `input_features`, the frontend's output, e.g. `hidden_states[0]` of an earlier call on the same batch;
            `attention_mask` then marks these frames. Training runs several sizes on one batch: all of them start
            from the same frontend output, so it is computed (and back-propagated) once per step, not once per size.
        output_hidden_states (`bool`, *optional*, defaults to `config.output_hidden_states`): also return the
            frontend output and every block's output.
        output_attentions (`bool`, *optional*, defaults to `config.output_attentions`): also return every
            self-attention's weights; needs `attn_implementation="eager"` (sdpa and flex do not compute them).
        return_dict (`bool`, *optional*, defaults to `config.return_dict`): `False` returns a tuple.
        """
        name = self.resolve_subnet(subnet)
        routes = self.subnet_routes(name, component_gates)
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        if output_attentions and self.config._attn_implementation != "eager":
            raise ValueError(
                f"output_attentions=True needs the attention weights, which attn_implementation="
                f"{self.config._attn_implementation!r} does not compute; load with attn_implementation='eager' or "
                f"call model.set_attn_implementation('eager')"
            )
        interctc = labels is not None and self.config.interctc_weight > 0
        encoder_out = self.dynasr(input_features, attention_mask, inputs_embeds=inputs_embeds, routes=routes,
                                  output_hidden_states=bool(output_hidden_states or interctc),
                                  output_attentions=bool(output_attentions), return_dict=True)
        head = self.subnet_head(name)
        logits = head(self.dropout(encoder_out.last_hidden_state))  # [B, T', V]

        loss = None
        if labels is not None:
            output_lengths = encoder_out.attention_mask.sum(-1)
            loss = self.ctc_loss(logits, output_lengths, labels)
            if interctc:  # intermediate CTC (Lee & Watanabe 2021, eq. 4), sharing the size's output layer
                inter = [self.ctc_loss(head(self.dropout(encoder_out.hidden_states[b])), output_lengths, labels)
                         for b in self.config.interctc_layers]  # hidden_states[b]: output of block b, [B, T', d]
                weight = self.config.interctc_weight
                loss = (1 - weight) * loss + weight * torch.stack(inter).mean()
        return CausalLMOutput(loss=loss, logits=logits,
                              hidden_states=encoder_out.hidden_states if output_hidden_states else None,
                              attentions=encoder_out.attentions if output_attentions else None)

    def ctc_loss(self, logits: torch.Tensor, output_lengths: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """CTC with the log-softmax in fp32 (also under bf16/fp16 autocast); blank = pad_token_id."""
        label_mask = labels >= 0
        label_lengths = label_mask.sum(-1)
        targets = labels.masked_select(label_mask)
        if has_values(targets) and targets.numel() and (targets.max() >= self.config.vocab_size or targets.min() < 0):
            raise ValueError(
                f"label ids must be in [0, {self.config.vocab_size}) (vocab_size) or -100 for padding; "
                f"got ids from {int(targets.min())} to {int(targets.max())}. Does the tokenizer match the model?"
            )
        if has_values(targets) and (targets == self.config.pad_token_id).any():
            raise ValueError(
                f"labels contain the blank/pad id {self.config.pad_token_id}; pad labels with -100 instead"
            )
        log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float32).transpose(0, 1)  # [T', B, V]
        with torch.backends.cudnn.flags(enabled=False):
            return F.ctc_loss(
                log_probs, targets, output_lengths, label_lengths,
                blank=self.config.pad_token_id,
                reduction=self.config.ctc_loss_reduction,
                zero_infinity=self.config.ctc_zero_infinity,
            )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`from_pretrained(path_or_repo, subnet="40M")` returns the compact 40M model.

        Without `subnet` (and no `active_subnet` in the checkpoint) it returns the whole checkpoint.
        A strict size is loaded lazily: only its tensors and slices are read from the safetensors
        weights (`loading_dynasr.load_subnet_lazily`; the model's `lazy_load_info` says what was read);
        other cases use the regular loader, after `loading_dynasr.check_whole_checkpoint` compared config.json
        with the weights (missing, unexpected or integer-stored tensors and absurd sizes are refused)."""
        # weights only from safetensors: a Hub repo's pytorch_model.bin would be unpickled, which can run code
        kwargs.setdefault("use_safetensors", True)
        loaded = load_subnet_lazily(cls, pretrained_model_name_or_path, *model_args, **kwargs)
        if loaded is not None:
            return loaded
        check_whole_checkpoint(cls, pretrained_model_name_or_path, *model_args, **kwargs)
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        # `output_loading_info=True` gives (model, info), as transformers' loader does
        model, info = loaded if isinstance(loaded, tuple) else (loaded, None)
        name = model.config.active_subnet
        if name is not None and name != FULL and model.subnet_ids(name) is not None:
            model = model.extract_subnet(name)
        return model if info is None else (model, info)


DynaSRConfig.register_for_auto_class()
DynaSRModel.register_for_auto_class("AutoModel")
DynaSRForCTC.register_for_auto_class("AutoModelForCTC")

__all__ = ["DynaSREBranchformerBlock", "DynaSREncoderBlock", "DynaSREncoderOutput", "DynaSRForCTC", "DynaSRModel", "DynaSRPreTrainedModel"]
