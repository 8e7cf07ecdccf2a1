"""Running the sizes of a checkpoint: load model and processor, list and build its sizes, their costs,
greedy CTC transcription.

Shared by `evaluate_checkpoint` (`hf_dynasr.evaluation.checkpoint`), the latency table
(`hf_dynasr.evaluation.latency`) and training-time evaluation (`hf_dynasr.evaluation.sizes`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch
from transformers import AutoProcessor

from hf_dynasr.data.audio import load_audio
from hf_dynasr.models.dynasr.frontend_dynasr import frame_mask, subsampled_lengths
from hf_dynasr.models.dynasr.modeling_dynasr import DynaSRForCTC
from hf_dynasr.models.dynasr.subnets_dynasr import FULL


def load_model_and_processor(model_or_dir, processor=None, **kwargs):
    """(model in eval mode, processor, checkpoint path or None) from a directory/Hub id or a model."""
    if isinstance(model_or_dir, (str, os.PathLike)):
        path = os.fspath(model_or_dir)
        model = DynaSRForCTC.from_pretrained(path, **kwargs)
    else:
        model = model_or_dir
        path = getattr(model.config, "name_or_path", None) or getattr(model, "name_or_path", None) or None
    if processor is None:
        if path is None:
            raise ValueError("pass `processor=` (a Wav2Vec2Processor) when evaluating a model object")
        processor = AutoProcessor.from_pretrained(path)
    return model.eval(), processor, path


def size_names(model, subnets="all") -> list[str]:
    """The sizes a model can run: its named subnets with a selection, plus "full" (unless one covers all)."""
    names = [n for n, e in model.config.subnets.items() if e.get("components") is not None]
    covers_all = any(model.subnet_ids(n) is None for n in names)
    available = names + ([] if covers_all else [FULL])
    if subnets in (None, "all"):
        return available
    if isinstance(subnets, str):
        subnets = [s.strip() for s in subnets.split(",") if s.strip()]
    unknown = [s for s in subnets if s not in available]
    if unknown:
        raise ValueError(f"unknown size(s) {unknown}; available: {', '.join(available)}")
    return list(subnets)


def size_model(model, name: str):
    """(model, `subnet` forward argument) that run size `name`: the extracted model of a strict size, or
    the model itself (the whole network, or a per-size checkpoint)."""
    if name == FULL:
        return model, FULL
    if model.subnet_ids(name) is None:
        return model, name
    return model.extract_subnet(name).eval(), None


def size_costs(model, name: str) -> dict:
    """Parameters (one CTC head) and FLOPs at the reference duration of size `name`."""
    entry = model.config.subnets.get(name) or {}
    params, flops = entry.get("num_parameters"), entry.get("flops")
    if params is None or flops is None:
        config = model.config if name == FULL or model.subnet_ids(name) is None else \
            model.extract_subnet(name).config
        params = params if params is not None else DynaSRForCTC.count_parameters(config)
        flops = flops if flops is not None else DynaSRForCTC.measure_flops(config)
    return {"num_parameters": int(params), "flops": int(flops)}


def by_cost(sizes: Mapping[str, Mapping]) -> dict:
    """`sizes` ({name: {num_parameters, flops, ...}}) ordered by parameters, then FLOPs."""
    return dict(sorted(sizes.items(), key=lambda kv: (kv[1]["num_parameters"], kv[1]["flops"])))


def audio_array(item, sampling_rate: int, name: str = "audio") -> np.ndarray:
    """Audio to transcribe as mono float32 at `sampling_rate`, decoded and normalised as training's data is
    (`hf_dynasr.data.load_audio`): any rate resampled, integer PCM scaled to [-1, 1), channels averaged.

    `item`: an array or tensor (taken to be at `sampling_rate`), a `{"array", "sampling_rate"}` dict, a path or
    `{"path", "bytes"}` dict, or a datasets/torchcodec AudioDecoder. Raises ValueError naming `name` (its path
    when it has one) for NaN/Inf samples or empty audio: their transcript would be a silent ''."""
    if hasattr(item, "shape") or isinstance(item, (list, tuple)):
        item = {"array": item, "sampling_rate": sampling_rate}
    elif isinstance(item, Mapping):
        name = item.get("path") or name
        if item.get("array") is not None and item.get("sampling_rate") is None:
            item = {**item, "sampling_rate": sampling_rate}
    array = load_audio(item, sampling_rate)
    if array.size == 0:
        raise ValueError(f"{name}: the audio is empty (0 samples); there is nothing to transcribe")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: the audio has NaN or Inf samples ({int((~np.isfinite(array)).sum())} of "
                         f"{array.size}); refused, a transcript of it would be meaningless. Fix or drop this input.")
    return array


@torch.inference_mode()
def greedy_transcribe(model, input_features, attention_mask, tokenizer, subnet=None):
    """Greedy CTC transcripts of one batch: (texts, logits [B, T', V], output lengths [B]).

    Frames past each utterance's output length are padding and decode as blank. The batch is moved to the
    model's device."""
    input_features, attention_mask = input_features.to(model.device), attention_mask.to(model.device)
    logits = model(input_features=input_features, attention_mask=attention_mask, subnet=subnet).logits  # [B, T', V]
    lengths = subsampled_lengths(attention_mask.sum(-1))  # [B]
    ids = logits.argmax(-1).masked_fill(~frame_mask(lengths, logits.shape[1]), model.config.pad_token_id)  # [B, T']
    return tokenizer.batch_decode(ids), logits, lengths


def transcribe_batch(model, feature_extractor, tokenizer, arrays, *, features=None, subnet=None, decoder=None):
    """Greedy CTC transcription of a list of audio `arrays` (at the feature extractor's rate unless given as
    `{"array", "sampling_rate"}`; checked and normalised by `audio_array`), or of precomputed `features`.

    With `decoder` (e.g. `hf_dynasr.lm.decoding.LexiconLMDecoder`: `decode(logits, lengths) -> list[str]`),
    returns `(greedy, decoded)` from the same forward pass."""
    if features is None:
        arrays = [audio_array(a, feature_extractor.sampling_rate, f"arrays[{i}]") for i, a in enumerate(arrays)]
        features = feature_extractor(arrays, sampling_rate=feature_extractor.sampling_rate, return_tensors="pt",
                                     padding=True, return_attention_mask=True)
    greedy, logits, lengths = greedy_transcribe(model, features["input_features"], features["attention_mask"],
                                                tokenizer, subnet=subnet)
    return greedy if decoder is None else (greedy, decoder.decode(logits, lengths))
