"""Training-time evaluation: greedy CTC WER/CER of every size of a model on prepared features.

Scored with `hf_dynasr.evaluation.scoring.wer_cer` (normalised text, empty references counted), like
`evaluate_checkpoint`, so the dev WER logged during training is the WER an evaluation run reports.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from hf_dynasr.evaluation.inference import greedy_transcribe
from hf_dynasr.evaluation.scoring import wer_cer
from hf_dynasr.models.dynasr.subnets_dynasr import FULL


@torch.no_grad()
def transcribe(model, loader, tokenizer, subnet: str | None) -> tuple[list[str], list[str]]:
    """Greedy CTC transcripts and the references decoded from the labels."""
    hyps, refs = [], []
    for batch in loader:
        texts, _, _ = greedy_transcribe(model, batch["input_features"], batch["attention_mask"], tokenizer,
                                        subnet=subnet)
        hyps += texts
        labels = batch["labels"].masked_fill(batch["labels"] < 0, tokenizer.pad_token_id)
        refs += tokenizer.batch_decode(labels, group_tokens=False)
    return refs, hyps


def evaluate_sizes(model, eval_ds, collator, tokenizer, batch_size: int = 16, samples: int = 3) -> dict:
    """{size: {wer, cer, utterances, error counts, num_parameters, flops, samples}} for the full net and every
    selected subnet."""
    was_training = model.training
    model.eval()
    loader = DataLoader(eval_ds.with_format("numpy"), batch_size=batch_size, collate_fn=collator)
    costs = model.component_costs()
    sizes = {FULL: {"num_parameters": costs.total_params, "flops": costs.total_flops}}
    for name, entry in model.config.subnets.items():
        if entry.get("components") is not None and not model.component_index.covers_all(entry["components"]):
            sizes[name] = {"num_parameters": entry["num_parameters"], "flops": entry["flops"]}
    results = {}
    for name, size in sizes.items():
        refs, hyps = transcribe(model, loader, tokenizer, None if name == FULL else name)
        results[name] = {**wer_cer(refs, hyps), "utterances": len(refs), **size,
                         "samples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps))[:samples]]}
    model.train(was_training)
    return results
