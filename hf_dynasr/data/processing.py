"""Processor for hf_dynasr: 80-dim log-mel features and a character-level CTC tokenizer.

Features reuse ``transformers.ParakeetFeatureExtractor(feature_size=80)``: pure torch (no torchaudio),
25 ms window / 10 ms hop, per-utterance mean/variance normalisation computed over the unpadded
frames only, and an ``attention_mask`` - so a padded batch gives the same features as each clip alone.
The tokenizer is a ``Wav2Vec2CTCTokenizer`` over lowercase letters, apostrophe and the word delimiter
``|``; id 0 (``<pad>``) doubles as the CTC blank.
"""

from __future__ import annotations

import json
import os
import tempfile

from transformers import ParakeetFeatureExtractor, Wav2Vec2CTCTokenizer, Wav2Vec2Processor

#: Character inventory of the default tokenizer. Index 0 is the CTC blank (= pad).
DEFAULT_VOCAB: tuple[str, ...] = ("<pad>", "<unk>", "|", "'") + tuple("abcdefghijklmnopqrstuvwxyz")
SAMPLING_RATE = 16000
HOP_LENGTH = 160  # samples per feature frame (10 ms)


def build_feature_extractor(num_mel_bins: int = 80) -> ParakeetFeatureExtractor:
    """The log-mel extractor used by every hf_dynasr checkpoint."""
    return ParakeetFeatureExtractor(feature_size=num_mel_bins, sampling_rate=SAMPLING_RATE, hop_length=HOP_LENGTH)


def build_tokenizer(vocab: tuple[str, ...] | list[str] = DEFAULT_VOCAB) -> Wav2Vec2CTCTokenizer:
    """A character CTC tokenizer whose ``len()`` equals ``len(vocab)``.

    ``bos_token``/``eos_token`` are disabled: otherwise Wav2Vec2CTCTokenizer appends ``<s>``/``</s>``
    and the vocabulary no longer matches the CTC head. Decode references with ``group_tokens=False``
    (the default decode merges repeats CTC-style: "hello" -> "helo").
    """
    if vocab[0] != "<pad>" or "|" not in vocab or "<unk>" not in vocab:
        raise ValueError("vocab must start with '<pad>' (the CTC blank) and contain '<unk>' and '|'")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "vocab.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump({tok: i for i, tok in enumerate(vocab)}, f)
        return Wav2Vec2CTCTokenizer(
            path, unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|", bos_token=None, eos_token=None
        )


def build_processor(num_mel_bins: int = 80, vocab: tuple[str, ...] | list[str] = DEFAULT_VOCAB) -> Wav2Vec2Processor:
    """Feature extractor + tokenizer, saved next to every checkpoint (``processor.save_pretrained(dir)``)."""
    return Wav2Vec2Processor(feature_extractor=build_feature_extractor(num_mel_bins), tokenizer=build_tokenizer(vocab))
