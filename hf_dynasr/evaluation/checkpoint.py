"""Evaluation of every size of an hf_dynasr checkpoint: WER/CER, sizes, latency.

    from hf_dynasr.evaluation import evaluate_checkpoint, results_markdown, plot_pareto
    results = evaluate_checkpoint("ckpt", dataset)   # every size + "full"; dataset: columns audio, text
    table = results_markdown(results); plot_pareto(results, "pareto.png")

`evaluate_checkpoint` scores the extracted model of each size (what `export_subnets` ships), computes the
features of each batch once for all sizes, and reports per size: WER, CER, error counts, parameters,
FLOPs at the config's reference duration, and (optionally) latency at batch 1 with the real-time factor on
this machine. Scoring is `hf_dynasr.evaluation.scoring.wer_cer`, the same as training-time evaluation and
the local `evaluate` metric in `hf_dynasr/evaluation/wer_metric`.
"""

from __future__ import annotations

from collections.abc import Mapping

from hf_dynasr.evaluation.inference import (
    audio_array,
    by_cost,
    load_model_and_processor,
    size_costs,
    size_model,
    size_names,
    transcribe_batch,
)
from hf_dynasr.evaluation.latency import latency_setup, machine_info, measure_latency
from hf_dynasr.evaluation.scoring import wer_cer

NUM_EXAMPLES = 3  # reference/prediction pairs kept per size in the results


def evaluate_checkpoint(
    model_or_dir,
    dataset=None,
    processor=None,
    subnets="all",
    batch_size: int = 8,
    *,
    normalize: bool = True,
    latency: bool = True,
    latency_duration_s: float = 10.0,
    latency_runs: int = 3,
    num_threads: int | None = None,
    dataset_name: str | None = None,
    split: str | None = None,
    text_column: str = "text",
    audio_column: str = "audio",
    max_samples: int | None = None,
    decoder=None,
    group_by: str | None = None,
) -> dict:
    """Evaluate every size of a supernet checkpoint (or the one size of a per-size checkpoint).

    `dataset`: a `datasets.Dataset` (or any sequence of rows) with `audio` (an array at the feature extractor's
    rate, a dict-like with "array" and "sampling_rate" (resampled), a path, ...: see `inference.audio_array`,
    which refuses NaN/Inf or empty audio naming the row) and `text`; `None` skips WER/CER (costs and latency
    only). Returns a JSON-able dict
    `{"checkpoint", "dataset", "split", "num_utterances", "audio_duration_s", "machine", "reference_duration_s",
    "latency_setup", "sizes": {name: {wer, cer, substitutions, deletions, insertions, hits, num_words,
    num_parameters, flops, latency_ms, feature_extraction_ms, rtf, ...}}}`, sizes ordered by parameters.
    `decoder`: also decode with it (e.g. `hf_dynasr.lm.decoding.load_lm_decoder(lm_dir, tokenizer)`) and add
    `lm_wer`, `lm_cer` and `lm` (all scores + examples) per size, and `lm_decoder` (its settings).
    `group_by`: a column of `dataset` (e.g. a synthesized corpus's `engine` or `voice`): also score each of its
    values apart, `groups: {value: {num_utterances, wer, cer}}` per size; `MissingColumnError` (a ValueError)
    naming the columns there are when it has no such column."""
    model, processor, path = load_model_and_processor(model_or_dir, processor)
    names = size_names(model, subnets)
    models = {name: size_model(model, name) for name in names}
    sizes = {name: _size_entry(model, name) for name in names}
    out = {
        "checkpoint": path, "dataset": dataset_name, "split": split, "num_utterances": 0, "audio_duration_s": 0.0,
        "normalized": normalize, "reference_duration_s": float(model.config.reference_duration_s),
        "machine": machine_info(num_threads), "sizes": sizes,
    }
    if dataset is not None:
        batches = _batches(dataset, batch_size, max_samples, text_column, audio_column)
        groups = _column(dataset, group_by) if group_by else None
        refs, hyps, lm_hyps, seconds = _transcribe(models, processor, batches, decoder)
        out.update(num_utterances=len(refs), audio_duration_s=seconds)
        for name in names:
            sizes[name].update(_scores(refs, hyps[name], normalize))
            if groups is not None:
                sizes[name]["groups"] = _group_scores(refs, hyps[name], groups, normalize)
            if decoder is not None:
                lm = _scores(refs, lm_hyps[name], normalize)
                sizes[name].update(lm_wer=lm["wer"], lm_cer=lm["cer"], lm=lm)
        if decoder is not None and hasattr(decoder, "describe"):
            out["lm_decoder"] = decoder.describe()
    if latency:
        out["latency_setup"] = latency_setup(latency_duration_s, latency_runs, out["machine"]["num_threads"])
        for name, (run, subnet_arg) in models.items():
            sizes[name].update(measure_latency(run, processor.feature_extractor, duration_s=latency_duration_s,
                                               runs=latency_runs, num_threads=num_threads, subnet=subnet_arg))
    out["sizes"] = by_cost(sizes)
    return out


def _size_entry(model, name: str) -> dict:
    """Costs and selection facts of one size (before scoring)."""
    entry = model.config.subnets.get(name) or {}
    return {**size_costs(model, name), "criterion": entry.get("criterion"), "target": entry.get("target"),
            "num_components": len(entry.get("components") or []) or len(model.component_index)}


def _batches(dataset, batch_size: int, max_samples, text_column: str, audio_column: str):
    """(audio items, texts) per batch of the first `max_samples` rows."""
    n = len(dataset) if max_samples is None else min(len(dataset), max_samples)
    for start in range(0, n, batch_size):
        rows = dataset[start:min(n, start + batch_size)]
        if not isinstance(rows, Mapping):  # a list of row dicts
            rows = {audio_column: [r[audio_column] for r in rows], text_column: [r[text_column] for r in rows]}
        yield rows[audio_column], rows[text_column]


def _transcribe(models: dict, processor, batches, decoder):
    """References, greedy (and LM) hypotheses per size, and the audio seconds; features once per batch."""
    feature_extractor, tokenizer = processor.feature_extractor, processor.tokenizer
    rate = feature_extractor.sampling_rate
    refs: list[str] = []
    hyps: dict[str, list[str]] = {name: [] for name in models}
    lm_hyps: dict[str, list[str]] = {name: [] for name in models}
    seconds = 0.0
    for audio, texts in batches:
        arrays = [audio_array(a, rate, f"row {len(refs) + i}") for i, a in enumerate(audio)]
        seconds += sum(len(a) for a in arrays) / rate
        refs.extend(texts)
        features = feature_extractor(arrays, sampling_rate=rate, return_tensors="pt", padding=True,
                                     return_attention_mask=True)
        for name, (run, subnet_arg) in models.items():
            got = transcribe_batch(run, feature_extractor, tokenizer, arrays, features=features,
                                   subnet=subnet_arg, decoder=decoder)
            if decoder is not None:
                got, decoded = got
                lm_hyps[name].extend(decoded)
            hyps[name].extend(got)
    return refs, hyps, lm_hyps, seconds


class MissingColumnError(ValueError):
    """`group_by` names a column the dataset does not have (the message lists the ones it has)."""


def _column(dataset, column: str) -> list:
    """The values of `column` in `dataset` (a datasets.Dataset or a sequence of row dicts)."""
    is_table = hasattr(dataset, "column_names")
    names = dataset.column_names if is_table else (list(dataset[0]) if len(dataset) else [])
    if column not in names:
        raise MissingColumnError(f"group_by={column!r}: the dataset has no such column; it has {', '.join(names)}")
    return list(dataset[column]) if is_table else [row[column] for row in dataset]


def _group_scores(refs: list[str], hyps: list[str], groups: list, normalize: bool) -> dict:
    """{group value: {num_utterances, wer, cer}} over the scored rows (the first len(refs) of `groups`)."""
    members: dict[str, list[int]] = {}
    for i, value in enumerate(groups[:len(refs)]):
        members.setdefault(str(value), []).append(i)
    out = {}
    for value in sorted(members):
        rows = members[value]
        scores = wer_cer([refs[i] for i in rows], [hyps[i] for i in rows], normalize=normalize)
        out[value] = {"num_utterances": len(rows), "wer": scores["wer"], "cer": scores["cer"]}
    return out


def _scores(refs: list[str], hyps: list[str], normalize: bool) -> dict:
    """`wer_cer` plus the first reference/prediction pairs as `examples`."""
    return {**wer_cer(refs, hyps, normalize=normalize),
            "examples": [{"reference": r, "prediction": h} for r, h in zip(refs[:NUM_EXAMPLES], hyps[:NUM_EXAMPLES])]}
