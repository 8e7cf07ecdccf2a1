"""Sharing an export on the Hub: one commit per repository (or branch), planned offline, pushed with the
user's token.

    from hf_dynasr.export import export_subnets, push_to_hub
    export_subnets("ckpt", "export", results=["results.json"], onnx=True)   # export/<size>/, export/supernet/
    push_to_hub("export", "org/asr", dry_run=True)                          # list every file, no network
    push_to_hub("export", "org/asr", layout="repos")                         # org/asr, org/asr-<size>, ...

`plan_push` builds every commit offline and re-renders the model cards with the real repository ids
(`hf_dynasr.export.repo_layout` names them); `push_to_hub` uploads them, exporting a supernet checkpoint
first when given one. The token is never printed, logged or written.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitOperationAdd, constants

from hf_dynasr.evaluation.reports import format_count
from hf_dynasr.export.model_card import render_model_card
from hf_dynasr.export.repo_layout import check_layout, format_reference, is_repo_id, size_references
from hf_dynasr.export.onnx_report import read_onnx_info
from hf_dynasr.export.subnets import EVAL_RESULTS, EXPORT_INFO, PLOT_FILE, SUPERNET_DIR, export_subnets
from hf_dynasr.json_io import read_json
from hf_dynasr.lm.build import LM_SUBDIR, lm_summary
from hf_dynasr.models.dynasr.configuration_dynasr import DynaSRConfig

__all__ = ["HubPushError", "PushTarget", "format_plan", "plan_push", "push_to_hub"]


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
    if not is_repo_id(repo_id):
        raise ValueError(f"repo id must look like 'org/name'; got {repo_id!r}")
    check_layout(layout)
    export_dir = Path(export_dir)
    if not _is_export_dir(export_dir):
        raise FileNotFoundError(f"{export_dir} is not an export folder (no {SUPERNET_DIR}/config.json); run "
                                "scripts/export_subnets.py first or pass a supernet checkpoint")
    info = read_json(export_dir / EXPORT_INFO) if (export_dir / EXPORT_INFO).is_file() else {}
    supernet_config = DynaSRConfig.from_pretrained(export_dir / SUPERNET_DIR)
    sizes = [p.name for p in sorted(export_dir.iterdir())
             if p.is_dir() and p.name != SUPERNET_DIR and not p.name.startswith(".") and (p / "config.json").is_file()]
    refs = size_references(repo_id, sizes, layout)
    targets = [PushTarget(repo_id, None, os.fspath(export_dir / SUPERNET_DIR), None)]
    targets += [PushTarget(refs[s][0], refs[s][1], os.fspath(export_dir / s), s) for s in sizes]
    for target in targets:
        folder = Path(target.folder)
        evals = read_json(folder / EVAL_RESULTS) if (folder / EVAL_RESULTS).is_file() else []
        card = render_model_card(
            supernet_config, size=target.size, repo_id=target.repo_id, supernet_repo=repo_id,
            revision=target.revision, results=evals, training=info.get("training"),
            plot_file=PLOT_FILE if (folder / PLOT_FILE).is_file() else None,
            size_refs={k: format_reference(*v) for k, v in refs.items()} if target.size is None else None,
            onnx=read_onnx_info(folder), license=license or info.get("license") or "apache-2.0",
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
    if constants.HF_HUB_OFFLINE:
        raise HubPushError(
            "HF_HUB_OFFLINE=1 is set, so nothing can be pushed. Unset it (e.g. `HF_HUB_OFFLINE=0 python "
            "scripts/push_to_hub.py ...`) on a machine with network access, or use --dry-run to list the files."
        )


def _upload(targets, report, *, private, token, endpoint, commit_message) -> None:
    # the network client and its errors are imported only when something is actually uploaded
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
    except OfflineModeIsEnabled:
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
