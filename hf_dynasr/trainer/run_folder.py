"""The run folder (`--output_dir`): what a training run writes there, the checks before it starts, the lock that
keeps a second run out, and `--overwrite_output_dir`, which removes only the run's own entries.

A run writes only the entries of `RUN_ENTRIES` (the project's evaluation and export scripts add `eval/` and
`export/` next to them, as the demo does). A folder holding anything else is refused for a new run, naming
what it holds, so nothing a user saved there (or a source tree passed as `--output_dir .`) is ever deleted or
mixed with a run.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import time

logger = logging.getLogger("hf_dynasr.train")

LOCK = "run.lock"
TIMING_FILE = "timing.json"  # the training time at each checkpoint: times are not part of a checkpoint's bytes
#: name -> whether it is a folder: every entry a training run (or the project's scripts run on its final/) writes
RUN_ENTRIES = {"checkpoints": True, "final": True, "final.tmp": True, "logs": True, "eval": True, "export": True,
               "training_args.json": False, "data_report.json": False, "dmao_events.jsonl": False, TIMING_FILE: False,
               LOCK: False}


def is_run_entry(folder: str, name: str) -> bool:
    """Whether `folder/name` is something a run writes: a name of `RUN_ENTRIES` of the right kind (a real
    folder, not a link to one), or the temporary file of an atomic JSON write (`training_args.json.tmp-<pid>`)."""
    path = os.path.join(folder, name)
    if name in RUN_ENTRIES:
        return RUN_ENTRIES[name] == (os.path.isdir(path) and not os.path.islink(path))
    base, _, pid = name.rpartition(".tmp-")
    return base in RUN_ENTRIES and not RUN_ENTRIES[base] and pid.isdigit()


def folder_contents(folder: str) -> tuple[list[str], list[str]]:
    """(the run's entries, everything else) in `folder`, sorted; both empty when it does not exist."""
    if not os.path.isdir(folder):
        return [], []
    names = sorted(os.listdir(folder))
    own = [n for n in names if is_run_entry(folder, n)]
    return own, [n for n in names if n not in own]


def has_complete_run_state(folder: str) -> bool:
    """Whether a previous run left something worth keeping: a checkpoint folder or final/."""
    checkpoints = os.path.join(folder, "checkpoints")
    saved = os.path.isdir(checkpoints) and any(n.startswith("step_") for n in os.listdir(checkpoints))
    return saved or os.path.isdir(os.path.join(folder, "final"))


def check_run_folder(output_dir: str, *, resume: bool, overwrite: bool) -> bool:
    """Whether output_dir holds a previous run; a SystemExit (before anything is written) when the folder cannot
    be used: it holds files no run wrote (a new run), it is locked by a live run, or it holds a previous run
    and neither --resume_from_checkpoint nor --overwrite_output_dir was given."""
    own, foreign = folder_contents(output_dir)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise SystemExit(f"error: --output_dir {output_dir} is a file, not a folder; choose a folder")
    if foreign and not resume:
        shown = ", ".join(foreign[:8]) + (f" and {len(foreign) - 8} more" if len(foreign) > 8 else "")
        raise SystemExit(
            f"error: {output_dir} holds files that no training run wrote ({shown}); a run starts only in an empty "
            "folder or in one that holds a previous run, and never deletes what it did not write: choose a new "
            "--output_dir, or move those files out")
    holder = live_holder(output_dir)
    if holder:
        raise SystemExit(f"error: {output_dir} is in use by another training run ({holder}); wait for it to end or "
                         f"stop it, or choose another --output_dir")
    previous = bool([n for n in own if n != LOCK])
    if previous and not resume and not overwrite:
        if has_complete_run_state(output_dir):
            raise SystemExit(f"error: {output_dir} holds a previous run; pass --resume_from_checkpoint latest to "
                             "continue it or --overwrite_output_dir to start over")
        raise SystemExit(
            f"error: {output_dir} holds a previous run that saved no checkpoint ({', '.join(own)}): nothing to "
            "resume. Pass --overwrite_output_dir to start again (it removes only those entries), or choose "
            "another --output_dir")
    return previous


def clear_run_entries(output_dir: str) -> list[str]:
    """--overwrite_output_dir: remove the previous run's entries (never the lock this run holds, never anything
    else); -> the names removed. Called by the main process while it holds the lock."""
    own, _ = folder_contents(output_dir)
    removed = [n for n in own if n != LOCK]
    for name in removed:
        path = os.path.join(output_dir, name)
        if RUN_ENTRIES.get(name, False):
            shutil.rmtree(path)
        else:
            os.remove(path)
    if removed:
        logger.warning("--overwrite_output_dir: removed the previous run's %s from %s", ", ".join(removed),
                       output_dir)
    return removed


def undo_failed_start(output_dir: str) -> list[str]:
    """A run that started in an empty folder failed before its training loop (no checkpoint to resume, data,
    model): remove what it wrote (its entries only, never the lock it holds), so the same command can be run
    again without --overwrite_output_dir or hand-deleting; -> the names removed. A folder holding a checkpoint
    or final/ is never touched (the caller runs this only for a folder it found empty)."""
    if has_complete_run_state(output_dir):
        return []
    own, _ = folder_contents(output_dir)
    removed = [n for n in own if n != LOCK]
    for name in removed:
        path = os.path.join(output_dir, name)
        if RUN_ENTRIES.get(name, False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
    logger.warning("the run failed before training began; removed what it wrote in %s (%s), so the same command "
                   "can be run again", output_dir, ", ".join(removed) or "nothing")
    return removed


# --- the lock ---------------------------------------------------------------------------------------------


def read_lock(output_dir: str) -> dict | None:
    """The lock's holder ({"pid", "host", "started"}), {} for an unreadable lock, None without a lock."""
    try:
        with open(os.path.join(output_dir, LOCK), encoding="utf-8") as f:
            holder = json.load(f)
        return holder if isinstance(holder, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a live process of another user
        return True
    return True


def describe(holder: dict, path: str) -> str:
    if not holder:
        return f"unreadable lock file {path}; delete it if no run uses this folder"
    return (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}, lock file {path}; "
            "if that run is gone, delete the lock file")


def live_holder(output_dir: str) -> str | None:
    """A description of the run holding output_dir's lock, or None when there is no lock or it is stale (its
    process, on this host, is gone)."""
    holder = read_lock(output_dir)
    if holder is None or stale(holder):
        return None
    return describe(holder, os.path.join(output_dir, LOCK))


def stale(holder: dict) -> bool:
    """A lock of a process of this host that no longer exists (a killed run)."""
    pid = holder.get("pid")
    return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid)


def acquire_lock(output_dir: str) -> str:
    """Create output_dir/run.lock atomically (O_CREAT | O_EXCL) holding this process's pid and host; a stale lock
    (a dead process of this host) is taken over with a warning. -> the lock's path; a SystemExit naming the
    holder when another run holds it."""
    path = os.path.join(output_dir, LOCK)
    os.makedirs(output_dir, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = read_lock(output_dir)
            if holder is not None and stale(holder):
                logger.warning("taking over the stale lock %s of a run that is gone (pid %s on %s, since %s)",
                               path, holder.get("pid"), holder.get("host"), holder.get("started"))
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass
                continue
            raise SystemExit(f"error: {output_dir} is in use by another training run "
                             f"({describe(holder or {}, path)}); wait for it to end or choose another --output_dir")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, f)
            f.flush()
            os.fsync(f.fileno())
        return path
    raise SystemExit(f"error: could not take the lock {path} (another run took it at the same time)")


def release_lock(path: str) -> None:
    """Remove the lock if this process still holds it."""
    holder = read_lock(os.path.dirname(path))
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        try:
            os.remove(path)
        except OSError as err:
            if err.errno != errno.ENOENT:
                logger.warning("could not remove the lock %s: %s", path, err)
