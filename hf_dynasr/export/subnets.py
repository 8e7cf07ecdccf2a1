"""Per-size export of hf_dynasr supernets (`export_subnets`).

An export folder holds `supernet/` (the whole checkpoint, all CTC heads) and one folder per size: compact
weights from `extract_subnet`, a config with the size's architecture spec and `active_subnet`, the
processor, the remote-code files, `README.md` (model card, `hf_dynasr.export.model_card`) and optionally
`model.onnx` (with `model_int8.onnx` and `onnx_report.json`), `eval_results.json` and `pareto.png`. The whole
network is the size `full`: `supernet/model.onnx` is its ONNX file, and `sizes=["full", ...]` also writes it as a
compact folder of its own. Writes are atomic: everything goes to a temporary sibling folder first, which is then
renamed. The ONNX files are written by `hf_dynasr.export.onnx_export` and measured by
`hf_dynasr.export.onnx_report`, each size's Hub repository (and branch) named by `hf_dynasr.export.repo_layout`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from transformers import AutoProcessor

from hf_dynasr.evaluation.inference import size_names
from hf_dynasr.evaluation.latency import LATENCY_TABLE_NAME
from hf_dynasr.evaluation.reports import plot_pareto
from hf_dynasr.export.model_card import clean_training_details, load_results, read_training_details, render_model_card
from hf_dynasr.export.onnx_export import export_onnx, quantize_int8
from hf_dynasr.export.onnx_report import ONNX_FILE, ONNX_INT8_FILE, measure_onnx, read_onnx_info, write_report
from hf_dynasr.export.repo_layout import check_layout, format_reference, size_references
from hf_dynasr.json_io import write_json
from hf_dynasr.lm.build import LM_SUBDIR, copy_lm_dir, lm_summary, read_lm_config
from hf_dynasr.models.dynasr.modeling_dynasr import DynaSRForCTC
from hf_dynasr.models.dynasr.subnets_dynasr import FULL

SUPERNET_DIR = "supernet"
EXPORT_INFO = "export_info.json"
EVAL_RESULTS = "eval_results.json"
PLOT_FILE = "pareto.png"


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
    int8: bool = False,
    onnx_eval=None,
    onnx_eval_name: str | None = None,
    onnx_eval_split: str | None = None,
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

    Writes `output_dir/<size>/` for each named size (or those in `sizes`; "full" = the whole network on its own)
    and `output_dir/supernet/`: weights, config, processor, remote-code files, README.md. `onnx=True` adds
    `model.onnx` to every size folder and to `supernet/` (the whole network), checked against PyTorch; `int8=True`
    (implies `onnx`) also `model_int8.onnx`, dynamically quantized. Each ONNX folder gets `onnx_report.json`
    (latency of PyTorch fp32, ONNX fp32 and int8 at batch 1 on 10 s; with `onnx_eval`, a dataset with audio and
    text columns named `onnx_eval_name` / `onnx_eval_split` in the cards, their WER/CER on it), which the cards show.
    `results`: evaluation results for the cards (paths/dicts); `plot`: a PNG to include (default: drawn
    from `results`, with `baselines`); `training`: training details (default: `training_details.json` or
    `training_args.json` of the checkpoint). `lm`: an LM folder of `hf_dynasr.lm.build_lm`, copied into each
    size's `language_model/` (the card says how to decode with it). Returns {name: folder}. Refuses a
    non-empty `output_dir` unless `overwrite`."""
    output_dir = Path(output_dir).absolute()
    _check_output(output_dir, overwrite)
    check_layout(layout)
    model = DynaSRForCTC.from_pretrained(checkpoint, subnet=None).eval()
    processor = _load_processor(checkpoint)
    names = _export_names(model, sizes, checkpoint)
    onnx = onnx or int8
    onnx_options = {"int8": int8, "dataset": onnx_eval, "dataset_name": onnx_eval_name, "split": onnx_eval_split}
    evals = load_results(results)
    training = clean_training_details(training if training is not None else _training_details(checkpoint, evals))
    if lm is not None:
        read_lm_config(lm)  # fails early, saying what is missing

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        plot_src = _plot_source(plot, evals, baselines, tmp)
        write_json(tmp / EXPORT_INFO, {"checkpoint": os.fspath(checkpoint), "sizes": names, "license": license,
                                       "datasets": datasets or [], "training": training, "onnx": onnx,
                                       "int8": int8, "supernet": include_supernet})
        folders = {}
        for name in ([SUPERNET_DIR] if include_supernet else []) + names:
            folders[name] = tmp / name
            _write_model(model, name, folders[name], checkpoint, lm=lm)
            _write_extras(processor, folders[name], evals, plot_src)
            if onnx:
                _write_onnx(model, name, folders[name], processor, **onnx_options)
        if plot_src is not None and plot_src.parent == tmp:
            plot_src.unlink()
        card_options = dict(results=evals, training=training, plot_file=PLOT_FILE if plot_src is not None else None,
                            license=license, datasets=datasets, template_path=template_path)
        _write_cards(model.config, folders, names, repo_id, layout, onnx=onnx, lm_info=lm_summary(lm),
                     local=_local_paths(output_dir, folders, checkpoint), **card_options)
        _replace_dir(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {name: os.fspath(output_dir / name) for name in folders}


def _load_processor(checkpoint):
    try:
        return AutoProcessor.from_pretrained(checkpoint)
    except (OSError, ValueError) as err:
        raise OSError(f"{checkpoint} has no processor files (preprocessor/tokenizer); save one next to the model, "
                      "e.g. hf_dynasr.build_processor().save_pretrained(checkpoint)") from err


def _export_names(model, sizes, checkpoint) -> list[str]:
    """The sizes to export: every named size with selected components, or those in `sizes` (list or "a,b"),
    which may name "full", the whole network."""
    named = [n for n, e in model.config.subnets.items() if e.get("components") is not None]
    if not named:
        raise ValueError(f"{checkpoint} has no named subnets with selected components; nothing to export")
    names = named if sizes in (None, "all") else size_names(model, sizes)  # unknown names: ValueError, available
    if SUPERNET_DIR in names:
        raise ValueError(f"a size named '{SUPERNET_DIR}' clashes with the supernet folder; rename it")
    return names


def _training_details(checkpoint, evals: list[dict]) -> Mapping:
    """`training_details.json` / `training_args.json` of the checkpoint, else a "training" entry of the results."""
    return read_training_details(checkpoint) or next((r["training"] for r in evals
                                                      if isinstance(r.get("training"), Mapping)), {})


def _plot_source(plot, evals: list[dict], baselines, tmp: Path) -> Path | None:
    """The Pareto plot to ship: `plot`, else drawn from the results into `tmp`, else none."""
    if plot is not None:
        return Path(plot)
    if evals:
        return Path(plot_pareto(evals, tmp / PLOT_FILE, baselines=baselines, title="hf_dynasr: WER of every size"))
    return None


def _write_model(model, name: str, folder: Path, checkpoint, *, lm) -> None:
    """The supernet (with its latency table) or the extracted size `name` (with the LM) into `folder`."""
    if name == SUPERNET_DIR:
        model.save_pretrained(folder)
        latency = Path(checkpoint) / LATENCY_TABLE_NAME
        if latency.is_file():
            shutil.copy2(latency, folder / LATENCY_TABLE_NAME)
        return
    sub = model.extract_subnet(name).eval()
    sub.save_pretrained(folder)
    if lm is not None:
        copy_lm_dir(lm, folder / LM_SUBDIR)


def _write_onnx(model, name: str, folder: Path, processor, *, int8: bool, dataset, dataset_name, split) -> None:
    """`model.onnx` of size `name` (the supernet folder: the whole network), `model_int8.onnx` with `int8`, and
    `onnx_report.json` with their latency (and WER/CER on `dataset`) beside PyTorch's."""
    sub = model.extract_subnet(FULL if name == SUPERNET_DIR else name).eval()
    export_onnx(sub, folder / ONNX_FILE)
    if int8:
        quantize_int8(folder / ONNX_FILE, folder / ONNX_INT8_FILE)
    write_report(folder, measure_onnx(sub, folder, processor, dataset=dataset, dataset_name=dataset_name,
                                      split=split))


def _write_extras(processor, folder: Path, evals: list[dict], plot_src: Path | None) -> None:
    processor.save_pretrained(folder)
    if evals:
        write_json(folder / EVAL_RESULTS, evals)
    if plot_src is not None:
        shutil.copy2(plot_src, folder / PLOT_FILE)


def _local_paths(output_dir: Path, folders: dict, checkpoint) -> dict[str, str]:
    """What a card without a repository id loads: each exported folder (relative to the working folder when under
    it) and, as the supernet, its export folder or else the checkpoint it came from."""
    def shown(path) -> str:
        path = os.path.abspath(path)
        return os.path.relpath(path) if path.startswith(os.getcwd() + os.sep) else path

    local = {name: shown(output_dir / name) for name in folders}
    local.setdefault(SUPERNET_DIR, shown(checkpoint) if os.path.isdir(checkpoint) else os.fspath(checkpoint))
    return local


def _write_cards(config, folders: dict[str, Path], names: list[str], repo_id: str | None, layout: str, *,
                 onnx: bool, lm_info: Mapping | None, local: Mapping[str, str], **card_options) -> None:
    """README.md of every folder; with `repo_id`, the cards name each size's repository for `layout`; without,
    they load the `local` folders."""
    refs = size_references(repo_id, names, layout) if repo_id else {}
    for name, folder in folders.items():
        if name == SUPERNET_DIR:
            card = render_model_card(config, size=None, repo_id=repo_id, supernet_repo=repo_id,
                                     size_refs={k: format_reference(*v) for k, v in refs.items()},
                                     onnx=onnx and read_onnx_info(folder), local_path=local[name], **card_options)
        else:
            repo, revision = refs.get(name, (repo_id, None))
            card = render_model_card(config, size=name, repo_id=repo, supernet_repo=repo_id, revision=revision,
                                     onnx=onnx and read_onnx_info(folder), language_model=lm_info,
                                     local_path=local[name], local_supernet=local[SUPERNET_DIR], **card_options)
        card.save(folder / "README.md")
