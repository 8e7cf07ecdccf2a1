"""Per-size export of hf_dynasr supernets (`export_subnets`) and ONNX export of one size (`export_onnx`).

An export folder holds `supernet/` (the whole checkpoint, all CTC heads) and one folder per size: compact
weights from `extract_subnet`, a config with the size's architecture spec and `active_subnet`, the
processor, the remote-code files, `README.md` (model card, `hf_dynasr.export.model_card`) and optionally
`model.onnx`, `eval_results.json` and `pareto.png`. Writes are atomic: everything goes to a temporary
sibling folder first, which is then renamed. `size_references` names each size's repository (and branch)
for a given Hub layout; the cards written here and the push (`hf_dynasr.export.hub`) both use it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from hf_dynasr.lm.decoding import LM_SUBDIR, copy_lm_dir, lm_summary, read_lm_config
from hf_dynasr.evaluation.metrics import LATENCY_TABLE_NAME, plot_pareto
from hf_dynasr.json_io import write_json
from hf_dynasr.export.model_card import clean_training_details, load_results, read_training_details, render_model_card

SUPERNET_DIR = "supernet"
EXPORT_INFO = "export_info.json"
EVAL_RESULTS = "eval_results.json"
PLOT_FILE = "pareto.png"
ONNX_FILE = "model.onnx"


# =========================================================================================================
# repository layout of the sizes (used by the cards written here and by the push)
# =========================================================================================================


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

    from hf_dynasr.models.dynasr.modeling_dynasr import DynaSRForCTC

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
        write_json(tmp / EXPORT_INFO, info)
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
                write_json(folder / EVAL_RESULTS, evals)
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
