"""N-gram language model: build an LM folder (ARPA n-gram + lexicon) and decode CTC logits with a lexicon beam
search. `arpa` estimates the n-gram (KenLM, IRSTLM or pure Python), `build` writes and reads LM folders,
`decoding` holds the flashlight-text beam search. Every public name imports from here."""

from hf_dynasr.lm.arpa import TOOLS, arpa_ngram_counts, available_tools, write_kneser_ney_arpa
from hf_dynasr.lm.build import (
    CONFIG_FILE,
    DEFAULT_DECODING,
    LEXICON_FILE,
    LM_FILE,
    LM_SUBDIR,
    build_lm,
    copy_lm_dir,
    lm_summary,
    normalize_sentences,
    read_lexicon,
    read_lm_config,
    read_transcriptions,
    write_lexicon,
)
from hf_dynasr.lm.decoding import LexiconLMDecoder, load_lm_decoder

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_DECODING",
    "LEXICON_FILE",
    "LM_FILE",
    "LM_SUBDIR",
    "LexiconLMDecoder",
    "TOOLS",
    "arpa_ngram_counts",
    "available_tools",
    "build_lm",
    "copy_lm_dir",
    "lm_summary",
    "load_lm_decoder",
    "normalize_sentences",
    "read_lexicon",
    "read_lm_config",
    "read_transcriptions",
    "write_kneser_ney_arpa",
    "write_lexicon",
]
