"""Pure-Python building blocks of hf_dynasr's LM folders: training text, lexicon, ARPA n-gram estimation.

`read_transcriptions` and `normalize_sentences` turn a corpus into word lists normalised like the training
targets; `write_lexicon` / `read_lexicon` handle flashlight's lexicon format; `write_kneser_ney_arpa`
estimates an interpolated Kneser-Ney n-gram and writes it as ARPA, `arpa_ngram_counts` reads an ARPA
header. `hf_dynasr.lm.decoding.build_lm` puts them (or KenLM / IRSTLM) together into an LM folder.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path


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
    from hf_dynasr.data import TEXT_COLUMN_CANDIDATES

    path = Path(source)
    if path.is_dir():
        table = _metadata_file(path) or _metadata_file(path / split)
        if table is None:
            raise FileNotFoundError(f"{path} has no metadata.csv/metadata.jsonl (nor {path / split}/metadata.*); "
                                    "pass an audiofolder corpus, a metadata file or a text file")
        path = table
    if not path.is_file():
        raise FileNotFoundError(f"training text not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".jsonl"):
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    with open(path, newline="", encoding="utf-8") as f:
        if suffix == ".jsonl":
            rows = [json.loads(line) for line in f if line.strip()]
        else:
            rows = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
    header = list(rows[0]) if rows else []
    column = text_column or next((c for c in TEXT_COLUMN_CANDIDATES if c in header), None)
    if rows and column not in header:
        raise ValueError(f"no text column in {path} (columns {header}); pass text_column= (--text_column)")
    return [str(r.get(column) or "").strip() for r in rows if str(r.get(column) or "").strip()]


def _token_list(tokens) -> list[str]:
    """Tokens by id from a tokenizer, a {token: id} mapping, or a sequence."""
    if tokens is None:
        from hf_dynasr.data.processing import DEFAULT_VOCAB

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
    from hf_dynasr.data import normalize_text

    chars = _spelling_chars(_token_list(tokens), delimiter)
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
# ARPA estimation
# =========================================================================================================


def _discount(counts: Mapping) -> float:
    """Absolute discount D = n1 / (n1 + 2 n2) of one order's counts (0.5 when undefined on tiny data)."""
    hist = Counter(c for c in counts.values())
    n1, n2 = hist.get(1, 0), hist.get(2, 0)
    d = n1 / (n1 + 2 * n2) if n1 and n2 else 0.5
    return min(max(d, 0.1), 0.9)


def write_kneser_ney_arpa(sentences: Sequence[Sequence[str]], order: int, path) -> dict:
    """Estimate an interpolated Kneser-Ney n-gram (one absolute discount per order) and write it as ARPA.

    Sentences are padded with one `<s>` and `</s>`; lower orders use continuation counts (n-grams starting
    with `<s>` keep raw counts), the unigram distribution is interpolated with a uniform one over the
    vocabulary plus `<unk>`. Each seen n-gram stores its interpolated probability and each context the
    backoff weight D * N1+(h .) / c(h), so the ARPA backoff model is the interpolated model exactly: every
    context's distribution sums to 1. Returns {order: number of n-grams}."""
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    if not sentences:
        raise ValueError("no training sentences: the text is empty after normalisation")
    raw: list[Counter] = [Counter() for _ in range(order + 1)]
    for words in sentences:
        toks = ("<s>", *words, "</s>")
        for k in range(1, order + 1):
            for i in range(len(toks) - k + 1):
                raw[k][toks[i:i + k]] += 1
    adjusted: list[dict] = [{} for _ in range(order + 1)]
    adjusted[order] = dict(raw[order])
    for k in range(order - 1, 0, -1):  # continuation counts: distinct left neighbours in order k + 1
        left = Counter(g[1:] for g in raw[k + 1])
        adjusted[k] = {g: (c if g[0] == "<s>" else left[g]) for g, c in raw[k].items()}
    adjusted[1].pop(("<s>",), None)
    vocab = sorted({g[0] for g in raw[1]} - {"<s>"} | {"<unk>"})
    adjusted[1].setdefault(("<unk>",), 0)

    prob: list[dict] = [{} for _ in range(order + 1)]
    backoff: list[dict] = [{} for _ in range(order + 1)]
    d1 = _discount({g: c for g, c in adjusted[1].items() if c})
    total1 = sum(adjusted[1].values())
    types1 = sum(1 for c in adjusted[1].values() if c)
    for w in vocab:
        prob[1][(w,)] = max(adjusted[1].get((w,), 0) - d1, 0) / total1 + d1 * types1 / total1 / len(vocab)
    for k in range(2, order + 1):
        d = _discount(adjusted[k])
        totals, types = Counter(), Counter()
        for g, c in adjusted[k].items():
            totals[g[:-1]] += c
            types[g[:-1]] += 1
        for g, c in adjusted[k].items():
            h = g[:-1]
            gamma = d * types[h] / totals[h]
            prob[k][g] = max(c - d, 0) / totals[h] + gamma * prob[k - 1][g[1:]]
        for h in totals:
            backoff[k - 1][h] = d * types[h] / totals[h]

    tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
    counts = {1: len(vocab) + 1, **{k: len(prob[k]) for k in range(2, order + 1)}}
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\\data\\\n")
        for k in range(1, order + 1):
            f.write(f"ngram {k}={counts[k]}\n")
        for k in range(1, order + 1):
            f.write(f"\n\\{k}-grams:\n")
            entries = sorted(prob[k].items())
            if k == 1:
                entries = sorted([(("<s>",), None), *entries])
            for g, p in entries:
                logp = -99.0 if p is None else math.log10(p)
                line = f"{logp:.6f}\t{' '.join(g)}"
                if k < order and g != ("</s>",):
                    bo = backoff[k].get(g)
                    line += f"\t{math.log10(bo):.6f}" if bo else "\t0"
                f.write(line + "\n")
        f.write("\n\\end\\\n")
    os.replace(tmp, path)
    return counts


def arpa_ngram_counts(path) -> dict[int, int]:
    """{order: count} from an ARPA file's \\data\\ header."""
    counts = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = re.match(r"\s*ngram\s+(\d+)\s*=\s*(\d+)", line)
            if m:
                counts[int(m.group(1))] = int(m.group(2))
            elif line.startswith("\\1-grams"):
                break
    if not counts:
        raise ValueError(f"{path} is not an ARPA file (no \\data\\ header)")
    return counts
