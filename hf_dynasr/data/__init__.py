"""Speech data for hf_dynasr: loading, text normalisation, robust preparation, duration batching, collation.

Typical use::

    from hf_dynasr.data import (load_speech_dataset, prepare_dataset, DurationBatchSampler,
                                DataCollatorCTCWithPadding)
    from hf_dynasr.data import build_feature_extractor, build_tokenizer

    fe, tok = build_feature_extractor(), build_tokenizer()
    raw = load_speech_dataset("audiofolder:data/synth", split="train")      # columns audio, text, path, ...
    train, report = prepare_dataset(raw, fe, tok, max_duration_s=20.0, num_proc=2)
    logger.info("%s", report)                                               # what was dropped and why
    sampler = DurationBatchSampler.from_dataset(train, max_batch_seconds=60.0, seed=0)
    loader = DataLoader(train.with_format("numpy"), batch_sampler=sampler,   # numpy: fast collation
                        collate_fn=DataCollatorCTCWithPadding(fe))

Audio is decoded by ``prepare_dataset`` itself (soundfile first, torchcodec as a fallback for other
containers), downmixed to mono and resampled to the feature extractor's rate with a windowed-sinc
resampler, so one unreadable file is reported instead of crashing ``Dataset.map``. Decoding rows of the
loaded dataset directly (``ds[0]["audio"]``) goes through ``datasets``/torchcodec instead; both give
16 kHz mono float32, with slightly different resampling filters.

One file per part: `loading` (dataset specs, metadata tables), `text` (the one text normaliser, also used
for LM text and, with a wider character class, for scoring), `audio` (decoding, resampling),
`prepare` (features, labels, the filter report), `batching` (duration batches, collation), `processing`
(feature extractor, tokenizer, processor). Every public name imports from here.
"""

from hf_dynasr.data.audio import AudioDecodeError, load_audio, resample
from hf_dynasr.data.batching import DataCollatorCTCWithPadding, DurationBatchSampler
from hf_dynasr.data.loading import (
    AUDIO_COLUMN_CANDIDATES,
    SPEC_FORMS,
    TEXT_COLUMN_CANDIDATES,
    load_speech_dataset,
    parse_spec,
    read_table,
)
from hf_dynasr.data.prepare import DROP_REASONS, FilterReport, ctc_output_length, prepare_dataset
from hf_dynasr.data.processing import (
    DEFAULT_VOCAB,
    SAMPLING_RATE,
    build_feature_extractor,
    build_processor,
    build_tokenizer,
)
from hf_dynasr.data.text import normalize_text

__all__ = [
    "AUDIO_COLUMN_CANDIDATES",
    "AudioDecodeError",
    "DEFAULT_VOCAB",
    "DROP_REASONS",
    "DataCollatorCTCWithPadding",
    "DurationBatchSampler",
    "FilterReport",
    "SAMPLING_RATE",
    "SPEC_FORMS",
    "TEXT_COLUMN_CANDIDATES",
    "build_feature_extractor",
    "build_processor",
    "build_tokenizer",
    "ctc_output_length",
    "load_audio",
    "load_speech_dataset",
    "normalize_text",
    "parse_spec",
    "prepare_dataset",
    "read_table",
    "resample",
]
