"""Word n-gram LM + lexicon for CTC beam search decoding of hf_dynasr models.

Build an LM folder from training transcriptions, then decode CTC logits with a lexicon-constrained beam
search (flashlight-text's LexiconDecoder with its KenLM wrapper, which loads ARPA files)::

    from hf_dynasr.lm.decoding import build_lm, load_lm_decoder
    build_lm("data/demo_corpus", "lm", order=3)     # train/metadata.csv -> lm/{lm.arpa,lexicon.txt,lm_config.json}
    decoder = load_lm_decoder("lm", tokenizer=processor.tokenizer, lm_weight=1.0)  # pip install flashlight-text
    texts = decoder.decode(logits, lengths)         # logits [B, T, V] or [T, V] -> list[str]

The ARPA file is estimated with KenLM's ``lmplz`` or IRSTLM (``build-lm.sh`` + ``compile-lm``, Debian
package ``irstlm``) when present, else by a small pure-Python interpolated Kneser-Ney estimator
(:func:`write_kneser_ney_arpa`). ``lexicon.txt`` is in flashlight's format: one word per line followed by
its spelling in tokenizer characters, ending with the word delimiter ``|`` (``cat c a t |``).
``lm_config.json`` records the order, tool, vocabulary size, tokens and default decoding weights.
The training text, lexicon and pure-Python ARPA estimation are in ``hf_dynasr.lm.build`` (importable from
here too); this module runs the external estimators, assembles LM folders, decodes and ships LMs.

Decoding follows the tokenizer's conventions: blank = ``<pad>`` (id 0), words separated by ``|``. The model
does not emit a ``|`` after the last word, so one ``|`` frame is appended to each utterance before the
search; the decoder then outputs only lexicon words (no ``<unk>``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from hf_dynasr.json_io import write_json
from hf_dynasr.lm.build import (
    _token_list,
    arpa_ngram_counts,
    normalize_sentences,
    read_lexicon,
    read_transcriptions,
    write_kneser_ney_arpa,
    write_lexicon,
)

logger = logging.getLogger(__name__)

LM_FILE = "lm.arpa"
LEXICON_FILE = "lexicon.txt"
CONFIG_FILE = "lm_config.json"
TOOLS = ("auto", "kenlm", "irstlm", "python")
#: Beam search defaults written to lm_config.json (flashlight's LexiconDecoder options; LM scores are log10).
DEFAULT_DECODING = {"lm_weight": 1.0, "word_score": 0.0, "beam_size": 50, "beam_threshold": 25.0, "sil_score": 0.0}
_INSTALL_HINT = "LM decoding needs flashlight-text: pip install flashlight-text (or pip install -e '.[lm]')"
_SPECIAL = ("<s>", "</s>", "<unk>")


# =========================================================================================================
# ARPA estimation with external tools, LM folders
# =========================================================================================================


def _irstlm_bin() -> Path | None:
    for cand in (os.environ.get("IRSTLM") and Path(os.environ["IRSTLM"]) / "bin", Path("/usr/lib/irstlm/bin"),
                 shutil.which("build-lm.sh") and Path(shutil.which("build-lm.sh")).parent):
        if cand and (Path(cand) / "build-lm.sh").is_file() and (Path(cand) / "compile-lm").is_file():
            return Path(cand)
    return None


def available_tools() -> list[str]:
    """LM estimators usable here, preferred first (the pure-Python one is always available)."""
    return [*(["kenlm"] if shutil.which("lmplz") else []), *(["irstlm"] if _irstlm_bin() else []), "python"]


def _run(cmd, log, **kwargs) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    log.append(f"$ {' '.join(map(str, cmd))}\n{proc.stdout}{proc.stderr}")
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-2000:]}")


def _build_kenlm(text_file: Path, order: int, arpa: Path, work: Path, log) -> str:
    _run(["lmplz", "-o", str(order), "--text", str(text_file), "--arpa", str(arpa), "--discount_fallback",
          "-S", "20%", "-T", str(work)], log)
    return "modified-kneser-ney"


def _build_irstlm(text_file: Path, order: int, arpa: Path, work: Path, log, smoothing: str) -> str:
    bindir = _irstlm_bin()
    bounded = work / "bounded.txt"  # what add-start-end.sh does
    with open(text_file, encoding="utf-8") as src, open(bounded, "w", encoding="utf-8") as dst:
        for line in src:
            dst.write(f"<s> {line.strip()} </s>\n")
    ilm = work / "lm.ilm.gz"
    env = {**os.environ, "IRSTLM": str(bindir.parent)}
    _run([str(bindir / "build-lm.sh"), "-i", str(bounded), "-n", str(order), "-o", str(ilm), "-k", "1",
          "-s", smoothing, "-t", str(work / "stat"), "-l", str(work / "build-lm.log")], log, env=env, cwd=work)
    if not ilm.is_file():
        tail = (work / "build-lm.log").read_text(errors="replace")[-2000:] if (work / "build-lm.log").is_file() else ""
        raise RuntimeError(f"IRSTLM build-lm.sh wrote no LM:\n{tail}")
    _run([str(bindir / "compile-lm"), "--text=yes", str(ilm), str(arpa)], log, env=env, cwd=work)
    return smoothing


def build_lm(
    text,
    output_dir,
    *,
    order: int = 3,
    tool: str = "auto",
    split: str = "train",
    text_column: str | None = None,
    tokens=None,
    irstlm_smoothing: str = "witten-bell",
    decoding: Mapping | None = None,
) -> dict:
    """Build `output_dir/{lm.arpa, lexicon.txt, lm_config.json}` from training text; returns the config.

    `text`: a corpus folder, metadata file or text file (see `read_transcriptions`), or a list of sentences.
    `tool`: "auto" (lmplz, else IRSTLM, else Python), "kenlm", "irstlm" or "python". `tokens`: the CTC
    vocabulary (a tokenizer, {token: id} or a list by id; default: the hf_dynasr character vocabulary): words
    are normalised to its characters and it is stored for decoding. `decoding`: overrides of the default
    beam search weights stored in lm_config.json."""
    if tool not in TOOLS:
        raise ValueError(f"tool must be one of {TOOLS}, got {tool!r}")
    tools = available_tools()
    if tool == "auto":
        tool = tools[0]
    elif tool not in tools:
        hint = "apt-get install -y irstlm" if tool == "irstlm" else "install KenLM's lmplz (build kenlm)"
        raise RuntimeError(f"LM tool {tool!r} is not installed here ({hint}); available: {', '.join(tools)}")
    unknown_decoding = set(decoding or {}) - set(DEFAULT_DECODING)
    if unknown_decoding:
        raise ValueError(f"unknown decoding option(s) {sorted(unknown_decoding)}; known: {sorted(DEFAULT_DECODING)}")
    token_list = _token_list(tokens)
    delimiter = "|"
    if delimiter not in token_list:
        raise ValueError(f"the vocabulary has no word delimiter {delimiter!r}")
    source = None
    if isinstance(text, (str, os.PathLike)):
        source = os.path.basename(os.path.normpath(os.fspath(text)))
        text = read_transcriptions(text, split=split, text_column=text_column)
    sentences = normalize_sentences(text, token_list, delimiter)
    if not sentences:
        raise ValueError("no training sentences: the text is empty after normalisation")
    words = Counter(w for s in sentences for w in s)

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    arpa = output_dir / LM_FILE
    start = time.perf_counter()
    log: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hf_dynasr_lm_") as work:
        work = Path(work)
        if tool == "python":
            smoothing = "interpolated-kneser-ney"
            write_kneser_ney_arpa(sentences, order, arpa)
        else:
            text_file = work / "text.txt"
            text_file.write_text("".join(" ".join(s) + "\n" for s in sentences), encoding="utf-8")
            tmp_arpa = work / LM_FILE
            smoothing = _build_kenlm(text_file, order, tmp_arpa, work, log) if tool == "kenlm" else \
                _build_irstlm(text_file, order, tmp_arpa, work, log, irstlm_smoothing)
            shutil.move(os.fspath(tmp_arpa), arpa)
    logger.debug("\n".join(log))
    counts = arpa_ngram_counts(arpa)
    n_lex = write_lexicon(words, output_dir / LEXICON_FILE, delimiter)
    config = {
        "order": order, "tool": tool, "smoothing": smoothing, "arpa": LM_FILE, "lexicon": LEXICON_FILE,
        "vocabulary_size": len(words), "lexicon_size": n_lex, "ngram_counts": {str(k): v for k, v in counts.items()},
        "num_sentences": len(sentences), "num_words": sum(words.values()), "source": source,
        "split": split if source else None, "build_seconds": round(time.perf_counter() - start, 3),
        "tokens": token_list, "blank_token": token_list[0], "word_delimiter": delimiter,
        "decoding": {**DEFAULT_DECODING, **(decoding or {})},
    }

    write_json(output_dir / CONFIG_FILE, config)
    return config


def read_lm_config(lm_dir) -> dict:
    """The `lm_config.json` of an LM folder, after checking that its ARPA and lexicon files exist."""
    lm_dir = Path(lm_dir)
    path = lm_dir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{lm_dir} is not an LM folder (no {CONFIG_FILE}); build one with "
                                "scripts/build_lm.py --text CORPUS --output_dir DIR")
    config = json.loads(path.read_text(encoding="utf-8"))
    for key, default in (("arpa", LM_FILE), ("lexicon", LEXICON_FILE)):
        if not (lm_dir / config.get(key, default)).is_file():
            raise FileNotFoundError(f"{lm_dir / config.get(key, default)} is missing ({key} of {path})")
    return config


# =========================================================================================================
# decoding
# =========================================================================================================


def _flashlight():
    try:
        from flashlight.lib.text import decoder as fl_decoder
        from flashlight.lib.text.decoder.kenlm import KenLM
        from flashlight.lib.text.dictionary import Dictionary
    except ImportError as err:
        raise ImportError(f"{_INSTALL_HINT} ({err})") from None
    return fl_decoder, KenLM, Dictionary


def _log_softmax(x):
    import numpy as np

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
        self.tokens = _token_list(tokens)
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
        import numpy as np

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


# =========================================================================================================
# shipping an LM with an exported size
# =========================================================================================================

LM_SUBDIR = "language_model"


def copy_lm_dir(lm_dir, destination) -> Path:
    """Copy an LM folder's lm_config.json, ARPA and lexicon (only those) to `destination`."""
    config = read_lm_config(lm_dir)
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_FILE, config.get("arpa", LM_FILE), config.get("lexicon", LEXICON_FILE)):
        shutil.copy2(Path(lm_dir) / name, destination / name)
    return destination


def lm_summary(lm_dir) -> dict | None:
    """What a model card says about a shipped LM folder (None if `lm_dir` holds none)."""
    if lm_dir is None or not (Path(lm_dir) / CONFIG_FILE).is_file():
        return None
    config = read_lm_config(lm_dir)
    decoding = {**DEFAULT_DECODING, **config.get("decoding", {})}
    tool = {"python": "hf_dynasr's pure-Python estimator", "irstlm": "IRSTLM", "kenlm": "KenLM lmplz"}.get(
        config.get("tool"), config.get("tool"))
    return {"folder": LM_SUBDIR, "order": config.get("order"), "tool": tool,
            "smoothing": config.get("smoothing"), "vocabulary_size": config.get("vocabulary_size"),
            "num_sentences": config.get("num_sentences"), "source": config.get("source"),
            "lm_weight": decoding["lm_weight"], "word_score": decoding["word_score"],
            "beam_size": decoding["beam_size"]}
