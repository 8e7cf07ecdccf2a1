"""Per-size export, model cards and Hub sharing of hf_dynasr supernets.

    from hf_dynasr.export.hub import export_subnets, push_to_hub
    export_subnets("ckpt", "export", results=["results.json"], onnx=True)   # export/<size>/, export/supernet/
    push_to_hub("export", "org/asr", dry_run=True)                          # list every file, no network
    push_to_hub("export", "org/asr", layout="repos")                         # org/asr, org/asr-<size>, ...

An export folder holds `supernet/` (the whole checkpoint, all CTC heads) and one folder per size: compact
weights from `extract_subnet`, a config with the size's architecture spec and `active_subnet`, the
processor, the remote-code files, `README.md` (model card) and optionally `model.onnx`, `eval_results.json`
and `pareto.png`. Writes are atomic: everything goes to a temporary sibling folder first, which is then
renamed. Model cards are rendered from the templates in `model_cards/` with
`huggingface_hub.ModelCard.from_template`; a push re-renders them with the real repository ids.

This module holds the push (`push_to_hub`, `plan_push`, `format_plan`, `HubPushError`) and re-exports the
rest, so every name above imports from here: the export is in `hf_dynasr.export.subnets`, the model cards in
`hf_dynasr.export.model_card`.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hf_dynasr.export.subnets import (
    EVAL_RESULTS,
    EXPORT_INFO,
    ONNX_FILE,
    PLOT_FILE,
    SUPERNET_DIR,
    _check_layout,
    _ref_str,
    export_onnx,
    export_subnets,
    size_references,
)
from hf_dynasr.lm.decoding import LM_SUBDIR, lm_summary
from hf_dynasr.evaluation.metrics import format_count
from hf_dynasr.export.model_card import (
    PIPELINE_TAG,
    TAGS,
    TEMPLATE_ENV,
    _REPO_ID,
    clean_training_details,
    load_results,
    read_training_details,
    render_model_card,
    template_dir,
)

__all__ = [
    "EVAL_RESULTS",
    "EXPORT_INFO",
    "HubPushError",
    "ONNX_FILE",
    "PIPELINE_TAG",
    "PLOT_FILE",
    "PushTarget",
    "SUPERNET_DIR",
    "TAGS",
    "TEMPLATE_ENV",
    "clean_training_details",
    "export_onnx",
    "export_subnets",
    "format_plan",
    "load_results",
    "plan_push",
    "push_to_hub",
    "read_training_details",
    "render_model_card",
    "size_references",
    "template_dir",
]


# =========================================================================================================
# push
# =========================================================================================================


class HubPushError(RuntimeError):
    """A push failed for a reason the user can fix (offline mode, no network, bad repo id)."""


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

    from hf_dynasr.models.dynasr.configuration_dynasr import DynaSRConfig

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
