"""N-gram language model (build an ARPA 3-gram and a lexicon) and lexicon beam-search CTC decoding."""

from hf_dynasr.lm.decoding import LM_SUBDIR, LexiconLMDecoder, build_lm, copy_lm_dir, load_lm_decoder, lm_summary

__all__ = ["LM_SUBDIR", "LexiconLMDecoder", "build_lm", "copy_lm_dir", "lm_summary", "load_lm_decoder"]
