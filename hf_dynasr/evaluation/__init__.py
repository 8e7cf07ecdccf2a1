"""Evaluation: one text normaliser and one WER/CER, per-size evaluation of a checkpoint, latency, budget picks,
and reports (JSON, markdown, plots)."""

from hf_dynasr.evaluation.budget import pick_subnet, size_table
from hf_dynasr.evaluation.metrics import evaluate_checkpoint, latency_table, normalize_for_scoring, wer_cer

__all__ = ["evaluate_checkpoint", "latency_table", "normalize_for_scoring", "pick_subnet", "size_table", "wer_cer"]
