"""Greedy CTC evaluation of every size of a model on prepared features (used during training)."""

from __future__ import annotations

import jiwer
import torch
from torch.utils.data import DataLoader

from hf_dynasr.models.dynasr.subnets_dynasr import FULL


@torch.no_grad()
def transcribe(model, loader, tokenizer, subnet: str | None) -> tuple[list[str], list[str]]:
    """Greedy CTC transcripts and the references decoded from the labels."""
    hyps, refs = [], []
    for batch in loader:
        logits = model(input_features=batch["input_features"], attention_mask=batch["attention_mask"],
                       subnet=subnet).logits
        hyps += tokenizer.batch_decode(logits.argmax(-1))
        labels = batch["labels"].masked_fill(batch["labels"] < 0, tokenizer.pad_token_id)
        refs += tokenizer.batch_decode(labels, group_tokens=False)
    return refs, hyps


def wer_cer(refs: list[str], hyps: list[str]) -> dict:
    """Corpus-level WER and CER (jiwer 4: total errors over total reference words / characters)."""
    pairs = [(r, h) for r, h in zip(refs, hyps) if r.strip()]
    if not pairs:
        return {"wer": float("nan"), "cer": float("nan"), "utterances": 0}
    refs, hyps = map(list, zip(*pairs))
    words = jiwer.process_words(refs, hyps)
    return {"wer": words.wer, "cer": jiwer.process_characters(refs, hyps).cer, "utterances": len(refs),
            "substitutions": words.substitutions, "deletions": words.deletions, "insertions": words.insertions}


def evaluate_sizes(model, eval_ds, collator, tokenizer, batch_size: int = 16, samples: int = 3) -> dict:
    """{size: {wer, cer, num_parameters, flops, samples}} for the full net and every selected subnet."""
    was_training = model.training
    model.eval()
    loader = DataLoader(eval_ds.with_format("numpy"), batch_size=batch_size, collate_fn=collator)
    costs = model.component_costs()
    sizes = {FULL: {"num_parameters": costs.total_params, "flops": costs.total_flops}}
    for name, entry in model.config.subnets.items():
        if entry.get("components") is not None and not model._covers_all(entry["components"]):
            sizes[name] = {"num_parameters": entry["num_parameters"], "flops": entry["flops"]}
    results = {}
    for name, size in sizes.items():
        refs, hyps = transcribe(model, loader, tokenizer, None if name == FULL else name)
        results[name] = {**wer_cer(refs, hyps), **size,
                         "samples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps))[:samples]]}
    model.train(was_training)
    return results
