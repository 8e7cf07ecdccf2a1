"""Word and character error rate as a local `evaluate` module that works offline with jiwer 4.

    import evaluate
    wer = evaluate.load("/abs/path/to/hf_dynasr/evaluation/wer_metric")
    wer.compute(predictions=["hello word"], references=["hello world"])
    # {'wer': 0.5, 'cer': 0.0909..., 'substitutions': 1, 'deletions': 0, 'insertions': 0, 'hits': 1}

Loading the Hub's "wer" metric with `evaluate` needs the Hub and its script imports `jiwer.compute_measures`, which jiwer 4 removed;
this module has no such dependency. Scores are corpus level (total errors / total reference words or
characters). With `normalize=True` (default) both sides are lowercased, accents and punctuation removed
(apostrophes inside words kept), as in `hf_dynasr.evaluation.metrics.normalize_for_scoring`.
"""

import re
import unicodedata

import datasets
import evaluate
import jiwer

_CITATION = """\
@inproceedings{morris2004,
  author = {Morris, Andrew and Maier, Viktoria and Green, Phil},
  title = {From WER and RIL to MER and WIL: improved evaluation measures for connected speech recognition},
  year = {2004}
}
"""

_DESCRIPTION = "Corpus-level word error rate (WER) and character error rate (CER) with jiwer 4, plus error counts."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): transcriptions from the model.
    references (`list[str]`): reference transcriptions.
    normalize (`bool`, defaults to `True`): lowercase, strip accents and punctuation before scoring.
Returns:
    wer (`float`), cer (`float`), substitutions, deletions, insertions, hits (`int`, word level).
"""

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u00b4": "'"})


def _normalize(text):
    if not text:
        return ""
    text = text.translate(_APOSTROPHES)
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).lower()
    text = re.sub(r"[-_/\u2013\u2014]", " ", text)
    text = re.sub(r"[^\w\s']", "", text)
    text = re.sub(r"(?<!\w)'+|'+(?!\w)", "", text)
    return " ".join(text.split())


def _counts(references, predictions, process, reduce):
    total = {"substitutions": 0, "deletions": 0, "insertions": 0, "hits": 0}
    scored = [(r, p) for r, p in zip(references, predictions) if r.strip()]
    for r, p in zip(references, predictions):  # empty reference: every hypothesis unit is an insertion
        if not r.strip() and p.strip():
            total["insertions"] += sum(len(x) for x in reduce(p))
    if scored:
        transform = jiwer.Compose([jiwer.Strip(), reduce])
        out = process([r for r, _ in scored], [p for _, p in scored],
                      reference_transform=transform, hypothesis_transform=transform)
        for key in total:
            total[key] += int(getattr(out, key))
    return total


def _rate(c):
    n = c["hits"] + c["substitutions"] + c["deletions"]
    errors = c["substitutions"] + c["deletions"] + c["insertions"]
    return (0.0 if errors == 0 else float("inf")) if n == 0 else errors / n


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class WerMetric(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=["https://github.com/jitsi/jiwer"],
        )

    def _compute(self, predictions=None, references=None, normalize=True):
        references, predictions = list(references), list(predictions)
        if normalize:
            references = [_normalize(t) for t in references]
            predictions = [_normalize(t) for t in predictions]
        words = _counts(references, predictions, jiwer.process_words, jiwer.ReduceToListOfListOfWords())
        chars = _counts(references, predictions, jiwer.process_characters, jiwer.ReduceToListOfListOfChars())
        return {"wer": _rate(words), "cer": _rate(chars), **words}
