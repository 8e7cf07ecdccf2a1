"""Checkpoints hold no pickle, survive a real full disk, and a damaged one is skipped or named (docs/robustness.md).

- every file a supernet + DMAO run writes is safetensors or JSON (the model code in final/ aside); a resume with
  `pickle` and `torch.load` made to raise continues training to the uninterrupted run's weights, bit for bit;
- a planted pickle (or a checkpoint of the old pickled format) is refused, never loaded;
- `--resume_from_checkpoint latest` skips damaged checkpoints (missing, truncated or changed files), saying why;
- a real full disk (a 2 MB tmpfs) gives the documented message whichever file the write fails in, keeps the
  previous checkpoint, and the final save keeps the run's last checkpoint and removes final.tmp/.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import shutil
import subprocess
import textwrap

import pytest
import torch
from accelerate import Accelerator
from conftest import REPO, make_model, run_train, train_in_process
from safetensors.torch import load_file
from test_training import DDP_LAUNCHER

from hf_dynasr import DynaSRForCTC, build_processor
from hf_dynasr.trainer import checkpointing, final
from hf_dynasr.trainer.checkpointing import (DiskFullError, checkpoint_problem, is_disk_full, load_checkpoint,
                                             resolve_checkpoint, save_checkpoint)
from hf_dynasr.trainer.final import write_final
from hf_dynasr.trainer.state_files import TrainingObjects, read_tree

SMOKE = os.path.join(REPO, "training", "configs", "smoke.yaml")
MODEL = {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 96,
         "conv_kernel_size": 15, "frontend_type": "conv2d4x", "frontend_channels": 16, "conv_granularity": "chunk",
         "reference_duration_s": 2.0}
# stage 1 = steps 0-2, masks frozen at step 3, the DMAO event after update 4 (paper 3), checkpoints 2, 4, 6
SUPERNET_DMAO = ["--model", json.dumps(MODEL), "--subnets", json.dumps({"small": 0.5, "mid": 0.75}),
                 "--selection", json.dumps({"method": "ortho_softmax", "criterion": "flops", "stage1_fraction": 0.5}),
                 "--dmao", json.dumps({"events": [0.67], "update_every": 1})]
CHECKPOINT_FILES = {"model.safetensors", "config.json", "trainer_state.json", "manifest.json", "scheduler.json",
                    *(f"{name}.{ext}" for name in ("optimizer", "selector", "dmao", "rng_state_0")
                      for ext in ("json", "safetensors"))}


def _args(corpus, out, *extra):
    return ["--config", SMOKE, "--train_data", f"audiofolder:{corpus}", "--eval_data", f"audiofolder:{corpus}",
            "--max_steps", "6", "--save_steps", "2", "--save_total_limit", "10", "--max_batch_seconds", "8",
            "--logging_steps", "1", *SUPERNET_DMAO, "--output_dir", out, *extra]


@pytest.fixture(scope="module")
def reference(smoke_corpus, tmp_path_factory):
    """An uninterrupted 6-step supernet + DMAO run (one process, in this interpreter)."""
    out = tmp_path_factory.mktemp("checkpoint_safety") / "run"
    train_in_process(_args(smoke_corpus, out))
    return out


def _scan(run_dir) -> dict[str, int]:
    """Load every file of a run folder with safetensors or json; -> counts per suffix. Anything else fails."""
    counts = {}
    for root, _, files in os.walk(run_dir):
        for name in files:
            path = os.path.join(root, name)
            suffix = os.path.splitext(name)[1]
            if suffix == ".safetensors":
                load_file(path)
            elif suffix == ".json":
                with open(path, encoding="utf-8") as f:
                    json.load(f)
            elif suffix == ".jsonl":
                with open(path, encoding="utf-8") as f:
                    [json.loads(line) for line in f]
            else:  # the modelling code save_pretrained copies for trust_remote_code loading, nowhere else
                assert suffix == ".py" and os.path.basename(root) == "final", f"unexpected file {path}"
            counts[suffix] = counts.get(suffix, 0) + 1
    return counts


def _no_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    for module, name in ((pickle, "Unpickler"), (pickle, "load"), (pickle, "loads"), (torch, "load"),
                         (torch.serialization, "load")):
        monkeypatch.setattr(module, name, refuse)


def _copy_run(reference, dest, keep_steps):
    shutil.copytree(reference, dest)
    shutil.rmtree(dest / "final")
    for step in (2, 4, 6):
        if step not in keep_steps:
            shutil.rmtree(dest / "checkpoints" / f"step_{step}")
    return dest


def test_every_file_is_safetensors_or_json_and_resume_never_unpickles(reference, smoke_corpus, tmp_path,
                                                                        monkeypatch):
    counts = _scan(reference)
    assert counts[".safetensors"] >= 3 * 5 + 2 and counts[".json"] >= 3 * 8 + 5
    for step in (2, 4, 6):
        assert set(os.listdir(reference / "checkpoints" / f"step_{step}")) == CHECKPOINT_FILES
    event = json.loads((reference / "dmao_events.jsonl").read_text().splitlines()[0])
    assert event["step"] == 4 and read_tree(str(reference / "checkpoints" / "step_4"), "dmao")["events_done"] == 1
    spec = json.loads((reference / "checkpoints" / "step_4" / "config.json").read_text())["architecture_spec"]
    assert spec != json.loads((reference / "checkpoints" / "step_2" / "config.json").read_text())["architecture_spec"]

    # resumed at step 2 (stage 1): crosses the stage boundary and the DMAO event, writes checkpoints 4 and 6
    resumed = _copy_run(reference, tmp_path / "resumed", keep_steps=(2,))
    _no_unpickling(monkeypatch)
    train_in_process([*_args(smoke_corpus, resumed), "--resume_from_checkpoint", "latest"])
    monkeypatch.undo()
    for folder in ("final", "checkpoints/step_4", "checkpoints/step_6"):
        for name in os.listdir(reference / folder):
            if name.endswith(".safetensors"):  # weights, optimizer moments, selector, DMAO scores, RNG states
                a, b = load_file(reference / folder / name), load_file(resumed / folder / name)
                assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{folder}/{name}"
    assert _scan(resumed) == counts


def _crafted_pickle(marker) -> bytes:
    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    return pickle.dumps(Payload())


def test_a_planted_pickle_or_the_old_pickled_format_is_refused(reference, tmp_path, caplog):
    ckpts = tmp_path / "checkpoints"
    shutil.copytree(reference / "checkpoints", ckpts)
    marker = tmp_path / "code_ran"
    (ckpts / "step_6" / "custom_checkpoint_0.pkl").write_bytes(_crafted_pickle(marker))
    with pytest.raises(ValueError, match=r"cannot resume from .*step_6: it holds custom_checkpoint_0\.pkl, which no "
                                         r"hf_dynasr checkpoint contains; pickled files are never loaded"):
        resolve_checkpoint(str(ckpts), str(ckpts / "step_6"))
    with caplog.at_level(logging.WARNING, logger="hf_dynasr.trainer.checkpointing"):
        assert resolve_checkpoint(str(ckpts), "latest") == str(ckpts / "step_4")
    assert "skipping " + str(ckpts / "step_6") + ": it holds custom_checkpoint_0.pkl" in caplog.text
    # a checkpoint as accelerate's save_state wrote it (before this format): pickles, no manifest
    old = ckpts / "step_4"
    for name in ("optimizer.json", "optimizer.safetensors", "manifest.json"):
        os.remove(old / name)
    (old / "optimizer.bin").write_bytes(_crafted_pickle(marker))
    (old / "random_states_0.pkl").write_bytes(_crafted_pickle(marker))
    assert "it holds optimizer.bin, random_states_0.pkl" in checkpoint_problem(str(old))
    assert resolve_checkpoint(str(ckpts), "latest") == str(ckpts / "step_2")
    assert not marker.exists()
    manifest = json.loads((ckpts / "step_2" / "manifest.json").read_text())
    manifest["files"]["../../etc/passwd"] = {"bytes": 1, "sha256": "0"}  # a manifest naming files elsewhere
    (ckpts / "step_2" / "manifest.json").write_text(json.dumps(manifest))
    assert checkpoint_problem(str(ckpts / "step_2")) == \
        "manifest.json lists '../../etc/passwd', which is not a file of this folder"


def test_latest_falls_back_past_damaged_checkpoints_and_errors_name_the_file(reference, tmp_path, caplog):
    ckpts = tmp_path / "checkpoints"
    shutil.copytree(reference / "checkpoints", ckpts)
    optimizer = ckpts / "step_6" / "optimizer.safetensors"
    size = optimizer.stat().st_size
    with open(optimizer, "r+b") as f:
        f.truncate(size // 2)
    with caplog.at_level(logging.WARNING, logger="hf_dynasr.trainer.checkpointing"):
        assert resolve_checkpoint(str(ckpts), "latest") == str(ckpts / "step_4")
    assert (f"skipping {ckpts / 'step_6'}: optimizer.safetensors has {size // 2} bytes, manifest.json says {size} "
            "(truncated or overwritten)") in caplog.text
    os.remove(ckpts / "step_4" / "model.safetensors")
    with pytest.raises(ValueError, match=r"cannot resume from .*step_4: model\.safetensors is missing$"):
        resolve_checkpoint(str(ckpts), str(ckpts / "step_4"))
    assert resolve_checkpoint(str(ckpts), "latest") == str(ckpts / "step_2")
    state = ckpts / "step_2" / "trainer_state.json"
    state.write_text(state.read_text().replace("{", "[", 1))  # same size, not JSON any more
    with pytest.raises(ValueError, match=r"step_2: trainer_state\.json was changed after the checkpoint was written"):
        resolve_checkpoint(str(ckpts), str(ckpts / "step_2"))
    with pytest.raises(FileNotFoundError, match=r"no complete checkpoint in .*checkpoints \(skipped damaged ones: "
                                                r"step_6: optimizer.safetensors has .*; step_4: model.safetensors is "
                                                r"missing; step_2: trainer_state.json was changed"):
        resolve_checkpoint(str(ckpts), "latest")
    # the readers name the file too (a checkpoint that was never checked, a model folder)
    (ckpts / "step_6" / "scheduler.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"step_6/scheduler\.json is not valid JSON"):
        read_tree(str(ckpts / "step_6"), "scheduler")
    with pytest.raises(FileNotFoundError, match=r"step_4/model\.safetensors is missing: the checkpoint .* is "
                                                r"incomplete"):
        load_checkpoint(str(ckpts / "step_4"), None, TrainingObjects(make_model()))
    make_model().save_pretrained(tmp_path / "model")
    os.remove(tmp_path / "model" / "model.safetensors")
    with pytest.raises(OSError, match=r"model\.safetensors") as err:  # named as missing, whatever the wording
        DynaSRForCTC.from_pretrained(tmp_path / "model")
    assert "pytorch_model.bin" not in str(err.value)


# --- a real full disk -------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (needs root or CAP_SYS_ADMIN; skipped with the reason otherwise)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: a real full disk needs a small tmpfs")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=False,
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a 2 MB tmpfs for a real full disk (needs root or CAP_SYS_ADMIN): "
                    f"{result.stderr.strip()}")
    try:
        yield disk
    finally:  # lazily if a file is still open (a traceback may hold one): never leave the mount behind
        if subprocess.run(["umount", str(disk)], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], check=True)


def _fill(disk, leave: int):
    """Fill `disk` until `leave` bytes are free (a filler file; statvfs, as the tests patch shutil.disk_usage)."""
    stat = os.statvfs(disk)
    with open(disk / "filler", "ab") as f:
        f.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))


def _trained(accelerator):
    model = make_model(hidden_size=48, num_hidden_layers=2, intermediate_size=96)  # about 1.1 MB per checkpoint
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    sum(p.square().sum() for p in model.parameters()).backward()
    optimizer.step()
    return TrainingObjects(model, optimizer)


def _digest(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def test_real_full_disk_while_checkpointing_keeps_the_previous_checkpoint(small_disk, monkeypatch):
    accelerator = Accelerator(cpu=True)
    objects = _trained(accelerator)
    ckpts = small_disk / "checkpoints"
    ckpts.mkdir()
    save_checkpoint(accelerator, str(ckpts), 2, {"step": 2}, objects, keep_last=2)
    before = _digest(ckpts / "step_2")
    size = sum(len(b) for b in before.values())
    assert 2 * size > 2 << 20 > size  # one checkpoint fits on the disk, two do not

    # refused before writing: the free space is below the checkpoint's estimated size
    with pytest.raises(DiskFullError, match=r"disk full while writing checkpoint .*\.tmp-step_4 \(not started: about "
                                            r".* MB needed, .* MB free; the previous checkpoint .*step_2 is intact\)"
                                            r"\. Free space, or lower --save_total_limit, then resume with "
                                            r"--resume_from_checkpoint latest") as err:
        save_checkpoint(accelerator, str(ckpts), 4, {"step": 4}, objects, keep_last=2)
    assert err.value.errno == errno.ENOSPC and sorted(os.listdir(ckpts)) == ["step_2"]

    # the write itself fails (the free-space check told otherwise): in the first file, in the model, in the optimizer
    real_usage = shutil.disk_usage
    monkeypatch.setattr(checkpointing.shutil, "disk_usage", lambda path: real_usage(path)._replace(free=1 << 40))
    for leave in (0, 64 << 10, size // 2):
        _fill(small_disk, leave)
        with pytest.raises(DiskFullError, match=r"disk full while writing checkpoint .*\.tmp-step_4 \(removed; the "
                                                r"previous checkpoint .*step_2 is intact\)") as err:
            save_checkpoint(accelerator, str(ckpts), 4, {"step": 4}, objects, keep_last=2)
        assert "No space left on device" in str(err.value.__cause__), leave  # the real error, chained
        assert sorted(os.listdir(ckpts)) == ["step_2"] and _digest(ckpts / "step_2") == before
        os.remove(small_disk / "filler")
    monkeypatch.undo()
    fresh = _trained(accelerator)
    load_checkpoint(resolve_checkpoint(str(ckpts), "latest"), accelerator, fresh)
    assert all(torch.equal(a, b) for a, b in zip(fresh.model.state_dict().values(),
                                                 objects.model.state_dict().values()))

    # torch.save on a full disk raises its stream writer's error, not ENOSPC: still recognised as a full disk
    _fill(small_disk, 0)
    with pytest.raises(RuntimeError, match="unexpected pos|file write failed") as err:
        torch.save({"x": torch.zeros(1 << 18)}, small_disk / "x.bin")
    assert is_disk_full(err.value, str(small_disk))
    assert not is_disk_full(PermissionError(errno.EACCES, "read-only"), str(small_disk))


def test_final_save_on_a_full_disk_keeps_the_last_checkpoint_and_removes_final_tmp(small_disk, monkeypatch):
    accelerator = Accelerator(cpu=True)
    objects = _trained(accelerator)
    processor = build_processor()
    out = small_disk
    ckpts = out / "checkpoints"
    _fill(out, 0)
    with pytest.raises(DiskFullError, match=r"final model .*final\.tmp \(not started: [^;]*; the run wrote no "
                                            r"checkpoint \(--save_steps 0\)\)\. Free space and train again"):
        write_final(str(out), objects.model, processor, None, {"steps": 2}, str(ckpts))
    os.remove(out / "filler")
    ckpts.mkdir()
    save_checkpoint(accelerator, str(ckpts), 2, {"step": 2}, objects, keep_last=2)
    kept = _digest(ckpts / "step_2")
    message = (r"disk full while writing the final model .*final\.tmp \((removed|not started: .*); the run's last "
               r"checkpoint .*step_2 is intact\)\. Free space, then run the same command with "
               r"--resume_from_checkpoint latest")
    _fill(out, 200_000)
    with pytest.raises(DiskFullError, match=message.replace("(removed|", "(")):  # refused before writing
        write_final(str(out), objects.model, processor, None, {"steps": 2}, str(ckpts))
    _fill(out, 0)
    real_usage = shutil.disk_usage
    monkeypatch.setattr(final.shutil, "disk_usage", lambda path: real_usage(path)._replace(free=1 << 40))
    with pytest.raises(DiskFullError, match=message.replace("|not started: .*", "")) as err:
        write_final(str(out), objects.model, processor, None, {"steps": 2}, str(ckpts))
    assert "No space left on device" in str(err.value.__cause__)
    assert sorted(os.listdir(out)) == ["checkpoints", "filler"] and _digest(ckpts / "step_2") == kept
    monkeypatch.undo()
    os.remove(out / "filler")
    shutil.rmtree(ckpts)  # space freed: the same call writes final/
    write_final(str(out), objects.model, processor, None, {"steps": 2}, str(ckpts))
    assert (out / "final" / "model.safetensors").is_file() and not (out / "final.tmp").exists()


# --- 2-process DDP ----------------------------------------------------------------------------------------------
def test_two_process_checkpoints_resume_bitwise(smoke_corpus, tmp_path):
    """2-process CPU DDP supernet + DMAO: per-rank RNG files; a resume from step 2 ends on the same weights."""
    ref, resumed = tmp_path / "ref", tmp_path / "resumed"
    env = {"ACCELERATE_USE_CPU": "1"}
    run_train([*_args(smoke_corpus, ref), "--num_processes", "2"], launcher=DDP_LAUNCHER, env=env)
    names = set(os.listdir(ref / "checkpoints" / "step_4"))
    assert names == CHECKPOINT_FILES | {"rng_state_1.json", "rng_state_1.safetensors"}
    _scan(ref)
    _copy_run(ref, resumed, keep_steps=(2,))
    result = run_train([*_args(smoke_corpus, resumed), "--num_processes", "2", "--resume_from_checkpoint", "latest"],
                       launcher=DDP_LAUNCHER, env=env)
    assert "at step 2" in result.stderr
    a, b = load_file(ref / "final" / "model.safetensors"), load_file(resumed / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


ONE_RANK_FAILS = textwrap.dedent("""
    import sys

    import torch
    from accelerate import Accelerator
    from conftest import make_model

    from hf_dynasr.trainer import checkpointing, state_files

    accelerator = Accelerator(cpu=True)
    model = make_model()
    model, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    objects = state_files.TrainingObjects(accelerator.unwrap_model(model), optimizer)
    checkpointing.save_checkpoint(accelerator, sys.argv[1], 2, {"step": 2}, objects, keep_last=2)
    if accelerator.process_index == 1:  # this rank cannot write its RNG state
        def unwritable(*args, **kwargs):
            raise PermissionError(13, "Permission denied", "rng_state_1.json")

        checkpointing.write_training_state = unwritable
    try:
        checkpointing.save_checkpoint(accelerator, sys.argv[1], 4, {"step": 4}, objects, keep_last=2)
    except Exception as err:
        print(f"rank {accelerator.process_index}: {type(err).__name__}: {err}", flush=True)
    accelerator.wait_for_everyone()
""")


def test_a_write_failing_on_one_rank_stops_every_rank(tmp_path):
    """2-process DDP: rank 1 cannot write its part; both ranks raise (none waits forever), nothing is renamed."""
    script, folder = tmp_path / "one_rank_fails.py", tmp_path / "checkpoints"
    script.write_text(ONE_RANK_FAILS)
    folder.mkdir()
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([os.path.join(REPO, "tests"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([*DDP_LAUNCHER, str(script), str(folder)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 1: PermissionError: [Errno 13] Permission denied: 'rng_state_1.json'" in result.stdout
    assert (f"rank 0: RuntimeError: writing checkpoint {folder / '.tmp-step_4'} failed on another process (its log "
            "says why); the folder was removed and the previous checkpoints are intact") in result.stdout
    assert sorted(os.listdir(folder)) == ["step_2"] and checkpoint_problem(str(folder / "step_2")) is None
