"""Evaluation: one text normaliser and one WER/CER, per-size evaluation of a checkpoint, latency, budget picks,
and reports (markdown, plots).

One module per concern: `scoring` (the normaliser and `wer_cer`, used everywhere WER is computed),
`inference` (load a checkpoint, its sizes and costs, greedy transcription), `checkpoint`
(`evaluate_checkpoint`), `sizes` (training-time evaluation), `latency` (batch-1 latency, `latency_table.json`),
`budget` (`pick_subnet`), `reports` (markdown tables, sample transcripts, Pareto plots). `wer_metric/` is the
same scoring as a local `evaluate` module. Every public name imports from here.
"""

from hf_dynasr.evaluation.budget import pick_subnet, size_table
from hf_dynasr.evaluation.checkpoint import evaluate_checkpoint
from hf_dynasr.evaluation.inference import (
    load_model_and_processor,
    size_costs,
    size_model,
    size_names,
    transcribe_batch,
)
from hf_dynasr.evaluation.latency import LATENCY_TABLE_NAME, latency_table, machine_info, measure_latency
from hf_dynasr.evaluation.reports import (format_count, plot_pareto, plot_training_curve, results_markdown,
                                          samples_markdown)
from hf_dynasr.evaluation.scoring import normalize_for_scoring, wer_cer
from hf_dynasr.evaluation.sizes import evaluate_sizes

__all__ = [
    "LATENCY_TABLE_NAME",
    "evaluate_checkpoint",
    "evaluate_sizes",
    "format_count",
    "latency_table",
    "load_model_and_processor",
    "machine_info",
    "measure_latency",
    "normalize_for_scoring",
    "pick_subnet",
    "plot_pareto",
    "plot_training_curve",
    "results_markdown",
    "samples_markdown",
    "size_costs",
    "size_model",
    "size_names",
    "size_table",
    "transcribe_batch",
    "wer_cer",
]
