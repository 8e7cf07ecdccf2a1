"""hf_dynasr's LM folders: training text, lexicon, and `build_lm`, which writes `lm.arpa`, `lexicon.txt` and
`lm_config.json` into a folder; `read_lm_config`, `copy_lm_dir` and `lm_summary` read and ship such folders.

`read_transcriptions` and `normalize_sentences` turn a corpus into word lists normalised like the training
targets (`hf_dynasr.data.text.normalize_text`); `write_lexicon` / `read_lexicon` handle flashlight's lexicon
format (`cat<TAB>c a t |`: a word, its spelling in tokenizer characters and the word delimiter `|`); the ARPA
file is estimated by `hf_dynasr.lm.arpa`. `lm_config.json` records the order, tool, vocabulary size, tokens
and default decoding weights.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from hf_dynasr.data.loading import TEXT_COLUMN_CANDIDATES, read_table
from hf_dynasr.data.processing import DEFAULT_VOCAB
from hf_dynasr.data.text import normalize_text
from hf_dynasr.json_io import read_json, write_json
from hf_dynasr.lm.arpa import arpa_ngram_counts, choose_tool, estimate_arpa

LM_FILE = "lm.arpa"
LEXICON_FILE = "lexicon.txt"
CONFIG_FILE = "lm_config.json"
LM_SUBDIR = "language_model"  # an LM folder shipped inside an exported size
#: Beam search defaults written to lm_config.json (flashlight's LexiconDecoder options; LM scores are log10).
DEFAULT_DECODING = {"lm_weight": 1.0, "word_score": 0.0, "beam_size": 50, "beam_threshold": 25.0, "sil_score": 0.0}


# =========================================================================================================
# training text
# =========================================================================================================


def _metadata_file(folder: Path) -> Path | None:
    for name in ("metadata.csv", "metadata.tsv", "metadata.jsonl"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_transcriptions(source, *, split: str = "train", text_column: str | None = None) -> list[str]:
    """Raw training sentences from `source`.

    `source`: an audiofolder directory (its `metadata.csv`/`.jsonl`, or `<source>/<split>/metadata.*` for a
    corpus with split subfolders, so test transcriptions never leak into the LM), a metadata
    `.csv`/`.tsv`/`.jsonl` file (text column: `text_column` or the first of text, transcription, sentence,
    ...), or a plain text file with one sentence per line."""
    path = Path(source)
    if path.is_dir():
        table = _metadata_file(path) or _metadata_file(path / split)
        if table is None:
            raise FileNotFoundError(f"{path} has no metadata.csv/metadata.jsonl (nor {path / split}/metadata.*); "
                                    "pass an audiofolder corpus, a metadata file or a text file")
        path = table
    if not path.is_file():
        raise FileNotFoundError(f"training text not found: {path}")
    if path.suffix.lower() not in (".csv", ".tsv", ".jsonl"):
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    rows = read_table(path)
    header = list(rows[0]) if rows else []
    column = text_column or next((c for c in TEXT_COLUMN_CANDIDATES if c in header), None)
    if rows and column not in header:
        raise ValueError(f"no text column in {path} (columns {header}); pass text_column= (--text_column)")
    return [str(r.get(column) or "").strip() for r in rows if str(r.get(column) or "").strip()]


def token_list(tokens) -> list[str]:
    """Tokens by id from a tokenizer, a {token: id} mapping, or a sequence (None: the default vocabulary)."""
    if tokens is None:
        return list(DEFAULT_VOCAB)
    if hasattr(tokens, "get_vocab"):
        tokens = tokens.get_vocab()
    if isinstance(tokens, Mapping):
        by_id = sorted(tokens.items(), key=lambda kv: kv[1])
        if [i for _, i in by_id] != list(range(len(by_id))):
            raise ValueError("token ids must be 0..V-1 without gaps")
        return [t for t, _ in by_id]
    return [str(t) for t in tokens]


def _spelling_chars(tokens: Sequence[str], delimiter: str) -> set[str]:
    return {t for t in tokens if len(t) == 1 and t != delimiter}


def normalize_sentences(sentences: Iterable[str], tokens=None, delimiter: str = "|") -> list[list[str]]:
    """Sentences as word lists, normalised like training targets (`hf_dynasr.data.normalize_text`) and
    restricted to the single-character tokens of the vocabulary (default: a-z and ')."""
    chars = _spelling_chars(token_list(tokens), delimiter)
    letters = "".join(re.escape(c) for c in sorted(chars) if c != " ")
    out = []
    for sentence in sentences:
        words = normalize_text(sentence, keep=letters + " ").split()
        if words:
            out.append(words)
    return out


# =========================================================================================================
# lexicon
# =========================================================================================================


def write_lexicon(words: Iterable[str], path, delimiter: str = "|") -> int:
    """flashlight lexicon: `word<TAB>w o r d |` per line, sorted. Returns the number of words."""
    words = sorted(set(words))
    tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for word in words:
            f.write(f"{word}\t{' '.join(word)} {delimiter}\n")
    os.replace(tmp, path)
    return len(words)


def read_lexicon(path) -> dict[str, list[list[str]]]:
    """{word: [spelling, ...]} of a flashlight lexicon file (word, then space-separated tokens)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"lexicon not found: {path} (build one with scripts/build_lm.py)")
    lexicon: dict[str, list[list[str]]] = defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2:
                raise ValueError(f"{path}:{n}: expected 'word t o k e n s |', got {line.strip()!r}")
            lexicon[fields[0]].append(fields[1:])
    if not lexicon:
        raise ValueError(f"lexicon {path} is empty")
    return dict(lexicon)


# =========================================================================================================
# LM folders
# =========================================================================================================


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
    tool = choose_tool(tool)
    unknown_decoding = set(decoding or {}) - set(DEFAULT_DECODING)
    if unknown_decoding:
        raise ValueError(f"unknown decoding option(s) {sorted(unknown_decoding)}; known: {sorted(DEFAULT_DECODING)}")
    vocabulary = token_list(tokens)
    delimiter = "|"
    if delimiter not in vocabulary:
        raise ValueError(f"the vocabulary has no word delimiter {delimiter!r}")
    source = None
    if isinstance(text, (str, os.PathLike)):
        source = os.path.basename(os.path.normpath(os.fspath(text)))
        text = read_transcriptions(text, split=split, text_column=text_column)
    sentences = normalize_sentences(text, vocabulary, delimiter)
    if not sentences:
        raise ValueError("no training sentences: the text is empty after normalisation")
    words = Counter(w for s in sentences for w in s)

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    smoothing = estimate_arpa(sentences, order, output_dir / LM_FILE, tool, irstlm_smoothing)
    counts = arpa_ngram_counts(output_dir / LM_FILE)
    n_lex = write_lexicon(words, output_dir / LEXICON_FILE, delimiter)
    config = {
        "order": order, "tool": tool, "smoothing": smoothing, "arpa": LM_FILE, "lexicon": LEXICON_FILE,
        "vocabulary_size": len(words), "lexicon_size": n_lex, "ngram_counts": {str(k): v for k, v in counts.items()},
        "num_sentences": len(sentences), "num_words": sum(words.values()), "source": source,
        "split": split if source else None, "build_seconds": round(time.perf_counter() - start, 3),
        "tokens": vocabulary, "blank_token": vocabulary[0], "word_delimiter": delimiter,
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
    config = read_json(path)
    for key, default in (("arpa", LM_FILE), ("lexicon", LEXICON_FILE)):
        if not (lm_dir / config.get(key, default)).is_file():
            raise FileNotFoundError(f"{lm_dir / config.get(key, default)} is missing ({key} of {path})")
    return config


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
