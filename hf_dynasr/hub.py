"""Per-size export, model cards and Hub sharing of hf_dynasr supernets.

    from hf_dynasr.hub import export_subnets, push_to_hub
    export_subnets("ckpt", "export", results=["results.json"], onnx=True)   # export/<size>/, export/supernet/
    push_to_hub("export", "org/asr", dry_run=True)                          # list every file, no network
    push_to_hub("export", "org/asr", layout="repos")                         # org/asr, org/asr-<size>, ...

An export folder holds `supernet/` (the whole checkpoint, all CTC heads) and one folder per size: compact
weights from `extract_subnet`, a config with the size's architecture spec and `active_subnet`, the
processor, the remote-code files, `README.md` (model card) and optionally `model.onnx`, `eval_results.json`
and `pareto.png`. Writes are atomic: everything goes to a temporary sibling folder first, which is then
renamed. Model cards are rendered from the templates in `model_cards/` with
`huggingface_hub.ModelCard.from_template`; a push re-renders them with the real repository ids.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .lm_decoding import LM_SUBDIR, copy_lm_dir, lm_summary, read_lm_config
from .metrics import FULL, LATENCY_TABLE_NAME, format_count, plot_pareto, write_json

logger = logging.getLogger(__name__)

TAGS = ["hf_dynasr", "ctc", "conformer", "supernet", "automatic-speech-recognition"]
PIPELINE_TAG = "automatic-speech-recognition"
SUPERNET_DIR = "supernet"
EXPORT_INFO = "export_info.json"
EVAL_RESULTS = "eval_results.json"
PLOT_FILE = "pareto.png"
ONNX_FILE = "model.onnx"
TEMPLATE_ENV = "HF_DYNASR_CARD_TEMPLATES"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_SECRET = re.compile(r"token|secret|password|passwd|credential|auth|api_key", re.IGNORECASE)


# =========================================================================================================
# model cards
# =========================================================================================================


def template_dir(path=None) -> Path:
    """Folder of the card templates: `path`, `$HF_DYNASR_CARD_TEMPLATES`, or the repository's `model_cards/`."""
    candidates = [path, os.environ.get(TEMPLATE_ENV), Path(__file__).resolve().parent.parent / "model_cards"]
    for cand in candidates:
        if cand and (Path(cand) / "supernet.md").is_file() and (Path(cand) / "size.md").is_file():
            return Path(cand)
    raise FileNotFoundError(
        "model card templates (supernet.md, size.md) not found; pass template_dir=... or set "
        f"{TEMPLATE_ENV} to the hf_dynasr repository's model_cards/ folder"
    )


def load_results(results) -> list[dict]:
    """Evaluation results (from `evaluate_checkpoint` / `scripts/evaluate.py`) as a list, one per eval set:
    accepts None, a dict, a JSON path, or a list of those."""
    if results is None:
        return []
    if isinstance(results, (str, os.PathLike, Mapping)):
        results = [results]
    out = []
    for item in results:
        if isinstance(item, (str, os.PathLike)):
            with open(item, encoding="utf-8") as f:
                item = json.load(f)
        if isinstance(item, list):
            out.extend(load_results(item))
        elif isinstance(item, Mapping):
            if "sizes" not in item:
                raise ValueError("evaluation results need a 'sizes' mapping (output of scripts/evaluate.py)")
            out.append(dict(item))
        else:
            raise TypeError(f"cannot read evaluation results from {type(item).__name__}")
    return out


def clean_training_details(training: Mapping | None) -> dict:
    """Training details safe to publish: JSON scalars and short lists only, never anything secret-like."""
    out = {}
    for key, value in (training or {}).items():
        if _SECRET.search(str(key)):
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
                with open(path, encoding="utf-8") as f:
                    return clean_training_details(json.load(f))
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
    from huggingface_hub import EvalResult

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
    from .components import ComponentIndex
    from .costs_dynasr import count_parameters, measure_flops

    total = len(ComponentIndex(config))
    rows = []
    for name, entry in config.subnets.items():
        ids = entry.get("components")
        if ids is None:
            continue
        rows.append({"name": name, "num_parameters": entry.get("num_parameters"), "flops": entry.get("flops"),
                     "components": sorted(ids), "covers_all": len(set(ids)) == total})
    if not any(r["covers_all"] for r in rows):
        measured = next((r["sizes"].get(FULL) for r in evals if FULL in r["sizes"]), None) or {}
        rows.append({"name": FULL, "components": list(range(total)), "covers_all": True,
                     "num_parameters": measured.get("num_parameters") or count_parameters(config),
                     "flops": measured.get("flops") or measure_flops(config)})
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
    from .components import ComponentIndex

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


def _training_section(training: Mapping) -> str:
    if not training:
        return "Training details were not recorded with this checkpoint."
    lines = []
    for key, label in (("method", "Method"), ("schedule", "Schedule"), ("data", "Data")):
        if training.get(key) not in (None, "", [], {}):
            value = training[key]
            lines.append(f"- **{label}:** {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    rest = {k: v for k, v in training.items() if k not in ("method", "schedule", "data")}
    if rest:
        lines += ["", "| setting | value |", "|---|---|"]
        lines += [f"| {k} | {json.dumps(v) if isinstance(v, (dict, list)) else v} |" for k, v in rest.items()]
    return "\n".join(lines)


def _architecture(config) -> str:
    return (f"{config.num_hidden_layers} Conformer blocks, d={config.hidden_size}, {config.num_attention_heads} heads, "
            f"FFN {config.intermediate_size}, conv {config.conv_channels} channels (kernel {config.conv_kernel_size}), "
            f"{config.frontend_type} frontend (4x subsampling), {config.vocab_size} CTC labels")


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
    onnx: bool = False,
    license: str = "apache-2.0",
    datasets: list[str] | None = None,
    template_path=None,
    language_model: Mapping | None = None,
):
    """The model card (`huggingface_hub.ModelCard`) of the supernet (`size=None`) or of one size.

    `supernet_config`: the supernet's config (sizes, specs, costs). `repo_id`: where this card lives;
    `supernet_repo`: the supernet's repo (size cards); `revision`: the branch of a size (branch layout);
    `results`: evaluation results (see `load_results`); `size_refs`: {size: "org/name-40M" or
    "org/name@40M"} listed on the supernet card; `language_model`: `lm_decoding.lm_summary` of a shipped LM."""
    import transformers
    from huggingface_hub import ModelCard, ModelCardData

    from . import __version__

    evals = load_results(results)
    training = clean_training_details(training)
    rows = _size_rows(supernet_config, evals)
    names = [r["name"] for r in rows]
    if size is not None and size not in names:
        raise ValueError(f"unknown size {size!r}; available: {', '.join(names)}")
    repo_id = repo_id or "<your-org>/<model>"
    supernet_repo = supernet_repo or repo_id
    title_repo = repo_id.split("/")[-1]
    datasets = list(dict.fromkeys([*(datasets or []), *([training["dataset"]] if isinstance(
        training.get("dataset"), str) else [])]))
    data = ModelCardData(
        license=license, tags=list(TAGS), pipeline_tag=PIPELINE_TAG, library_name="transformers",
        datasets=datasets or None, model_name=title_repo,
        eval_results=_eval_results(evals, [size] if size else names, per_size_names=size is None),
        base_model=supernet_repo if size is not None and _REPO_ID.match(supernet_repo) else None,
    )
    row = next((r for r in rows if r["name"] == size), None)
    context = dict(
        title=title_repo if size is None else f"{title_repo} ({size})",
        repo_id=repo_id, supernet_repo=supernet_repo, revision=revision, size=size,
        supernet_url=f"https://huggingface.co/{supernet_repo}",
        sizes=names, example_size=next((n for n in names if n != FULL), FULL),
        size_table=_size_table(rows, evals, highlight=size), eval_note=_eval_note(evals),
        plot_file=plot_file, onnx=onnx, language_model=language_model,
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


# =========================================================================================================
# export
# =========================================================================================================


def _logits_only(model):
    """Wrap `model` so that forward(input_features, attention_mask) -> logits (for ONNX export)."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_features, attention_mask):
            return self.inner(input_features=input_features, attention_mask=attention_mask).logits

    return LogitsOnly(model)


def export_onnx(model, path, *, opset: int = 17, verify: bool = True, atol: float = 1e-4) -> str:
    """Write `model` (one size) as ONNX: inputs input_features [batch, frames, mels] and attention_mask
    [batch, frames] (int64), output logits [batch, out_frames, vocab]; batch and time are dynamic.
    With `verify` (and onnxruntime installed), checks the ONNX logits against PyTorch on a padded batch."""
    import warnings

    import torch

    was_training = model.training
    model.eval()
    frames, mels = 160, model.config.num_mel_bins
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(2, frames, mels, generator=gen)
    mask = torch.ones(2, frames, dtype=torch.long)
    mask[1, frames - 48:] = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _logits_only(model), (features, mask), os.fspath(path),
                input_names=["input_features", "attention_mask"], output_names=["logits"],
                dynamic_axes={"input_features": {0: "batch", 1: "frames"}, "attention_mask": {0: "batch", 1: "frames"},
                              "logits": {0: "batch", 1: "output_frames"}},
                opset_version=opset, dynamo=False,
            )
    finally:
        model.train(was_training)  # torch.onnx.export does not restore the mode
    if verify:
        try:
            import onnxruntime
        except ImportError:
            return os.fspath(path)
        session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
        features = torch.randn(3, 237, mels, generator=gen)
        mask = torch.ones(3, 237, dtype=torch.long)
        mask[1, 150:] = 0
        mask[2, 60:] = 0
        got = session.run(None, {"input_features": features.numpy(), "attention_mask": mask.numpy()})[0]
        model.eval()
        try:
            with torch.no_grad():
                want = model(input_features=features, attention_mask=mask).logits.numpy()
        finally:
            model.train(was_training)
        err = float(abs(got - want).max())
        if not err <= atol:
            raise RuntimeError(f"ONNX export of {path} differs from PyTorch by {err:.2e} (> {atol})")
    return os.fspath(path)


def _check_output(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty; choose another output_dir or pass "
                              "overwrite=True (--overwrite)")


def _replace_dir(tmp: Path, output_dir: Path) -> None:
    """Move the finished `tmp` folder to `output_dir` with renames only (atomic on one filesystem)."""
    backup = None
    if output_dir.exists():
        if output_dir.is_dir() and not any(output_dir.iterdir()):
            output_dir.rmdir()
        else:
            backup = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
            os.replace(output_dir, backup)
    try:
        os.replace(tmp, output_dir)
    except BaseException:
        if backup is not None:
            os.replace(backup, output_dir)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True) if backup.is_dir() else backup.unlink()


def export_subnets(
    checkpoint,
    output_dir,
    *,
    sizes=None,
    results=None,
    training: Mapping | None = None,
    plot=None,
    baselines=None,
    onnx: bool = False,
    overwrite: bool = False,
    repo_id: str | None = None,
    layout: str = "repos",
    license: str = "apache-2.0",
    datasets: list[str] | None = None,
    include_supernet: bool = True,
    template_path=None,
    lm=None,
) -> dict[str, str]:
    """Export every size of a supernet checkpoint as its own Transformers checkpoint folder.

    Writes `output_dir/<size>/` for each named size (or those in `sizes`) and `output_dir/supernet/`:
    weights, config, processor, remote-code files, README.md, and `model.onnx` with `onnx=True`.
    `results`: evaluation results for the cards (paths/dicts); `plot`: a PNG to include (default: drawn
    from `results`, with `baselines`); `training`: training details (default: `training_details.json` or
    `training_args.json` of the checkpoint). `lm`: an LM folder of `scripts/build_lm.py`, copied into each
    size's `language_model/` (the card says how to decode with it). Returns {name: folder}. Refuses a
    non-empty `output_dir` unless `overwrite`."""
    from transformers import AutoProcessor

    from .modeling_dynasr import DynaSRForCTC

    output_dir = Path(output_dir).absolute()
    _check_output(output_dir, overwrite)
    _check_layout(layout)
    model = DynaSRForCTC.from_pretrained(checkpoint, subnet=None).eval()
    try:
        processor = AutoProcessor.from_pretrained(checkpoint)
    except (OSError, ValueError) as err:
        raise OSError(f"{checkpoint} has no processor files (preprocessor/tokenizer); save one next to the model, "
                      "e.g. hf_dynasr.build_processor().save_pretrained(checkpoint)") from err
    config = model.config
    available = [n for n, e in config.subnets.items() if e.get("components") is not None]
    if not available:
        raise ValueError(f"{checkpoint} has no named subnets with selected components; nothing to export")
    names = available if sizes in (None, "all") else (
        [s.strip() for s in sizes.split(",")] if isinstance(sizes, str) else list(sizes))
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"unknown size(s) {unknown}; available: {', '.join(available)}")
    if SUPERNET_DIR in names:
        raise ValueError(f"a size named '{SUPERNET_DIR}' clashes with the supernet folder; rename it")
    evals = load_results(results)
    if training is None:  # training_details.json / training_args.json, else a "training" entry of the results
        training = read_training_details(checkpoint) or next((r["training"] for r in evals
                                                               if isinstance(r.get("training"), Mapping)), {})
    training = clean_training_details(training)
    if lm is not None:
        read_lm_config(lm)  # fails early, saying what is missing
    lm_info = lm_summary(lm)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        plot_src = None
        if plot is not None:
            plot_src = Path(plot)
        elif evals:
            plot_src = Path(plot_pareto(evals, tmp / PLOT_FILE, baselines=baselines,
                                        title="hf_dynasr: WER of every size"))
        info = {"checkpoint": os.fspath(checkpoint), "sizes": names, "license": license,
                "datasets": datasets or [], "training": training, "onnx": onnx, "supernet": include_supernet}
        write_json(info, tmp / EXPORT_INFO)
        folders = {}
        targets = ([SUPERNET_DIR] if include_supernet else []) + names
        for name in targets:
            folder = tmp / name
            if name == SUPERNET_DIR:
                model.save_pretrained(folder)
                latency = Path(checkpoint) / LATENCY_TABLE_NAME
                if latency.is_file():
                    shutil.copy2(latency, folder / LATENCY_TABLE_NAME)
            else:
                sub = model.extract_subnet(name).eval()
                sub.save_pretrained(folder)
                if onnx:
                    export_onnx(sub, folder / ONNX_FILE)
                if lm is not None:
                    copy_lm_dir(lm, folder / LM_SUBDIR)
                del sub
            processor.save_pretrained(folder)
            if evals:
                write_json(evals, folder / EVAL_RESULTS)
            if plot_src is not None:
                shutil.copy2(plot_src, folder / PLOT_FILE)
            folders[name] = folder
        if plot_src is not None and plot_src.parent == tmp:
            plot_src.unlink()
        refs = size_references(repo_id, names, layout) if repo_id else {}
        for name, folder in folders.items():
            size = None if name == SUPERNET_DIR else name
            card = render_model_card(
                config, size=size, repo_id=(refs.get(name, (repo_id, None))[0] if size else repo_id),
                supernet_repo=repo_id, revision=refs.get(name, (None, None))[1] if size else None,
                results=evals, training=training, plot_file=PLOT_FILE if plot_src is not None else None,
                size_refs={k: _ref_str(*v) for k, v in refs.items()} if size is None else None,
                onnx=onnx and size is not None, license=license, datasets=datasets, template_path=template_path,
                language_model=lm_info if size is not None else None)
            card.save(folder / "README.md")
        _replace_dir(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {name: os.fspath(output_dir / name) for name in folders}


# =========================================================================================================
# push
# =========================================================================================================


class HubPushError(RuntimeError):
    """A push failed for a reason the user can fix (offline mode, no network, bad repo id)."""


def _check_layout(layout: str) -> None:
    if layout not in ("repos", "branches"):
        raise ValueError(f"layout must be 'repos' (one repo per size) or 'branches' (one branch per size); "
                         f"got {layout!r}")


def size_references(repo_id: str, sizes: Iterable[str], layout: str = "repos") -> dict[str, tuple[str, str | None]]:
    """{size: (repo id, branch or None)}: `org/name-<size>` (repos layout) or `org/name` @ `<size>` (branches)."""
    _check_layout(layout)
    if layout == "repos":
        return {s: (f"{repo_id}-{s}", None) for s in sizes}
    return {s: (repo_id, s) for s in sizes}


def _ref_str(repo: str, revision: str | None) -> str:
    return repo if revision is None else f"{repo} (revision=\"{revision}\")"


@dataclass
class PushTarget:
    """One commit: every file of `folder` to `repo_id` at branch `revision` (None = main)."""

    repo_id: str
    revision: str | None
    folder: str
    size: str | None
    operations: list = field(default_factory=list)

    @property
    def files(self) -> list[tuple[str, int]]:
        return [(op.path_in_repo, op.upload_info.size) for op in self.operations]

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


def _is_export_dir(path: Path) -> bool:
    return (path / SUPERNET_DIR / "config.json").is_file()


def plan_push(export_dir, repo_id: str, *, layout: str = "repos", license: str | None = None,
              template_path=None) -> list[PushTarget]:
    """Build every commit of a push offline (`CommitOperationAdd` hashes each file now); no network.

    `export_dir`: an `export_subnets` output. Model cards are re-rendered with the real repo ids."""
    from huggingface_hub import CommitOperationAdd

    from .configuration_dynasr import DynaSRConfig

    if not _REPO_ID.match(repo_id or ""):
        raise ValueError(f"repo id must look like 'org/name'; got {repo_id!r}")
    _check_layout(layout)
    export_dir = Path(export_dir)
    if not _is_export_dir(export_dir):
        raise FileNotFoundError(f"{export_dir} is not an export folder (no {SUPERNET_DIR}/config.json); run "
                                "scripts/export_subnets.py first or pass a supernet checkpoint")
    info = {}
    if (export_dir / EXPORT_INFO).is_file():
        info = json.loads((export_dir / EXPORT_INFO).read_text(encoding="utf-8"))
    supernet_config = DynaSRConfig.from_pretrained(export_dir / SUPERNET_DIR)
    sizes = [p.name for p in sorted(export_dir.iterdir())
             if p.is_dir() and p.name != SUPERNET_DIR and not p.name.startswith(".") and (p / "config.json").is_file()]
    refs = size_references(repo_id, sizes, layout)
    targets = [PushTarget(repo_id, None, os.fspath(export_dir / SUPERNET_DIR), None)]
    targets += [PushTarget(refs[s][0], refs[s][1], os.fspath(export_dir / s), s) for s in sizes]
    for target in targets:
        folder = Path(target.folder)
        evals = json.loads((folder / EVAL_RESULTS).read_text(encoding="utf-8")) if (folder / EVAL_RESULTS).is_file() \
            else []
        card = render_model_card(
            supernet_config, size=target.size, repo_id=target.repo_id, supernet_repo=repo_id,
            revision=target.revision, results=evals, training=info.get("training"),
            plot_file=PLOT_FILE if (folder / PLOT_FILE).is_file() else None,
            size_refs={k: _ref_str(*v) for k, v in refs.items()} if target.size is None else None,
            onnx=(folder / ONNX_FILE).is_file(), license=license or info.get("license") or "apache-2.0",
            datasets=info.get("datasets"), template_path=template_path,
            language_model=lm_summary(folder / LM_SUBDIR))
        ops = [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode("utf-8"))]
        for file in sorted(folder.rglob("*")):
            rel = file.relative_to(folder).as_posix()
            if file.is_file() and rel != "README.md" and not any(p.startswith(".") for p in rel.split("/")) \
                    and "__pycache__" not in rel:
                ops.append(CommitOperationAdd(path_in_repo=rel, path_or_fileobj=os.fspath(file)))
        target.operations = ops
    return targets


def format_plan(items) -> str:
    """Human-readable listing of `plan_push` targets or a `push_to_hub` report: each repo/branch, every
    file with its size in bytes, totals."""
    entries = [{"repo_id": t.repo_id, "revision": t.revision, "size": t.size, "files": t.files}
               if isinstance(t, PushTarget) else t for t in items]
    lines = []
    for e in entries:
        total = sum(size for _, size in e["files"])
        kind = "supernet" if e["size"] is None else f"size {e['size']}"
        lines.append(f"{e['repo_id']} @ {e['revision'] or 'main'}  ({kind}, {len(e['files'])} files, "
                     f"{format_count(total, 'B')})")
        lines += [f"  {size:>12,d}  {path}" for path, size in e["files"]]
    n_files = sum(len(e["files"]) for e in entries)
    n_bytes = sum(size for e in entries for _, size in e["files"])
    lines.append(f"total: {n_files} files, {n_bytes:,d} bytes in {len(entries)} commits")
    return "\n".join(lines)


def _redact(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def push_to_hub(
    path,
    repo_id: str,
    *,
    layout: str = "repos",
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    dry_run: bool = False,
    commit_message: str = "Upload hf_dynasr model",
    results=None,
    onnx: bool = False,
    license: str | None = None,
    template_path=None,
) -> list[dict]:
    """Push a supernet and every size: `repo_id` (supernet) plus `repo_id-<size>` repos (`layout="repos"`),
    or one repo with a branch per size (`layout="branches"`).

    `path`: an `export_subnets` folder, or a supernet checkpoint (exported to a temporary folder first,
    with `results`/`onnx`). `dry_run`: build the commits offline and return the file list, no network.
    Returns one dict per commit: repo_id, revision, files [(path, bytes)], and commit_url (not in dry runs).
    Offline mode or an unreachable endpoint raise HubPushError at once with what to do. The token is
    never printed, logged or written."""
    path = Path(path)
    if not dry_run:
        _check_online()
    with tempfile.TemporaryDirectory(prefix="hf_dynasr_push_") as staging:
        if not _is_export_dir(path):
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"{path} is neither an export folder nor a checkpoint (no config.json)")
            export_subnets(path, Path(staging) / "export", results=results, onnx=onnx, repo_id=repo_id,
                           layout=layout, license=license or "apache-2.0", template_path=template_path)
            path = Path(staging) / "export"
        targets = plan_push(path, repo_id, layout=layout, license=license, template_path=template_path)
        if token:
            for t in targets:
                card = t.operations[0].path_or_fileobj
                if isinstance(card, bytes) and token.encode() in card:  # pragma: no cover - defensive
                    raise HubPushError("refusing to upload a model card that contains the token")
        report = [{"repo_id": t.repo_id, "revision": t.revision, "size": t.size, "files": t.files} for t in targets]
        if dry_run:
            return report
        _upload(targets, report, private=private, token=token, endpoint=endpoint, commit_message=commit_message)
        return report


def _check_online() -> None:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise HubPushError(
            "HF_HUB_OFFLINE=1 is set, so nothing can be pushed. Unset it (e.g. `HF_HUB_OFFLINE=0 python "
            "scripts/push_to_hub.py ...`) on a machine with network access, or use --dry-run to list the files."
        )


def _upload(targets, report, *, private, token, endpoint, commit_message) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        import httpx2 as _httpx
    except ImportError:  # pragma: no cover - older huggingface_hub
        import httpx as _httpx

    where = endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    _check_online()
    api = HfApi(endpoint=endpoint, token=token)
    created = set()
    try:
        for target, entry in zip(targets, report):
            if target.repo_id not in created:
                api.create_repo(target.repo_id, private=private, exist_ok=True, repo_type="model")
                created.add(target.repo_id)
            if target.revision is not None:
                api.create_branch(target.repo_id, branch=target.revision, exist_ok=True, repo_type="model")
            info = api.create_commit(target.repo_id, operations=target.operations, commit_message=commit_message,
                                     revision=target.revision, repo_type="model")
            entry["commit_url"] = getattr(info, "commit_url", None) or str(info)
    except OfflineModeIsEnabled as err:
        raise HubPushError(
            "offline mode is enabled (HF_HUB_OFFLINE=1): unset it on a machine with network access, or use "
            "--dry-run to list the files"
        ) from None
    except (_httpx.TransportError, ConnectionError) as err:
        raise HubPushError(
            f"cannot reach the Hub at {where} ({type(err).__name__}: {_redact(str(err), token)}). Check the network "
            "connection and HF_ENDPOINT, or use --dry-run to list the files without uploading."
        ) from None
    except HfHubHTTPError as err:
        raise HubPushError(f"the Hub at {where} refused the push: {_redact(str(err), token)}") from None
