"""Evaluation of hf_dynasr checkpoints: WER/CER (jiwer 4, corpus level), sizes, latency, Pareto plots.

    from hf_dynasr.evaluation.metrics import evaluate_checkpoint, results_markdown, plot_pareto
    results = evaluate_checkpoint("ckpt", dataset)   # every size + "full"; dataset: columns audio, text
    table = results_markdown(results); plot_pareto(results, "pareto.png")

`evaluate_checkpoint` scores the extracted model of each size (what `export_subnets` ships), computes the
features of each batch once for all sizes, and reports per size: WER, CER, error counts, parameters,
FLOPs at the config's reference duration, and (optionally) latency at batch 1 on 10 s of audio with the
real-time factor on this machine. `evaluate` is not needed: `hf_dynasr/evaluation/wer_metric` wraps the same
scoring as a local `evaluate` module for `evaluate.load(path)`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import statistics
import time
import unicodedata
from collections.abc import Iterable, Mapping, Sequence

import jiwer

from hf_dynasr.json_io import write_json

logger = logging.getLogger(__name__)

FULL = "full"
LATENCY_TABLE_NAME = "latency_table.json"
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u00b4": "'"})


# --- scoring ---------------------------------------------------------------------------------------------


def normalize_for_scoring(text: str | None) -> str:
    """Text normalisation applied to references and hypotheses before scoring.

    Accents stripped, lowercase, typographic apostrophes -> ``'``, hyphens/slashes/dashes -> space, other
    punctuation removed (apostrophes inside words kept), whitespace collapsed. Digits are kept.

    >>> normalize_for_scoring("Don't STOP -- it's well-known, Café!")
    "don't stop it's well known cafe"
    """
    if not text:
        return ""
    text = text.translate(_APOSTROPHES)
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).lower()
    text = re.sub(r"[-_/\u2013\u2014]", " ", text)
    text = re.sub(r"[^\w\s']", "", text)
    text = re.sub(r"(?<!\w)'+|'+(?!\w)", "", text)
    return " ".join(text.split())


def wer_cer(references: Sequence[str], predictions: Sequence[str], normalize: bool = True) -> dict:
    """Corpus-level WER and CER (total errors / total reference words or characters) with jiwer 4.

    Returns wer, cer, substitutions, deletions, insertions, hits (word level), num_words, and the same
    counts at character level prefixed with ``char_``. Empty references are allowed (their hypothesis
    words count as insertions); with no reference word at all, WER is 0 for empty hypotheses, else inf."""
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
        **{k: words[k] for k in ("substitutions", "deletions", "insertions", "hits")},
        "num_words": words["hits"] + words["substitutions"] + words["deletions"],
        **{f"char_{k}": chars[k] for k in ("substitutions", "deletions", "insertions", "hits")},
        "num_chars": chars["hits"] + chars["substitutions"] + chars["deletions"],
    }


def _counts(references, predictions, process, reduce) -> dict:
    total = {"substitutions": 0, "deletions": 0, "insertions": 0, "hits": 0}
    pairs = [(r, p) for r, p in zip(references, predictions)]
    scored = [(r, p) for r, p in pairs if r.strip()]
    for r, p in pairs:  # empty references: every hypothesis unit is an insertion (jiwer wants non-empty refs)
        if not r.strip():
            total["insertions"] += sum(len(x) for x in reduce(p)) if p.strip() else 0
    if scored:
        tr = jiwer.Compose([jiwer.Strip(), reduce])
        out = process([r for r, _ in scored], [p for _, p in scored], reference_transform=tr, hypothesis_transform=tr)
        for key in total:
            total[key] += int(getattr(out, key))
    return total


def _rate(counts: Mapping[str, int]) -> float:
    n = counts["hits"] + counts["substitutions"] + counts["deletions"]
    errors = counts["substitutions"] + counts["deletions"] + counts["insertions"]
    if n == 0:
        return 0.0 if errors == 0 else math.inf
    return errors / n


# --- model helpers --------------------------------------------------------------------------------------


def _audio_array(item, sampling_rate: int):
    import numpy as np

    rate = None
    if hasattr(item, "shape") or isinstance(item, (list, tuple)):
        array = item
    else:  # {"array", "sampling_rate"} dict or a datasets/torchcodec AudioDecoder
        array = item["array"]
        try:
            rate = item["sampling_rate"]
        except (KeyError, IndexError, TypeError):
            rate = None
    if hasattr(array, "numpy"):
        array = array.numpy()
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:  # channels first (torchcodec) or last: downmix
        array = array.mean(axis=0 if array.shape[0] < array.shape[1] else 1)
    if rate is not None and int(rate) != sampling_rate:
        raise ValueError(
            f"audio is sampled at {rate} Hz but the feature extractor expects {sampling_rate} Hz; resample first "
            f"(e.g. dataset.cast_column('audio', datasets.Audio(sampling_rate={sampling_rate})))"
        )
    return array


def load_model_and_processor(model_or_dir, processor=None, **kwargs):
    """(model in eval mode, processor, checkpoint path or None) from a directory/Hub id or a model."""
    from transformers import AutoProcessor

    from hf_dynasr.models.dynasr.modeling_dynasr import DynaSRForCTC

    path = None
    if isinstance(model_or_dir, (str, os.PathLike)):
        path = os.fspath(model_or_dir)
        model = DynaSRForCTC.from_pretrained(path, **kwargs)
    else:
        model = model_or_dir
        path = getattr(model.config, "name_or_path", None) or getattr(model, "name_or_path", None) or None
    if processor is None:
        if path is None:
            raise ValueError("pass `processor=` (a Wav2Vec2Processor) when evaluating a model object")
        processor = AutoProcessor.from_pretrained(path)
    return model.eval(), processor, path


def size_names(model, subnets="all") -> list[str]:
    """The sizes a model can run: its named subnets with a selection, plus "full" (unless one covers all)."""
    names = [n for n, e in model.config.subnets.items() if e.get("components") is not None]
    covers_all = any(model._subnet_ids(n) is None for n in names)
    available = names + ([] if covers_all else [FULL])
    if subnets in (None, "all"):
        return available
    if isinstance(subnets, str):
        subnets = [s.strip() for s in subnets.split(",") if s.strip()]
    unknown = [s for s in subnets if s not in available]
    if unknown:
        raise ValueError(f"unknown size(s) {unknown}; available: {', '.join(available)}")
    return list(subnets)


def size_model(model, name: str):
    """(model, `subnet` forward argument) that run size `name`: the extracted model of a strict size, or
    the model itself (the whole network, or a per-size checkpoint)."""
    if name == FULL:
        return model, FULL
    if model._subnet_ids(name) is None:
        return model, name
    return model.extract_subnet(name).eval(), None


def size_costs(model, name: str) -> dict:
    """Parameters (one CTC head) and FLOPs at the reference duration of size `name`."""
    from hf_dynasr.models.dynasr.costs_dynasr import count_parameters, measure_flops

    entry = model.config.subnets.get(name) or {}
    params, flops = entry.get("num_parameters"), entry.get("flops")
    if params is None or flops is None:
        config = model.config if name == FULL or model._subnet_ids(name) is None else \
            model.extract_subnet(name).config
        params = params if params is not None else count_parameters(config)
        flops = flops if flops is not None else measure_flops(config)
    return {"num_parameters": int(params), "flops": int(flops)}


def transcribe_batch(model, feature_extractor, tokenizer, arrays, *, features=None, subnet=None, decoder=None):
    """Greedy CTC transcription of a list of 16 kHz arrays (or precomputed `features`).

    With `decoder` (e.g. `hf_dynasr.lm.decoding.LexiconLMDecoder`: `decode(logits, lengths) -> list[str]`),
    returns `(greedy, decoded)` from the same forward pass."""
    import torch

    if features is None:
        features = feature_extractor(arrays, sampling_rate=feature_extractor.sampling_rate, return_tensors="pt",
                                     padding=True, return_attention_mask=True)
    with torch.inference_mode():
        logits = model(input_features=features["input_features"], attention_mask=features["attention_mask"],
                       subnet=subnet).logits
    ids = logits.argmax(-1)
    lengths = model._get_feat_extract_output_lengths(features["attention_mask"].sum(-1))
    frame = torch.arange(ids.shape[1])[None, :]
    ids = ids.masked_fill(frame >= lengths[:, None], model.config.pad_token_id)
    greedy = tokenizer.batch_decode(ids)
    return greedy if decoder is None else (greedy, decoder.decode(logits, lengths))


def measure_latency(model, feature_extractor, *, duration_s: float = 10.0, runs: int = 5, warmup: int = 1,
                    num_threads: int | None = None, seed: int = 0, subnet=None) -> dict:
    """Batch-1 latency of `model` on `duration_s` of audio: median model time, feature time, RTF.

    `rtf` = (features + model) / audio duration; `latency_ms` is the model forward only."""
    import numpy as np
    import torch

    previous = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(int(num_threads))
    try:
        rate = feature_extractor.sampling_rate
        audio = np.random.default_rng(seed).standard_normal(int(duration_s * rate)).astype(np.float32) * 0.1
        feat_times, model_times = [], []
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            feats = feature_extractor(audio, sampling_rate=rate, return_tensors="pt", return_attention_mask=True)
            t1 = time.perf_counter()
            with torch.inference_mode():
                model(input_features=feats["input_features"], attention_mask=feats["attention_mask"], subnet=subnet)
            t2 = time.perf_counter()
            if i >= warmup:
                feat_times.append(t1 - t0)
                model_times.append(t2 - t1)
        latency, feat = statistics.median(model_times) * 1e3, statistics.median(feat_times) * 1e3
        return {"latency_ms": latency, "feature_extraction_ms": feat, "rtf": (latency + feat) / (duration_s * 1e3)}
    finally:
        torch.set_num_threads(previous)


def machine_info(num_threads: int | None = None) -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "num_threads": int(num_threads or torch.get_num_threads()), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "platform": platform.platform()}


# --- evaluation -----------------------------------------------------------------------------------------


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
) -> dict:
    """Evaluate every size of a supernet checkpoint (or the one size of a per-size checkpoint).

    `dataset`: a `datasets.Dataset` (or any sequence of rows) with `audio` (16 kHz array, or a dict-like
    with "array") and `text`; `None` skips WER/CER (costs and latency only). Returns a JSON-able dict
    `{"checkpoint", "dataset", "split", "num_utterances", "audio_duration_s", "machine", "reference_duration_s",
    "latency_setup", "sizes": {name: {wer, cer, substitutions, deletions, insertions, hits, num_words,
    num_parameters, flops, latency_ms, feature_extraction_ms, rtf, ...}}}`, sizes ordered by parameters.
    `decoder`: also decode with it (e.g. `hf_dynasr.lm.decoding.load_lm_decoder(lm_dir, tokenizer)`) and add
    `lm_wer`, `lm_cer` and `lm` (all scores + examples) per size, and `lm_decoder` (its settings)."""
    model, processor, path = load_model_and_processor(model_or_dir, processor)
    feature_extractor, tokenizer = processor.feature_extractor, processor.tokenizer
    names = size_names(model, subnets)
    models = {name: size_model(model, name) for name in names}
    sizes = {name: size_costs(model, name) for name in names}
    for name in names:
        entry = model.config.subnets.get(name) or {}
        sizes[name].update(criterion=entry.get("criterion"), target=entry.get("target"),
                           num_components=len(entry.get("components") or []) or len(model.component_index))

    out = {
        "checkpoint": path, "dataset": dataset_name, "split": split, "num_utterances": 0, "audio_duration_s": 0.0,
        "normalized": normalize, "reference_duration_s": float(model.config.reference_duration_s),
        "machine": machine_info(num_threads), "sizes": sizes,
    }
    if dataset is not None:
        n = len(dataset) if max_samples is None else min(len(dataset), max_samples)
        rate = feature_extractor.sampling_rate
        refs: list[str] = []
        hyps: dict[str, list[str]] = {name: [] for name in names}
        lm_hyps: dict[str, list[str]] = {name: [] for name in names}
        for start in range(0, n, batch_size):
            rows = dataset[start:min(n, start + batch_size)]
            if not isinstance(rows, Mapping):  # a list of row dicts
                rows = {audio_column: [r[audio_column] for r in rows], text_column: [r[text_column] for r in rows]}
            arrays = [_audio_array(a, rate) for a in rows[audio_column]]
            out["audio_duration_s"] += sum(len(a) for a in arrays) / rate
            refs.extend(rows[text_column])
            features = feature_extractor(arrays, sampling_rate=rate, return_tensors="pt", padding=True,
                                         return_attention_mask=True)
            for name in names:
                run, subnet_arg = models[name]
                got = transcribe_batch(run, feature_extractor, tokenizer, arrays, features=features,
                                       subnet=subnet_arg, decoder=decoder)
                if decoder is not None:
                    got, decoded = got
                    lm_hyps[name].extend(decoded)
                hyps[name].extend(got)
        out["num_utterances"] = len(refs)
        for name in names:
            sizes[name].update(wer_cer(refs, hyps[name], normalize=normalize))
            sizes[name]["examples"] = [{"reference": r, "prediction": h} for r, h in zip(refs[:3], hyps[name][:3])]
            if decoder is not None:
                lm = wer_cer(refs, lm_hyps[name], normalize=normalize)
                lm["examples"] = [{"reference": r, "prediction": h} for r, h in zip(refs[:3], lm_hyps[name][:3])]
                sizes[name].update(lm_wer=lm["wer"], lm_cer=lm["cer"], lm=lm)
        if decoder is not None and hasattr(decoder, "describe"):
            out["lm_decoder"] = decoder.describe()
    if latency:
        out["latency_setup"] = {"batch_size": 1, "duration_s": latency_duration_s, "runs": latency_runs,
                                "statistic": "median", "num_threads": out["machine"]["num_threads"]}
        for name in names:
            run, subnet_arg = models[name]
            sizes[name].update(measure_latency(run, feature_extractor, duration_s=latency_duration_s,
                                               runs=latency_runs, num_threads=num_threads, subnet=subnet_arg))
    out["sizes"] = dict(sorted(sizes.items(), key=lambda kv: (kv[1]["num_parameters"], kv[1]["flops"])))
    return out


def latency_table(model_or_dir, processor=None, *, subnets="all", duration_s: float = 10.0, runs: int = 5,
                  num_threads: int | None = None, save: bool | str = True) -> dict:
    """Batch-1 latency per size on this machine; saved as `latency_table.json` beside the checkpoint
    (`save=True`, a local directory) or at the path `save`. `hf_dynasr.pick_subnet` reads it."""
    results = evaluate_checkpoint(model_or_dir, None, processor, subnets, latency=True, latency_runs=runs,
                                  latency_duration_s=duration_s, num_threads=num_threads)
    table = {
        "checkpoint": results["checkpoint"], "machine": results["machine"], "batch_size": 1,
        "duration_s": duration_s, "runs": runs, "statistic": "median",
        "sizes": {name: {k: v[k] for k in ("latency_ms", "feature_extraction_ms", "rtf", "num_parameters", "flops")}
                  for name, v in results["sizes"].items()},
    }
    if save:
        target = save if isinstance(save, (str, os.PathLike)) else results["checkpoint"]
        if target is None or not (os.path.isdir(target) or str(target).endswith(".json")):
            raise ValueError("latency_table(save=True) needs a local checkpoint directory; pass save='path.json'")
        if os.path.isdir(target):
            target = os.path.join(target, LATENCY_TABLE_NAME)
        write_json(target, table)
        table["path"] = os.fspath(target)
    return table


# --- reporting ------------------------------------------------------------------------------------------


def format_count(n: float | int | None, unit: str = "") -> str:
    if n is None:
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def _pct(x) -> str:
    return "-" if x is None else ("inf" if isinstance(x, float) and math.isinf(x) else f"{100 * x:.2f}")


def results_markdown(results: Mapping) -> str:
    """A markdown table of sizes: params, FLOPs, WER, CER, latency, RTF."""
    duration = results.get("reference_duration_s", 10.0)
    latency_s = (results.get("latency_setup") or {}).get("duration_s", 10.0)
    has_lm = any("lm_wer" in s for s in results["sizes"].values())
    lines = [
        f"| size | params | FLOPs ({duration:g} s) | WER % | CER % |{' LM WER % | LM CER % |' if has_lm else ''} "
        f"latency ms (batch 1, {latency_s:g} s) | RTF |",
        "|---|---:|---:|---:|---:|" + ("---:|---:|" if has_lm else "") + "---:|---:|",
    ]
    for name, s in results["sizes"].items():
        lat = s.get("latency_ms")
        rtf = s.get("rtf")
        lm = f" {_pct(s.get('lm_wer'))} | {_pct(s.get('lm_cer'))} |" if has_lm else ""
        lines.append(
            f"| {name} | {format_count(s.get('num_parameters'))} | {format_count(s.get('flops'))} | "
            f"{_pct(s.get('wer'))} | {_pct(s.get('cer'))} |{lm} {'-' if lat is None else f'{lat:.1f}'} | "
            f"{'-' if rtf is None else f'{rtf:.4f}'} |"
        )
    head = []
    if results.get("dataset"):
        head.append(f"Data: `{results['dataset']}`" + (f" ({results['split']})" if results.get("split") else "")
                    + f", {results.get('num_utterances', 0)} utterances, {results.get('audio_duration_s', 0):.1f} s.")
    if results.get("machine") and any("latency_ms" in s for s in results["sizes"].values()):
        m = results["machine"]
        head.append(f"Latency: median model forward on {m.get('cpu')} with {m.get('num_threads')} threads; "
                    "RTF includes feature extraction.")
    return "\n".join([*head, "", *lines]) + "\n" if head else "\n".join(lines) + "\n"


def samples_markdown(results: Mapping, num_samples: int = 3) -> str:
    """The first `num_samples` test utterances: the reference, then each size's greedy transcript."""
    sizes = {name: s.get("examples") or [] for name, s in results["sizes"].items()}
    count = min([num_samples, *(len(e) for e in sizes.values())])
    if count == 0:
        return ""
    lines = ["Sample transcripts:", ""]
    for i in range(count):
        reference = next(iter(sizes.values()))[i]["reference"]
        lines.append(f"- reference: `{reference}`")
        lines += [f"  - {name}: " + (f"`{examples[i]['prediction']}`" if examples[i]["prediction"] else "(empty)")
                  for name, examples in sizes.items()]
    return "\n".join(lines) + "\n"


def _baseline_rows(baselines) -> list[dict]:
    if baselines is None:
        return []
    if isinstance(baselines, (str, os.PathLike)):
        with open(baselines, encoding="utf-8") as f:
            baselines = json.load(f)
    if isinstance(baselines, Mapping):
        baselines = baselines.get("sizes", baselines)
        return [{"name": k, **v} for k, v in baselines.items()]
    return [dict(b) for b in baselines]


def plot_pareto(results: Mapping | Iterable[Mapping], path, baselines=None, title: str | None = None) -> str:
    """WER vs parameters and WER vs FLOPs of every size (one line per eval set), with optional
    individually trained `baselines` (a JSON path, `{name: {num_parameters, flops, wer}}` or a list)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    evals = [results] if isinstance(results, Mapping) else list(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, key, label in ((axes[0], "num_parameters", "parameters (M)"), (axes[1], "flops", "GFLOPs (10 s)")):
        scale = 1e6 if key == "num_parameters" else 1e9
        for res in evals:
            pts = [(s[key] / scale, 100 * s["wer"], n) for n, s in res["sizes"].items()
                   if s.get("wer") is not None and s.get(key) is not None and math.isfinite(s["wer"])]
            pts.sort()
            if not pts:
                continue
            name = res.get("dataset") or "supernet"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"hf_dynasr supernet ({name})")
            for x, y, n in pts:
                ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        rows = [b for b in _baseline_rows(baselines) if b.get(key) is not None and b.get("wer") is not None]
        if rows:
            rows.sort(key=lambda b: b[key])
            ax.plot([b[key] / scale for b in rows], [100 * b["wer"] for b in rows], "s--", label="individually trained")
            for b in rows:
                ax.annotate(b["name"], (b[key] / scale, 100 * b["wer"]), textcoords="offset points",
                            xytext=(4, -10), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("WER %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    path = os.fspath(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
