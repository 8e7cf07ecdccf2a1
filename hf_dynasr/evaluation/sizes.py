"""Training-time evaluation: greedy CTC WER/CER of every size of a model on prepared features.

Scored with `hf_dynasr.evaluation.scoring.wer_cer` (normalised text, empty references counted), like
`evaluate_checkpoint`, so the dev WER logged during training is the WER an evaluation run reports.

Under DDP every process transcribes its share of the batches; the transcripts are gathered in the order of
the evaluation set and scored once, so the scores equal those of one process on the same data.
"""

from __future__ import annotations

import json

import torch
from torch.utils.data import DataLoader

from hf_dynasr.evaluation.inference import greedy_transcribe
from hf_dynasr.evaluation.scoring import wer_cer
from hf_dynasr.models.dynasr.subnets_dynasr import FULL


@torch.no_grad()
def transcribe(model, loader, tokenizer, subnet: str | None) -> tuple[list[str], list[str]]:
    """Greedy CTC transcripts and the references decoded from the labels (batches moved to the model's device)."""
    device = next(model.parameters()).device
    hyps, refs = [], []
    for batch in loader:
        texts, _, _ = greedy_transcribe(model, batch["input_features"].to(device),
                                        batch["attention_mask"].to(device), tokenizer, subnet=subnet)
        hyps += texts
        labels = batch["labels"].masked_fill(batch["labels"] < 0, tokenizer.pad_token_id)
        refs += tokenizer.batch_decode(labels, group_tokens=False)
    return refs, hyps


def shard_batches(num_items: int, batch_size: int, process_index: int = 0, num_processes: int = 1) -> list[list[int]]:
    """The batches (lists of row indices, in order) of process `process_index`: the batches of one process are
    cut into `num_processes` contiguous runs, so each utterance is batched with the same neighbours (same
    padding, same results) whatever the number of processes, and none is scored twice."""
    if batch_size < 1:
        raise ValueError(f"the evaluation batch size must be at least 1; got {batch_size}")
    batches = [list(range(i, min(i + batch_size, num_items))) for i in range(0, num_items, batch_size)]
    per_process, extra = divmod(len(batches), num_processes)
    start = process_index * per_process + min(process_index, extra)
    return batches[start : start + per_process + (process_index < extra)]


def gather_texts(accelerator, texts: list[str]) -> list[str]:
    """Every process's `texts`, concatenated in process order, on every process. Sent as UTF-8 bytes in a
    tensor collective (torch's pickling `all_gather_object` left a gloo process hanging at exit)."""
    data = torch.tensor(list(json.dumps(texts).encode()), dtype=torch.uint8, device=accelerator.device)
    lengths = accelerator.gather(torch.tensor([data.numel()], device=accelerator.device)).tolist()
    padded = accelerator.gather(accelerator.pad_across_processes(data, dim=0)).reshape(len(lengths), -1).cpu()
    return [text for row, n in zip(padded, lengths) for text in json.loads(bytes(row[:n].tolist()).decode())]


def evaluate_sizes(model, eval_ds, collator, tokenizer, batch_size: int = 16, samples: int = 3,
                   accelerator=None) -> dict:
    """{size: {wer, cer, utterances, error counts, num_parameters, flops, samples}} for the full net and every
    selected subnet. With an `accelerator` of several processes, call it on every process: each transcribes
    its share of `eval_ds` and every process returns the scores of the whole set."""
    was_training = model.training
    model.eval()
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    loader = DataLoader(eval_ds.with_format("numpy"), batch_sampler=shard_batches(len(eval_ds), batch_size, rank,
                                                                                  world), collate_fn=collator)
    costs = model.component_costs()
    sizes = {FULL: {"num_parameters": costs.total_params, "flops": costs.total_flops}}
    for name, entry in model.config.subnets.items():
        if entry.get("components") is not None and not model.component_index.covers_all(entry["components"]):
            sizes[name] = {"num_parameters": entry["num_parameters"], "flops": entry["flops"]}
    results = {}
    for name, size in sizes.items():
        refs, hyps = transcribe(model, loader, tokenizer, None if name == FULL else name)
        if world > 1:  # lists gathered in rank order = the order of the evaluation set (contiguous shards)
            refs, hyps = gather_texts(accelerator, refs), gather_texts(accelerator, hyps)
        results[name] = {**wer_cer(refs, hyps), "utterances": len(refs), **size,
                         "samples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps))[:samples]]}
    model.train(was_training)
    return results
