"""The one WER/CER of hf_dynasr: text normalisation for scoring and corpus-level error rates (jiwer 4).

Training-time evaluation (`hf_dynasr.evaluation.sizes`), `evaluate_checkpoint` and the local `evaluate`
metric (`hf_dynasr/evaluation/wer_metric`) all score with `wer_cer`, so the dev WER logged in training and
the WER of an evaluation run agree on the same transcripts.

    from hf_dynasr.evaluation.scoring import wer_cer
    wer_cer(["Hello, World!"], ["hello word"])["wer"]   # 0.5: punctuation and case are normalised away
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jiwer

from hf_dynasr.data.text import normalize_text

#: Characters kept by `normalize_for_scoring`: word characters (letters and digits of any script),
#: whitespace and apostrophes.
SCORING_CHARACTERS = r"\w\s'"
_COUNT_KEYS = ("substitutions", "deletions", "insertions", "hits")


def normalize_for_scoring(text: str | None) -> str:
    """Text normalisation applied to references and hypotheses before scoring.

    `hf_dynasr.data.text.normalize_text` with a wider character class than the training targets:
    accents stripped, lowercase, typographic apostrophes -> ``'``, hyphens/slashes/dashes -> space, other
    punctuation removed (apostrophes inside words kept), whitespace collapsed. Digits are kept.

    >>> normalize_for_scoring("Don't STOP -- it's well-known, Café!")
    "don't stop it's well known cafe"
    """
    return normalize_text(text, keep=SCORING_CHARACTERS)


def wer_cer(references: Sequence[str], predictions: Sequence[str], normalize: bool = True) -> dict:
    """Corpus-level WER and CER (total errors / total reference words or characters) with jiwer 4.

    Returns wer, cer, substitutions, deletions, insertions, hits (word level), num_words, and the same
    counts at character level prefixed with ``char_`` (and num_chars). Empty references are allowed (their
    hypothesis words count as insertions); with no reference word at all, WER is 0 for empty hypotheses,
    else inf. `normalize`: score `normalize_for_scoring` of both sides (default), else the texts as given."""
    references, predictions = list(references), list(predictions)
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    if normalize:
        references = [normalize_for_scoring(t) for t in references]
        predictions = [normalize_for_scoring(t) for t in predictions]
    words = _counts(references, predictions, jiwer.process_words, jiwer.ReduceToListOfListOfWords())
    chars = _counts(references, predictions, jiwer.process_characters, jiwer.ReduceToListOfListOfChars())
    return {
        "wer": _rate(words), "cer": _rate(chars),
        **{k: words[k] for k in _COUNT_KEYS},
        "num_words": words["hits"] + words["substitutions"] + words["deletions"],
        **{f"char_{k}": chars[k] for k in _COUNT_KEYS},
        "num_chars": chars["hits"] + chars["substitutions"] + chars["deletions"],
    }


def _counts(references: list[str], predictions: list[str], process, reduce) -> dict[str, int]:
    """Summed jiwer counts; pairs with an empty reference count every hypothesis unit as an insertion
    (jiwer refuses empty references)."""
    total = dict.fromkeys(_COUNT_KEYS, 0)
    scored = [(r, p) for r, p in zip(references, predictions) if r.strip()]
    for r, p in zip(references, predictions):
        if not r.strip() and p.strip():
            total["insertions"] += sum(len(x) for x in reduce(p))
    if scored:
        transform = jiwer.Compose([jiwer.Strip(), reduce])
        out = process([r for r, _ in scored], [p for _, p in scored],
                      reference_transform=transform, hypothesis_transform=transform)
        for key in total:
            total[key] += int(getattr(out, key))
    return total


def _rate(counts: Mapping[str, int]) -> float:
    n = counts["hits"] + counts["substitutions"] + counts["deletions"]
    errors = counts["substitutions"] + counts["deletions"] + counts["insertions"]
    if n == 0:
        return 0.0 if errors == 0 else math.inf
    return errors / n
