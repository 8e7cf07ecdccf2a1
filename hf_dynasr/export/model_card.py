"""Model cards of hf_dynasr supernets and their sizes (`render_model_card` and its helpers).

Cards are rendered from the templates in `model_cards/` with `huggingface_hub.ModelCard.from_template`:
the size table (parameters, FLOPs, WER/CER per eval set, latency), the kept units per block, the training
details safe to publish, and the `model-index` evaluation results. `hf_dynasr.export.subnets` writes them into an
export folder; `hf_dynasr.export.hub` re-renders them with the real repository ids at push time.
"""

from __future__ import annotations

import importlib.resources
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import transformers
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hf_dynasr import __version__
from hf_dynasr.evaluation.reports import format_count
from hf_dynasr.export.onnx_report import onnx_card_section
from hf_dynasr.export.repo_layout import is_repo_id
from hf_dynasr.json_io import read_json
from hf_dynasr.models.dynasr.components_dynasr import ComponentIndex
from hf_dynasr.models.dynasr.modeling_dynasr import DynaSRForCTC
from hf_dynasr.models.dynasr.subnets_dynasr import FULL

logger = logging.getLogger(__name__)

TAGS = ["hf_dynasr", "ctc", "conformer", "supernet", "automatic-speech-recognition"]
PIPELINE_TAG = "automatic-speech-recognition"
TEMPLATE_ENV = "HF_DYNASR_CARD_TEMPLATES"
_SECRET = re.compile(r"token|secret|password|passwd|credential|auth|api_key", re.IGNORECASE)
# records of training_results.json that check the run (per-process checksums and digests) or repeat the results
# (history, eval): not training details
_RUN_RECORDS = frozenset({"rank_weight_checksums", "subnet_choices", "history", "eval"})
#: labels of the training details a card shows first, in this order; other keys follow under their own names
TRAINING_LABELS = {
    "method": "Supernet method", "train_data": "Training data", "dataset": "Training data", "steps": "Updates",
    "max_steps": "Updates", "dmao": "DMAO", "dmao_events": "DMAO events", "learning_rate": "Peak learning rate",
    "lr_scheduler_type": "Learning-rate schedule", "warmup_ratio": "Warm-up fraction",
    "max_batch_seconds": "Audio per batch (s)", "num_processes": "Processes", "mixed_precision": "Mixed precision",
    "wall_time_s": "Training time", "nonfinite_steps_skipped": "Non-finite updates skipped", "seed": "Seed",
}


def template_dir(path=None) -> Path:
    """Folder of the card templates: `path`, `$HF_DYNASR_CARD_TEMPLATES`, or the installed package data
    `hf_dynasr.model_cards` (the repository's `model_cards/`, also after a non-editable install)."""
    candidates = [path, os.environ.get(TEMPLATE_ENV), Path(str(importlib.resources.files("hf_dynasr.model_cards")))]
    for cand in candidates:
        if cand and (Path(cand) / "supernet.md").is_file() and (Path(cand) / "size.md").is_file():
            return Path(cand)
    raise FileNotFoundError(
        "model card templates (supernet.md, size.md) not found; pass template_dir=... or set "
        f"{TEMPLATE_ENV} to a folder holding them (the installed package ships them as hf_dynasr.model_cards)"
    )


def load_results(results) -> list[dict]:
    """Evaluation results (from `evaluate_checkpoint` / `scripts/evaluate_model.py`) as a list, one per eval set:
    accepts None, a dict, a JSON path, or a list of those."""
    if results is None:
        return []
    if isinstance(results, (str, os.PathLike, Mapping)):
        results = [results]
    out = []
    for item in results:
        if isinstance(item, (str, os.PathLike)):
            item = read_json(item)
        if isinstance(item, list):
            out.extend(load_results(item))
        elif isinstance(item, Mapping):
            if "sizes" not in item:
                raise ValueError("evaluation results need a 'sizes' mapping (output of scripts/evaluate_model.py)")
            out.append(dict(item))
        else:
            raise TypeError(f"cannot read evaluation results from {type(item).__name__}")
    return out


def clean_training_details(training: Mapping | None) -> dict:
    """Training details safe to publish: JSON scalars and short lists only, never anything secret-like."""
    out = {}
    for key, value in (training or {}).items():
        if _SECRET.search(str(key)) or key in _RUN_RECORDS:
            continue
        if isinstance(value, Mapping):
            value = clean_training_details(value)
            if not value:
                continue
        elif isinstance(value, (list, tuple)):
            if len(value) > 20 or not all(isinstance(v, (str, int, float, bool)) or v is None for v in value):
                continue
            value = list(value)
        elif not (isinstance(value, (str, int, float, bool)) or value is None):
            continue
        out[str(key)] = value
    return out


def read_training_details(checkpoint) -> dict:
    """`training_details.json`, else selected fields of `training_args.json`, of a local checkpoint."""
    if checkpoint is None or not os.path.isdir(checkpoint):
        return {}
    for name in ("training_details.json", "training_args.json"):
        path = os.path.join(checkpoint, name)
        if os.path.isfile(path):
            try:
                return clean_training_details(read_json(path))
            except (OSError, ValueError):
                logger.warning("could not read %s", path)
    return {}


def _dataset_id(res: Mapping) -> str:
    """A Hub dataset id as is; a local corpus (path or `kind:path` spec) by its folder name."""
    name = str(res.get("dataset") or "unknown")
    if name.startswith("hub:"):
        return name[4:]
    kind, sep, rest = name.partition(":")
    local = rest if sep and kind in ("audiofolder", "csv", "librispeech") else name
    if sep and local is name:
        return name
    if os.path.isabs(local) or local.startswith(".") or os.path.exists(local) or local is not name:
        return os.path.basename(os.path.normpath(local)) or name
    return name


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _eval_results(evals: list[dict], sizes: Iterable[str], per_size_names: bool):
    out = []
    for res in evals:
        for size in sizes:
            row = res["sizes"].get(size)
            if not row:
                continue
            for metric in ("wer", "cer"):
                if not _finite(row.get(metric)):
                    continue
                out.append(EvalResult(
                    task_type=PIPELINE_TAG, task_name="Automatic Speech Recognition",
                    dataset_type=_dataset_id(res), dataset_name=_dataset_id(res), dataset_split=res.get("split"),
                    metric_type=metric, metric_value=round(100 * row[metric], 2),
                    metric_name=f"{metric.upper()} ({size})" if per_size_names else metric.upper(),
                    metric_config=size,
                ))
    return out or None


def _size_rows(config, evals: list[dict]) -> list[dict]:
    """One row per size (named subnets with a selection, plus "full"): name and costs."""
    index = ComponentIndex(config)
    rows = []
    for name, entry in config.subnets.items():
        ids = entry.get("components")
        if ids is None:
            continue
        rows.append({"name": name, "num_parameters": entry.get("num_parameters"), "flops": entry.get("flops"),
                     "components": sorted(ids), "covers_all": index.covers_all(ids)})
    if not any(r["covers_all"] for r in rows):
        measured = next((r["sizes"].get(FULL) for r in evals if FULL in r["sizes"]), None) or {}
        rows.append({"name": FULL, "components": list(range(len(index))), "covers_all": True,
                     "num_parameters": measured.get("num_parameters") or DynaSRForCTC.count_parameters(config),
                     "flops": measured.get("flops") or DynaSRForCTC.measure_flops(config)})
    rows.sort(key=lambda r: (r["num_parameters"] or 0, r["flops"] or 0))
    return rows


def _size_table(rows: list[dict], evals: list[dict], highlight: str | None = None) -> str:
    head = ["size", "params", "FLOPs"]
    for res in evals:
        label = _dataset_id(res) + (f" {res['split']}" if res.get("split") else "")
        head += [f"WER % ({label})", f"CER % ({label})"]
    has_latency = any("latency_ms" in (res["sizes"].get(r["name"]) or {}) for res in evals for r in rows)
    if has_latency:
        head.append("latency ms")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    for row in rows:
        name = f"**{row['name']}**" if row["name"] == highlight else row["name"]
        cells = [name, format_count(row["num_parameters"]), format_count(row["flops"])]
        for res in evals:
            got = res["sizes"].get(row["name"]) or {}
            cells += [f"{100 * got[m]:.2f}" if _finite(got.get(m)) else "-" for m in ("wer", "cer")]
        if has_latency:
            lat = next((res["sizes"][row["name"]].get("latency_ms") for res in evals
                        if res["sizes"].get(row["name"], {}).get("latency_ms") is not None), None)
            cells.append("-" if lat is None else f"{lat:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _eval_note(evals: list[dict]) -> str:
    notes = []
    for res in evals:
        if res.get("num_utterances"):
            notes.append(f"`{_dataset_id(res)}`{' (' + res['split'] + ')' if res.get('split') else ''}: "
                         f"{res['num_utterances']} utterances, {res.get('audio_duration_s', 0):.1f} s")
    machine = next((r["machine"] for r in evals if r.get("machine")), None)
    duration = next((r["latency_setup"].get("duration_s") for r in evals if r.get("latency_setup")), 10.0)
    text = ""
    if notes:
        text += "WER and CER are corpus-level, greedy CTC decoding, normalised text (lowercase, no punctuation); " \
                "eval sets: " + "; ".join(notes) + ". "
    if machine and any("latency_ms" in s for r in evals for s in r["sizes"].values()):
        text += (f"Latency: median model forward at batch 1 on {duration:g} s of audio, {machine.get('cpu')}, "
                 f"{machine.get('num_threads')} threads.")
    return text


def _spec_cell(block: dict) -> str:
    return f"{block['ffn1']}/{block['mhsa']}/{block['conv']}/{block['ffn2']}"


def _components_section(config, rows: list[dict], only: str | None = None) -> str:
    index = ComponentIndex(config)
    rows = [r for r in rows if only is None or r["name"] == only]
    specs = {r["name"]: index.spec_for(config, r["components"]) for r in rows}
    head = "| block | " + " | ".join(r["name"] for r in rows) + " |"
    lines = ["Kept units per block, as FFN1 units / attention heads / conv channels / FFN2 units "
             f"(the supernet has {_spec_cell(config.architecture_spec[0])} in block 0).", "",
             head, "|---|" + "---:|" * len(rows)]
    for b in range(len(config.architecture_spec)):
        lines.append(f"| {b} | " + " | ".join(_spec_cell(specs[r["name"]][b]) for r in rows) + " |")
    lines.append("")
    for r in rows:
        if r["covers_all"]:
            continue
        names = ", ".join(index[i].name for i in r["components"])
        lines += [f"<details><summary>{r['name']}: {len(r['components'])} of {len(index)} components "
                  f"(granularity {config.granularity})</summary>", "", names, "", "</details>", ""]
    return "\n".join(lines).rstrip() + "\n"


def _empty(value) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _setting(key: str, value) -> str:
    """A training detail as table text: no JSON, durations in minutes, mappings as `key: value` pairs."""
    if key == "wall_time_s" and isinstance(value, (int, float)):
        return f"{value:.0f} s" if value < 60 else f"{value / 60:.1f} min"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_setting(k, v)}" for k, v in value.items() if not _empty(v))
    if isinstance(value, (list, tuple)):
        return ("<br>" if key == "dmao_events" else ", ").join(_setting(key, v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _training_section(training: Mapping) -> str:
    """Method / schedule / data as bullets, then a two-column table of the other settings (unset ones left out)."""
    training = {k: v for k, v in training.items() if not _empty(v)}
    if not training:
        return "Training details were not recorded with this checkpoint."
    lines = []
    for key, label in (("method", "Method"), ("schedule", "Schedule"), ("data", "Data")):
        if key in training:
            lines.append(f"- **{label}:** {_setting(key, training[key])}")
    rest = {k: v for k, v in training.items() if k not in ("method", "schedule", "data")}
    ordered = [k for k in TRAINING_LABELS if k in rest] + [k for k in rest if k not in TRAINING_LABELS]
    if ordered:
        lines += ["", "| setting | value |", "|---|---|"]
        lines += [f"| {TRAINING_LABELS.get(k, f'`{k}`')} | {_setting(k, rest[k])} |" for k in ordered]
    return "\n".join(lines).lstrip("\n")


def _card_datasets(datasets, training: Mapping, evals: list[dict]) -> list[str]:
    """Hub dataset ids for the metadata: `datasets`, then the training data and eval sets that are Hub datasets."""
    found = [*(datasets or []), *([training["dataset"]] if isinstance(training.get("dataset"), str) else [])]
    for spec in (training.get("train_data"), *(r.get("dataset") for r in evals)):
        if isinstance(spec, str) and spec.startswith("hub:"):  # a local corpus has no Hub id
            found.append(spec.removeprefix("hub:"))
    return list(dict.fromkeys(found))


def _architecture(config) -> str:
    return (f"{config.num_hidden_layers} Conformer blocks, d={config.hidden_size}, {config.num_attention_heads} heads, "
            f"FFN {config.intermediate_size}, conv {config.conv_channels} channels (kernel {config.conv_kernel_size}), "
            f"{config.frontend_type} frontend (4x subsampling), {config.vocab_size} CTC labels")


def _identity(repo_id, supernet_repo, local_path, local_supernet) -> tuple[str, str, str, str | None]:
    """(this card's model reference, the supernet's, the title, the supernet's Hub URL or None): the repository ids,
    or without `repo_id` the local folders (no placeholder, no link)."""
    if repo_id is not None:
        supernet_repo = supernet_repo or repo_id
        return repo_id, supernet_repo, repo_id.split("/")[-1], f"https://huggingface.co/{supernet_repo}"
    here = local_path or "."
    if supernet_repo is not None:
        return here, supernet_repo, "hf_dynasr supernet", f"https://huggingface.co/{supernet_repo}"
    return here, local_supernet or here, "hf_dynasr supernet", None


def render_model_card(
    supernet_config,
    *,
    size: str | None = None,
    repo_id: str | None = None,
    supernet_repo: str | None = None,
    revision: str | None = None,
    results=None,
    training: Mapping | None = None,
    plot_file: str | None = None,
    size_refs: Mapping[str, str] | None = None,
    onnx: bool | Mapping = False,
    license: str = "apache-2.0",
    datasets: list[str] | None = None,
    template_path=None,
    language_model: Mapping | None = None,
    language: str | list[str] | None = "en",
    local_path: str | None = None,
    local_supernet: str | None = None,
):
    """The model card (`huggingface_hub.ModelCard`) of the supernet (`size=None`) or of one size.

    `supernet_config`: the supernet's config (sizes, specs, costs). `repo_id`: where this card lives;
    `supernet_repo`: the supernet's repo (size cards); `revision`: the branch of a size (branch layout);
    `results`: evaluation results (see `load_results`); `size_refs`: {size: "org/name-40M" or
    "org/name@40M"} listed on the supernet card; `language_model`: `hf_dynasr.lm.build.lm_summary` of a shipped LM;
    `onnx`: the folder ships ONNX files (True) or their `onnx_report.json` (a dict: also latency and WER/CER).
    `language`: the metadata's language (the character vocabulary and every recipe are English; None: left out).
    Without `repo_id` the card is a local one: its snippets load `local_path` (this folder) and name the supernet by
    `local_supernet` (its folder), with no Hub link and no placeholder; push_to_hub renders it again with the ids."""
    evals = load_results(results)
    training = clean_training_details(training)
    rows = _size_rows(supernet_config, evals)
    names = [r["name"] for r in rows]
    if size is not None and size not in names:
        raise ValueError(f"unknown size {size!r}; available: {', '.join(names)}")
    repo_id, supernet_repo, title_repo, supernet_url = _identity(repo_id, supernet_repo, local_path, local_supernet)
    eval_results = _eval_results(evals, [size] if size else names, per_size_names=size is None)
    data = ModelCardData(
        language=language, license=license, tags=list(TAGS), pipeline_tag=PIPELINE_TAG, library_name="transformers",
        datasets=_card_datasets(datasets, training, evals) or None, model_name=title_repo,
        metrics=sorted({r.metric_type for r in eval_results}) if eval_results else None, eval_results=eval_results,
        base_model=supernet_repo if size is not None and supernet_url and is_repo_id(supernet_repo) else None,
    )
    row = next((r for r in rows if r["name"] == size), None)
    context = dict(
        title=title_repo if size is None else f"{title_repo} ({size})",
        repo_id=repo_id, supernet_repo=supernet_repo, revision=revision, size=size,
        supernet_url=supernet_url,
        sizes=names, example_size=next((n for n in names if n != FULL), FULL),
        size_table=_size_table(rows, evals, highlight=size), eval_note=_eval_note(evals),
        plot_file=plot_file, onnx=bool(onnx), language_model=language_model,
        onnx_section=onnx_card_section(onnx, whole_network=size in (None, FULL)) if onnx else None,
        size_repos=[{"name": k, "ref": f"`{v}`"} for k, v in (size_refs or {}).items()],
        components=_components_section(supernet_config, rows, only=size),
        training=_training_section(training), architecture=_architecture(supernet_config),
        reference_duration=f"{supernet_config.reference_duration_s:g}",
        params=format_count(row["num_parameters"]) if row else None,
        flops=format_count(row["flops"]) if row else None,
        library_version=__version__, transformers_version=transformers.__version__,
    )
    name = "supernet.md" if size is None else "size.md"
    path = Path(template_path) / name if template_path and Path(template_path).is_dir() else \
        Path(template_path) if template_path else template_dir() / name
    return ModelCard.from_template(data, template_path=str(path), **context)
