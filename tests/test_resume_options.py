"""Options: counts and rates out of range are refused at parse time; a resume either keeps every option that
shapes training and ends bitwise where the uninterrupted run ends, or is refused naming the option (property
test over resume points and option changes); a NaN micro-batch under gradient accumulation drops only its own
contribution (docs/robustness.md)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile

import pytest
import torch
from conftest import REPO, corpus_subset, train_in_process
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from scaled_loss_run import ScaleLoss
from test_training import DDP_LAUNCHER

from hf_dynasr.trainer import parse_args
from hf_dynasr.trainer.options import TRAJECTORY_OPTIONS, TrainArgs

SMOKE = os.path.join(REPO, "training", "configs", "smoke.yaml")


@pytest.fixture(scope="module")
def corpus(smoke_corpus, tmp_path_factory):
    """12 training and 2 dev utterances of the smoke corpus."""
    root = tmp_path_factory.mktemp("options_corpus")
    return corpus_subset(smoke_corpus, root, {"train": 12, "dev": 2})


def _args(corpus, out, *extra, steps=6):
    return ["--config", SMOKE, "--train_data", f"audiofolder:{corpus}", "--eval_data", f"audiofolder:{corpus}",
            "--output_dir", out, "--max_steps", steps, "--save_steps", "2", "--save_total_limit", "10",
            "--max_batch_seconds", "8", "--logging_steps", "1", "--max_eval_utterances", "2", *extra]


def _weights(run_dir):
    return load_file(os.path.join(run_dir, "final", "model.safetensors"))


def _read(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- parse time ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option, value, allowed", [
    ("logging_steps", "0", "must be >= 1"), ("gradient_accumulation_steps", "0", "must be >= 1"),
    ("max_steps", "-5", "must be >= 1"), ("save_steps", "-1", "must be >= 0 (0 = no periodic checkpoint)"),
    ("max_batch_seconds", "0.0", "must be > 0"), ("learning_rate", "nan", "must be > 0"),
    ("adam_beta2", "1.0", "must be > 0 and < 1"), ("per_device_eval_batch_size", "0", "must be >= 1"),
])
def test_out_of_range_counts_are_refused_at_parse_time(option, value, allowed):
    with pytest.raises(SystemExit, match=re.escape(f"error: --{option} is {value} but {allowed}")):
        parse_args(["--config", SMOKE, f"--{option}", value])


def test_max_steps_negative_writes_nothing(tmp_path):
    with pytest.raises(SystemExit, match="--max_steps is -5 but must be >= 1"):
        train_in_process(["--config", SMOKE, "--output_dir", tmp_path / "run", "--max_steps", "-5"])
    assert not (tmp_path / "run").exists()


def test_help_names_the_options_a_resume_must_keep():
    help_text = TrainArgs.__dataclass_fields__["resume_from_checkpoint"].metadata["help"]
    assert all(name in help_text for name in TRAJECTORY_OPTIONS)


# --- gradient accumulation with a NaN micro-batch -------------------------------------------------------------


@pytest.mark.parametrize("last", [False, True], ids=["first_of_two", "last_of_two"])
def test_a_nan_micro_batch_drops_only_its_own_contribution(corpus, tmp_path, last):
    """Accumulation 2: the first (or the last) micro-batch of update 2 is NaN. The run must end bitwise where a run whose
    micro-batch has a zero loss (no contribution, every other one kept) ends, with every update made."""
    common = ["--gradient_accumulation_steps", "2", "--save_steps", "0"]
    train_in_process(_args(corpus, tmp_path / "zero", *common, steps=3), [ScaleLoss(1, last, 0.0)])
    train_in_process(_args(corpus, tmp_path / "nan", *common, steps=3), [ScaleLoss(1, last, float("nan"))])
    assert _same(_weights(tmp_path / "zero"), _weights(tmp_path / "nan"))
    results = json.loads((tmp_path / "nan" / "final" / "training_results.json").read_text())
    assert results["steps"] == 3 and results["nonfinite_steps_skipped"] == 1
    assert [h["step"] for h in results["history"]] == [1, 2, 3]
    assert all(h["loss/full"] == h["loss/full"] for h in results["history"])  # no NaN logged


def test_a_nan_micro_batch_under_two_process_accumulation(corpus, tmp_path):
    """The same under 2-process DDP, the NaN in the last micro-batch of update 1 (whose backward DDP needs):
    the kept gradients are averaged over the processes as DDP would have, bitwise, on both ranks alike."""
    common = ["--gradient_accumulation_steps", "2", "--save_steps", "0", "--num_processes", "2"]
    script = os.path.join(REPO, "tests", "scaled_loss_run.py")
    env = {"OMP_NUM_THREADS": "1", **os.environ, "ACCELERATE_USE_CPU": "1"}
    for name, factor in (("zero", "0"), ("nan", "nan")):
        args = [str(a) for a in _args(corpus, tmp_path / name, *common, steps=3)]
        done = subprocess.run([*DDP_LAUNCHER, script, "0", "last", factor, *args], cwd=REPO, env=env,
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-4000:]
    assert _same(_weights(tmp_path / "zero"), _weights(tmp_path / "nan"))
    assert "step 0: non-finite loss" in done.stderr and "micro-batch dropped, the update keeps the others" in done.stderr
    results = _read(tmp_path / "nan" / "final" / "training_results.json")
    assert results["steps"] == 3 and results["nonfinite_steps_skipped"] == 1
    assert results["rank_weight_checksums"][0] == results["rank_weight_checksums"][1]


# --- resume with changed options ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """An uninterrupted 6-update run with checkpoints at 2, 4 and 6."""
    out = tmp_path_factory.mktemp("resume_reference") / "run"
    train_in_process(_args(corpus, out))
    return out


#: option -> (new value, whether a resume honours it)
CHANGES = {
    None: (None, True),
    "logging_steps": ("2", True), "eval_steps": ("3", True), "save_total_limit": ("1", True),
    "max_nonfinite_steps": ("3", True), "gradient_checkpointing": ("true", True),
    "learning_rate": ("0.5", False), "seed": ("1", False), "max_steps": ("8", False),
    "max_batch_seconds": ("6", False), "spec_augment": ("true", False), "gradient_accumulation_steps": ("2", False),
    "model": (json.dumps({"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                          "intermediate_size": 64, "frontend_type": "conv2d4x", "frontend_channels": 8}), False),
}


def _stopped_copy(reference, at: int) -> str:
    """A copy of the reference run as it was when stopped right after checkpoint `at`."""
    out = os.path.join(tempfile.mkdtemp(dir=os.path.dirname(reference)), "run")
    shutil.copytree(reference, out)
    shutil.rmtree(os.path.join(out, "final"))
    for name in os.listdir(os.path.join(out, "checkpoints")):
        if int(name.removeprefix("step_")) > at:
            shutil.rmtree(os.path.join(out, "checkpoints", name))
    return out


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(at=st.sampled_from([2, 4]), option=st.sampled_from(list(CHANGES)))
def test_resume_is_bitwise_or_refused_naming_the_option(corpus, reference, at, option):
    out = _stopped_copy(str(reference), at)
    value, honoured = CHANGES[option]
    event(f"{'honoured' if honoured else 'refused'}")
    args = _args(corpus, out, "--resume_from_checkpoint", "latest", *([f"--{option}", value] if option else []))
    before = _read(os.path.join(out, "training_args.json"))
    if honoured:
        train_in_process(args)
        assert _same(_weights(reference), _weights(out)), (option, at)
        after = _read(os.path.join(out, "training_args.json"))
        if option:
            assert str(after[option]).lower() == value  # the value the run used is the one recorded
    else:
        with pytest.raises(SystemExit) as exc:
            train_in_process(args)
        message = str(exc.value.code)
        assert message.startswith(f"error: --{option} is ") and "was trained with" in message, message
        assert os.path.join(out, "checkpoints", f"step_{at}") in message
        assert _read(os.path.join(out, "training_args.json")) == before
        assert not os.path.exists(os.path.join(out, "final"))
    shutil.rmtree(os.path.dirname(out))


def test_resume_refuses_another_process_count_or_precision(corpus, reference, monkeypatch):
    out = _stopped_copy(str(reference), 4)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(SystemExit, match=r"mixed_precision bf16 but the checkpoint .*step_4 was trained with no; "
                                         r"pass --mixed_precision no"):
        train_in_process(_args(corpus, out, "--resume_from_checkpoint", "latest"))
    shutil.rmtree(os.path.dirname(out))
