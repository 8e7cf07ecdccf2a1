"""The run folder: --overwrite_output_dir removes only a run's own entries, a folder holding anything else is
refused naming it (a source tree as --output_dir included), a failed start is retried without hand-deleting, a
lock keeps a second run out (a stale one is taken over), and SIGINT/SIGTERM write a checkpoint and exit so that
a resume ends where the uninterrupted run ends (docs/robustness.md)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading

import pytest
import torch
from conftest import REPO, corpus_subset, run_train, train_in_process
from fault_injection import train
from safetensors.torch import load_file
from test_training import DDP_LAUNCHER

from hf_dynasr.trainer import TrainerCallback
from hf_dynasr.trainer import signals as stop_signals
from hf_dynasr.trainer.loop import forget_later_events
from hf_dynasr.trainer.run_folder import LOCK, acquire_lock, folder_contents, release_lock

SMOKE = os.path.join(REPO, "training", "configs", "smoke.yaml")


@pytest.fixture(scope="module")
def corpus(smoke_corpus, tmp_path_factory):
    """12 training and 2 dev utterances of the smoke corpus."""
    root = tmp_path_factory.mktemp("folder_corpus")
    return corpus_subset(smoke_corpus, root, {"train": 12, "dev": 2})


def _args(corpus, out, *extra, steps=2):
    return ["--config", SMOKE, "--train_data", f"audiofolder:{corpus}", "--eval_data", f"audiofolder:{corpus}",
            "--output_dir", out, "--max_steps", steps, "--save_steps", "0", "--max_batch_seconds", "8",
            "--logging_steps", "1", "--max_eval_utterances", "2", *extra]


def _refused(args) -> str:
    with pytest.raises(SystemExit) as exc:
        train_in_process(args)
    return str(exc.value.code)


def _weights(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


# --- --overwrite_output_dir, foreign files, failed starts -----------------------------------------------


def test_overwrite_removes_only_the_runs_entries_and_refuses_other_files(corpus, tmp_path):
    out = tmp_path / "run"
    train_in_process(_args(corpus, out))
    (out / "dmao_events.jsonl").write_text("{}\n")
    (out / "eval").mkdir()
    own = sorted(os.listdir(out))
    assert {"checkpoints", "final", "training_args.json", "data_report.json"} <= set(own) and LOCK not in own
    assert folder_contents(str(out)) == (own, [])
    # a file of the user's: refused even with --overwrite_output_dir, named, nothing touched
    (out / "notes.txt").write_text("mine")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    message = _refused(_args(corpus, out, "--overwrite_output_dir", "true"))
    assert "holds files that no training run wrote (notes.txt)" in message and "choose a new --output_dir" in message
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    # without it, the run's entries are replaced and nothing else is there to lose
    os.remove(out / "notes.txt")
    (out / "final" / "stale.txt").write_text("of the previous run")
    train_in_process(_args(corpus, out, "--overwrite_output_dir", "true"))
    assert not (out / "final" / "stale.txt").exists() and not (out / "eval").exists()
    assert (out / "final" / "model.safetensors").is_file() and not (out / LOCK).exists()


def test_a_source_tree_as_output_dir_is_refused(tmp_path):
    tree = tmp_path / "src"
    shutil.copytree(os.path.join(REPO, "training"), tree / "training")
    (tree / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    for extra in ([], ["--overwrite_output_dir", "true"]):
        message = _refused(["--config", SMOKE, "--output_dir", tree, *extra])
        assert "holds files that no training run wrote (pyproject.toml, training)" in message
    assert sorted(os.listdir(tree)) == ["pyproject.toml", "training"]
    cwd = os.getcwd()
    try:  # `--output_dir .` in the repository itself
        os.chdir(REPO)
        assert "holds files that no training run wrote" in _refused(["--config", SMOKE, "--output_dir", "."])
    finally:
        os.chdir(cwd)


def test_a_failed_start_is_retried_without_hand_deleting(corpus, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "logs").mkdir()
    (out / "training_args.json").write_text("{}")
    message = _refused(_args(corpus, out))
    assert "holds a previous run that saved no checkpoint (checkpoints, logs, training_args.json)" in message
    assert "Pass --overwrite_output_dir to start again (it removes only those entries)" in message
    message = _refused(_args(corpus, out, "--resume_from_checkpoint", "latest"))
    assert "no complete checkpoint" in message and "pass --overwrite_output_dir" in message
    train_in_process(_args(corpus, out, "--overwrite_output_dir", "true"))
    assert (out / "final" / "model.safetensors").is_file()


# --- the lock -------------------------------------------------------------------------------------------


def test_lock_refuses_a_second_run_and_a_stale_lock_is_taken_over(corpus, tmp_path, caplog):
    out = tmp_path / "run"
    lock = acquire_lock(str(out))  # a live run (this process) holds the folder
    holder = f"pid {os.getpid()} on {socket.gethostname()}"
    for extra in ([], ["--resume_from_checkpoint", "latest"], ["--overwrite_output_dir", "true"]):
        message = _refused(_args(corpus, out, *extra))
        assert f"is in use by another training run ({holder}" in message, message
    with pytest.raises(SystemExit, match=f"in use by another training run \\({holder}"):
        acquire_lock(str(out))
    release_lock(lock)
    assert not os.path.exists(lock)
    # a lock of a process that is gone (killed), on this host: taken over with a warning
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (out / LOCK).write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "started": "then"}))
    with caplog.at_level(logging.WARNING, logger="hf_dynasr.train"):
        lock = acquire_lock(str(out))
    assert f"taking over the stale lock {lock} of a run that is gone (pid {gone.pid}" in caplog.text
    assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()
    release_lock(lock)
    # another host's lock cannot be judged: refused, with the way out
    (out / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "then"}))
    with pytest.raises(SystemExit, match="pid 1 on elsewhere .*if that run is gone, delete the lock file"):
        acquire_lock(str(out))


# --- SIGINT / SIGTERM -----------------------------------------------------------------------------------


class SignalAt(TrainerCallback):
    """Sends this process `signum` `times` times right after update `step` (a real signal to a real run)."""

    def __init__(self, step, signum=signal.SIGTERM, times=1):
        self.step, self.signum, self.times = step, signum, times

    def on_step_end(self, step):
        if step == self.step:
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)


def test_signal_checkpoints_and_the_resume_ends_like_the_uninterrupted_run(corpus, tmp_path):
    args = _args(corpus, tmp_path / "ref", steps=6)
    ref = tmp_path / "ref"
    code, log = train(args, tmp_path / "ref.txt")
    assert code == 0, log[-3000:]
    out = tmp_path / "run"
    args = _args(corpus, out, steps=6)
    # SIGINT twice at once (a terminal's Ctrl-C reaches the launcher, which forwards it): one request
    code, log = train(args, tmp_path / "stop.txt", SignalAt(3, signal.SIGINT, times=2))
    assert code == 128 + signal.SIGINT, log[-3000:]
    step3 = out / "checkpoints" / "step_3"
    assert f"stopped by SIGINT after update 3; checkpoint {step3} written. Run the same command with " \
           "--resume_from_checkpoint latest to continue" in log
    assert sorted(os.listdir(out / "checkpoints")) == ["step_3"] and not (out / "final").exists()
    assert not (out / LOCK).exists()
    segment = json.loads((out / "timing.json").read_text())["wall_time_s"]["3"]  # training time up to step_3
    code, log = train([*args, "--resume_from_checkpoint", "latest"], tmp_path / "resume.txt")
    assert code == 0 and "at step 3" in log, log[-3000:]
    a, b = _weights(ref / "final"), _weights(out / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # history, subnet choices and training time accumulate over both segments
    results, expected = (json.loads((d / "final" / "training_results.json").read_text()) for d in (out, ref))
    assert [h["step"] for h in results["history"]] == list(range(1, 7))
    assert [h["loss/full"] for h in results["history"]] == [h["loss/full"] for h in expected["history"]]
    assert results["subnet_choices"]["batches"] == expected["subnet_choices"]["batches"]
    assert results["subnet_choices"]["rank_digests"] == expected["subnet_choices"]["rank_digests"]
    assert results["wall_time_s"] > segment > 0


def test_a_second_signal_stops_at_once(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(stop_signals, "REPEAT_GRACE_S", -1.0)  # the forked run inherits it: no repeat grace
    out = tmp_path / "run"
    code, log = train(_args(corpus, out, steps=6), tmp_path / "log.txt", SignalAt(2, signal.SIGTERM, times=2))
    assert code == -signal.SIGTERM, log[-3000:]
    assert "SIGTERM received again: stopping at once" in log
    assert os.listdir(out / "checkpoints") == []


def test_sigterm_to_a_two_process_launch_then_resume(corpus, tmp_path):
    """A real SIGTERM to `accelerate launch` (which forwards it to both workers) of a 2-process CPU run: both
    ranks agree on the update to stop after, checkpoint it together and exit non-zero; the resume finishes."""
    out = tmp_path / "ddp"
    args = [os.path.join(REPO, "training", "train.py"),
            *map(str, _args(corpus, out, "--num_processes", "2", "--max_batch_seconds", "4", steps=40))]
    env = {"OMP_NUM_THREADS": "1", **os.environ, "ACCELERATE_USE_CPU": "1"}
    proc = subprocess.Popen(DDP_LAUNCHER + args, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    lines, started = [], threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            if "step 2:" in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(240), "".join(lines)[-4000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    log = "".join(lines)
    assert "stopped by SIGTERM after update" in log, log[-4000:]
    saved = os.listdir(out / "checkpoints")
    assert len(saved) == 1 and not (out / "final").exists(), (saved, log[-4000:])
    stopped_at = int(saved[0].removeprefix("step_"))
    assert 2 <= stopped_at < 40
    result = run_train([*args[1:], "--resume_from_checkpoint", "latest"], launcher=DDP_LAUNCHER,
                       env={"ACCELERATE_USE_CPU": "1"})
    assert f"at step {stopped_at}" in result.stderr
    results = json.loads((out / "final" / "training_results.json").read_text())
    assert results["steps"] == 40 and [h["step"] for h in results["history"]] == list(range(1, 41))
    assert results["rank_weight_checksums"][0] == results["rank_weight_checksums"][1]


def test_a_resume_forgets_the_dmao_events_after_its_checkpoint(tmp_path):
    """dmao_events.jsonl keeps one line per event: those after the checkpoint a run resumes from are made again."""
    events = tmp_path / "dmao_events.jsonl"
    events.write_text("".join(json.dumps({"step": s, "before": [s]}) + "\n" for s in (2, 5)))
    forget_later_events(str(events), 4)
    assert [json.loads(line)["step"] for line in events.read_text().splitlines()] == [2]
    forget_later_events(str(tmp_path / "absent.jsonl"), 4)  # a run without DMAO: nothing to do
