"""Text normalisation for a character CTC vocabulary: one normaliser for training transcripts, LM text and
scoring (`hf_dynasr.evaluation.scoring` calls it with a wider character class)."""

from __future__ import annotations

import functools
import re
import unicodedata

#: The characters ``load_speech_dataset`` keeps in a transcript by default: the training characters plus digits,
#: so that a transcript with a number reaches preparation whole and is dropped and counted there (as characters
#: outside the vocabulary) instead of silently losing the spoken number ("I have 3 cats" -> "i have cats").
TRANSCRIPT_CHARACTERS = "a-z0-9' "

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u00b4": "'", "\u02bc": "'"})


@functools.lru_cache(maxsize=32)
def _not_in_class(keep: str) -> re.Pattern:
    return re.compile(f"[^{keep}]")


def normalize_text(
    text: str | None,
    *,
    lowercase: bool = True,
    keep: str = "a-z' ",
    unknown: str = "drop",
    strip_accents: bool = True,
    separators: str = "-_/\u2013\u2014",
    strip_edge_apostrophes: bool = True,
) -> str:
    """Normalise a transcription for a character CTC vocabulary.

    Steps: typographic apostrophes -> ``'``; accents stripped (``é`` -> ``e``); lowercase; the characters in
    ``separators`` (hyphens, slashes, dashes) become spaces; characters outside the regex character class
    ``keep`` are dropped (``unknown="drop"``), replaced by a space (``"space"``) or kept (``"keep"``, leaving
    them to ``prepare_dataset``'s ``oov`` policy); apostrophes at word edges are removed (quotes, not
    contractions); whitespace is collapsed. Digits are not spelled out: they are unknown characters by default.

    >>> normalize_text("Don't   STOP -- it's well-known, Café!")
    "don't stop it's well known cafe"
    """
    if not text:
        return ""
    if unknown not in ("drop", "space", "keep"):
        raise ValueError(f"unknown must be 'drop', 'space' or 'keep', got {unknown!r}")
    text = text.translate(_APOSTROPHES)
    if strip_accents:
        text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    if lowercase:
        text = text.lower()
    for sep in separators:
        text = text.replace(sep, " ")
    text = re.sub(r"\s+", " ", text)
    if unknown != "keep":
        text = _not_in_class(keep).sub("" if unknown == "drop" else " ", text)
    if strip_edge_apostrophes:
        text = re.sub(r"(?<!\w)'+|'+(?!\w)", "", text)
    return " ".join(text.split())
