"""Lexicon-constrained CTC beam search with a word n-gram LM (flashlight-text's LexiconDecoder with its KenLM
wrapper, which loads ARPA files) over an LM folder of `hf_dynasr.lm.build.build_lm`::

    from hf_dynasr.lm import build_lm, load_lm_decoder
    build_lm("data/demo_corpus", "lm", order=3)     # train/metadata.csv -> lm/{lm.arpa,lexicon.txt,lm_config.json}
    decoder = load_lm_decoder("lm", tokenizer=processor.tokenizer, lm_weight=1.0)  # pip install flashlight-text
    texts = decoder.decode(logits, lengths)         # logits [B, T, V] or [T, V] -> list[str]

Decoding follows the tokenizer's conventions: blank = ``<pad>`` (id 0), words separated by ``|``. The model
does not emit a ``|`` after the last word, so one ``|`` frame is appended to each utterance before the
search; the decoder then outputs only lexicon words (no ``<unk>``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import numpy as np

from hf_dynasr.lm.build import DEFAULT_DECODING, LEXICON_FILE, LM_FILE, read_lexicon, read_lm_config, token_list

logger = logging.getLogger(__name__)

_INSTALL_HINT = "LM decoding needs flashlight-text: pip install flashlight-text (or pip install -e '.[lm]')"
_SPECIAL = ("<s>", "</s>", "<unk>")


def _flashlight():
    # flashlight-text is optional (the `lm` extra): imported when a decoder is built, with an install hint
    try:
        from flashlight.lib.text import decoder as fl_decoder
        from flashlight.lib.text.decoder.kenlm import KenLM
        from flashlight.lib.text.dictionary import Dictionary
    except ImportError as err:
        raise ImportError(f"{_INSTALL_HINT} ({err})") from None
    return fl_decoder, KenLM, Dictionary


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class LexiconLMDecoder:
    """Lexicon-constrained CTC beam search with a word n-gram LM (flashlight-text `LexiconDecoder`).

    `arpa`, `lexicon`: the LM and lexicon files; `tokens`: the CTC vocabulary by id (tokenizer, mapping or
    list); blank = `blank_token`, words end with `word_delimiter`. `lm_weight` scales the LM's log10 scores,
    `word_score` is added per word, `sil_score` per extra delimiter; `unk_score` (default -inf) lets
    out-of-lexicon words through when finite. Lexicon words with characters outside the vocabulary are
    skipped (with a warning). Call `decode(logits, lengths)` (or the object itself); one object decodes one
    batch at a time (not thread-safe)."""

    def __init__(self, arpa, lexicon, tokens, *, lm_weight: float = DEFAULT_DECODING["lm_weight"],
                 word_score: float = DEFAULT_DECODING["word_score"], beam_size: int = DEFAULT_DECODING["beam_size"],
                 beam_size_token: int | None = None, beam_threshold: float = DEFAULT_DECODING["beam_threshold"],
                 sil_score: float = DEFAULT_DECODING["sil_score"], unk_score: float = -math.inf,
                 blank_token: str = "<pad>", word_delimiter: str = "|", log_add: bool = False):
        fl, KenLM, Dictionary = _flashlight()
        self.tokens = token_list(tokens)
        for name, tok in (("blank_token", blank_token), ("word_delimiter", word_delimiter)):
            if tok not in self.tokens:
                raise ValueError(f"{name} {tok!r} is not in the vocabulary {self.tokens}")
        if not Path(arpa).is_file():
            raise FileNotFoundError(f"LM file not found: {arpa} (build one with scripts/build_lm.py)")
        lex = read_lexicon(lexicon)
        token_id = {t: i for i, t in enumerate(self.tokens)}
        self.blank_id, self.delimiter_id = token_id[blank_token], token_id[word_delimiter]
        spellings, skipped = {}, []
        for word, spells in lex.items():
            if word in _SPECIAL:
                continue
            ok = [s for s in spells if all(t in token_id for t in s)]
            if ok:
                spellings[word] = [[token_id[t] for t in s] for s in ok]
            else:
                skipped.append(word)
        if skipped:
            logger.warning("%d lexicon word(s) use tokens outside the vocabulary and are skipped, e.g. %s",
                           len(skipped), skipped[:5])
        if not spellings:
            raise ValueError(f"no word of {lexicon} can be spelled with the vocabulary {self.tokens}")
        self.words = sorted(spellings)
        word_dict = Dictionary(self.words + ["<unk>"])
        self.unk_word_id = len(self.words)
        self.lm = KenLM(os.fspath(arpa), word_dict)
        self.trie = fl.Trie(len(self.tokens), self.delimiter_id)
        start = self.lm.start(False)
        for i, word in enumerate(self.words):
            score = self.lm.score(start, i)[1]
            for spelling in spellings[word]:
                self.trie.insert(spelling, i, score)
        self.trie.smear(fl.SmearingMode.MAX)
        self.options = dict(lm_weight=float(lm_weight), word_score=float(word_score), beam_size=int(beam_size),
                            beam_size_token=int(beam_size_token or len(self.tokens)),
                            beam_threshold=float(beam_threshold), sil_score=float(sil_score),
                            unk_score=float(unk_score), log_add=bool(log_add))
        opts = fl.LexiconDecoderOptions(
            beam_size=self.options["beam_size"], beam_size_token=self.options["beam_size_token"],
            beam_threshold=self.options["beam_threshold"], lm_weight=self.options["lm_weight"],
            word_score=self.options["word_score"], unk_score=self.options["unk_score"],
            sil_score=self.options["sil_score"], log_add=self.options["log_add"],
            criterion_type=fl.CriterionType.CTC)
        self._decoder = fl.LexiconDecoder(opts, self.trie, self.lm, self.delimiter_id, self.blank_id,
                                          self.unk_word_id, [], False)
        self.arpa, self.lexicon = os.fspath(arpa), os.fspath(lexicon)
        self.decode_seconds, self.decoded_frames = 0.0, 0

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def describe(self) -> dict:
        """JSON-able summary (files, lexicon size, options) for results files."""
        return {"arpa": self.arpa, "lexicon": self.lexicon, "lexicon_size": len(self.words),
                **{k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in self.options.items()}}

    def __call__(self, logits, lengths=None) -> list[str]:
        return self.decode(logits, lengths)

    def decode(self, logits, lengths=None) -> list[str]:
        """Best lexicon-word transcription of each utterance.

        `logits`: [T, V] or [B, T, V] CTC logits or log-probabilities (torch or numpy; log-softmax is
        applied); `lengths`: valid frames per utterance ([B] or an int; default: all frames)."""
        if hasattr(logits, "detach"):
            logits = logits.detach().float().cpu().numpy()
        x = np.asarray(logits, dtype=np.float32)
        single = x.ndim == 2
        if single:
            x = x[None]
        if x.ndim != 3:
            raise ValueError(f"logits must be [T, V] or [B, T, V], got shape {tuple(x.shape)}")
        batch, frames, vocab = x.shape
        if vocab != self.vocab_size:
            raise ValueError(f"logits have {vocab} classes but the decoder's vocabulary has {self.vocab_size} "
                             "tokens; build the decoder with the model's tokenizer")
        if lengths is None:
            lengths = [frames] * batch
        else:
            if hasattr(lengths, "detach"):
                lengths = lengths.detach().cpu().numpy()
            lengths = np.atleast_1d(np.asarray(lengths)).astype(int).tolist()
            if len(lengths) != batch or any(n < 0 or n > frames for n in lengths):
                raise ValueError(f"lengths {lengths} do not fit logits of shape {tuple(x.shape)}")
        end = np.full((1, vocab), -30.0, dtype=np.float32)  # one closing word delimiter frame
        end[0, self.delimiter_id] = 0.0
        out = []
        t0 = time.perf_counter()
        for b in range(batch):
            emissions = np.ascontiguousarray(np.concatenate([_log_softmax(x[b, :lengths[b]]), end]),
                                             dtype=np.float32)
            results = self._decoder.decode(emissions.ctypes.data, emissions.shape[0], vocab)
            words = [self.words[i] for i in results[0].words if 0 <= i < len(self.words)] if results else []
            out.append(" ".join(words))
            self.decoded_frames += int(lengths[b])
        self.decode_seconds += time.perf_counter() - t0
        return out


def load_lm_decoder(lm_dir, tokenizer=None, **overrides) -> LexiconLMDecoder:
    """A `LexiconLMDecoder` from a `build_lm` folder; `tokenizer` (recommended: the model's) else the
    tokens stored in lm_config.json; `overrides`: lm_weight, word_score, beam_size, ... (None = default)."""
    config = read_lm_config(lm_dir)
    options = {**DEFAULT_DECODING, **config.get("decoding", {}),
               **{k: v for k, v in overrides.items() if v is not None}}
    tokens = tokenizer if tokenizer is not None else config.get("tokens")
    blank = getattr(tokenizer, "pad_token", None) or config.get("blank_token", "<pad>")
    delimiter = getattr(tokenizer, "word_delimiter_token", None) or config.get("word_delimiter", "|")
    lm_dir = Path(lm_dir)
    return LexiconLMDecoder(lm_dir / config.get("arpa", LM_FILE), lm_dir / config.get("lexicon", LEXICON_FILE),
                            tokens, blank_token=blank, word_delimiter=delimiter, **options)


