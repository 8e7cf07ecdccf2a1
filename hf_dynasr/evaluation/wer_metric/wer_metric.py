"""Word and character error rate as a local `evaluate` module that works offline with jiwer 4.

    import evaluate
    wer = evaluate.load("/abs/path/to/hf_dynasr/evaluation/wer_metric")
    wer.compute(predictions=["hello word"], references=["hello world"])
    # {'wer': 0.5, 'cer': 0.0909..., 'substitutions': 1, 'deletions': 0, 'insertions': 0, 'hits': 1}

Loading the Hub's "wer" metric with `evaluate` needs the Hub and its script imports `jiwer.compute_measures`,
which jiwer 4 removed; this module has no such dependency. It scores with `hf_dynasr.evaluation.scoring.wer_cer` (so hf_dynasr must be
installed), the scorer of `evaluate_checkpoint` and of training-time evaluation: corpus level (total errors /
total reference words or characters); with `normalize=True` (default) both sides are lowercased, accents and
punctuation removed (apostrophes inside words kept) by `normalize_for_scoring`.
"""

import datasets
import evaluate

from hf_dynasr.evaluation.scoring import wer_cer

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

_RESULT_KEYS = ("wer", "cer", "substitutions", "deletions", "insertions", "hits")


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
        scores = wer_cer(references, predictions, normalize=normalize)
        return {key: scores[key] for key in _RESULT_KEYS}
