"""training/train.py end to end on a real synthesized corpus: learning, 2-process DDP, resume, bad input; the
options of every config in training/configs/."""

import glob
import json
import os
import random
import shutil
import sys

import pytest
import torch
from conftest import REPO, run_train
from safetensors.torch import load_file

from hf_dynasr.dmao import DMAOConfig
from hf_dynasr.selection import METHODS, SelectionConfig
from hf_dynasr.trainer import TrainArgs, parse_args
from hf_dynasr.trainer.supernet_step import plan_step, step_rng, step_seed

SMOKE = os.path.join(REPO, "training", "configs", "smoke.yaml")
#: one rendezvous port per pytest-xdist worker (gw0, gw1, ...; scripts/test.sh runs the suite on every core), so
#: two DDP runs of different workers never share one
_XDIST_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
DDP_LAUNCHER = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(29500 + 11 * _XDIST_WORKER)]


def _data_args(corpus):
    return ["--train_data", f"audiofolder:{corpus}", "--eval_data", f"audiofolder:{corpus}"]


def _results(run_dir):
    with open(os.path.join(run_dir, "final", "training_results.json")) as f:
        return json.load(f)


def _weights(run_dir):
    return load_file(os.path.join(run_dir, "final", "model.safetensors"))


def test_tiny_training_learns(smoke_corpus, tmp_path):
    out = tmp_path / "run"
    run_train(["--config", SMOKE, "--output_dir", out, *_data_args(smoke_corpus), "--max_steps", "40",
               "--save_steps", "0", "--logging_steps", "1", "--max_batch_seconds", "12",
               "--learning_rate", "3e-3", "--warmup_fraction", "0.1", "--decay_fraction", "0.8"])
    history = _results(out)["history"]
    first = sum(h["loss/full"] for h in history[:3]) / 3
    last = sum(h["loss/full"] for h in history[-3:]) / 3
    assert last < 0.75 * first, (first, last)
    final = out / "final"
    for name in ("config.json", "model.safetensors", "processor_config.json", "vocab.json", "tokenizer_config.json"):
        assert (final / name).is_file(), name
    data_report = json.loads((out / "data_report.json").read_text())
    assert data_report["train"]["total_kept"] > 0


def test_two_process_ddp_on_cpu(smoke_corpus, tmp_path):
    """ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2: gloo DDP, same weights on both."""
    out = tmp_path / "ddp"
    run_train(["--config", SMOKE, "--output_dir", out, *_data_args(smoke_corpus), "--max_steps", "12",
               "--save_steps", "0", "--logging_steps", "1", "--num_processes", "2"],
              launcher=DDP_LAUNCHER, env={"ACCELERATE_USE_CPU": "1"})
    results = _results(out)
    assert results["num_processes"] == 2
    checksums = results["rank_weight_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    history = results["history"]
    assert history[-1]["loss/full"] < history[0]["loss/full"]


def test_two_process_supernet_makes_the_same_choices_on_both_ranks(smoke_corpus, tmp_path):
    """Stage 1 and stage 2 subnet choices of every batch go into a per-process digest; the digests of both
    processes are compared at every logging step (here every step) and at the end."""
    out = tmp_path / "ddp_supernet"
    run_train(["--config", SMOKE, "--output_dir", out, *_data_args(smoke_corpus), "--max_steps", "8",
               "--save_steps", "0", "--logging_steps", "1", "--num_processes", "2",
               "--subnets", '{"small": 0.5, "mid": 0.75}',
               "--selection", '{"method": "ortho_softmax", "criterion": "flops", "stage1_fraction": 0.5}'],
              launcher=DDP_LAUNCHER, env={"ACCELERATE_USE_CPU": "1"})
    results = _results(out)
    choices = results["subnet_choices"]
    assert choices["batches"] == 8 and choices["checks"] == 8 + 1
    digests = choices["rank_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    nets = [h["nets"].split(",") for h in results["history"]]
    assert len(nets) == 8
    assert all(n[0] == "full" and len(n) == 2 and n[1] in ("small", "mid") for n in nets[:4])  # stage 1: + a soft size
    assert all(n[:2] == ["full", "small"] for n in nets[4:])  # stage 2: full + smallest + ...
    checksums = results["rank_weight_checksums"]
    assert checksums[0] == checksums[1]


def test_two_process_dmao_reshape_keeps_ranks_identical(smoke_corpus, tmp_path):
    out = tmp_path / "ddp_dmao"
    model = {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 96,
             "conv_kernel_size": 15, "frontend_type": "conv2d4x", "frontend_channels": 16,
             "conv_granularity": "chunk", "reference_duration_s": 2.0}
    run_train(["--config", SMOKE, "--output_dir", out, *_data_args(smoke_corpus), "--max_steps", "8",
               "--save_steps", "0", "--num_processes", "2", "--model", json.dumps(model),
               "--dmao", '{"events": [0.5], "update_every": 1}'],
              launcher=DDP_LAUNCHER, env={"ACCELERATE_USE_CPU": "1"})
    events = [json.loads(line) for line in (out / "dmao_events.jsonl").read_text().splitlines()]
    assert len(events) == 1 and events[0]["before"] != events[0]["after"]
    results = _results(out)
    checksums = results["rank_weight_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["architecture_spec"] == events[0]["after"]


def test_process_count_is_checked(smoke_corpus, tmp_path):
    result = run_train(["--config", SMOKE, "--output_dir", tmp_path / "x", *_data_args(smoke_corpus),
                        "--num_processes", "2"], check=False)
    assert result.returncode != 0
    assert "1 process(es) joined the run but 2 were requested" in result.stderr
    assert "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu" in result.stderr


def test_resume_continues_to_the_same_weights(smoke_corpus, tmp_path):
    full = tmp_path / "full"
    common = ["--config", SMOKE, *_data_args(smoke_corpus), "--max_steps", "8", "--save_steps", "4",
              "--spec_augment", "true", "--max_batch_seconds", "10"]
    run_train([*common, "--output_dir", full])
    # "stop" after the step-4 checkpoint: a copy of the run that never got further
    stopped = tmp_path / "stopped"
    shutil.copytree(full, stopped)
    shutil.rmtree(stopped / "final")
    shutil.rmtree(stopped / "checkpoints" / "step_8")
    state = json.loads((stopped / "checkpoints" / "step_4" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["batches_in_epoch"] > 0
    result = run_train([*common, "--output_dir", stopped, "--resume_from_checkpoint", "latest"])
    assert "resumed from" in result.stderr and "at step 4" in result.stderr
    a, b = _weights(full), _weights(stopped)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_input_is_refused_clearly(smoke_corpus, tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("max_steps: 2\nlearning_rat: 0.1\n")
    result = run_train(["--config", bad_yaml, "--output_dir", tmp_path / "a"], check=False)
    assert result.returncode != 0 and "unknown key(s) ['learning_rat']" in result.stderr
    # an output folder holding a previous run is refused without --overwrite_output_dir
    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "keep.txt").write_text("mine")
    result = run_train(["--config", SMOKE, "--output_dir", previous, *_data_args(smoke_corpus)], check=False)
    assert result.returncode != 0 and "holds a previous run" in result.stderr
    assert (previous / "keep.txt").read_text() == "mine"
    result = run_train(["--config", SMOKE, "--output_dir", tmp_path / "b", *_data_args(smoke_corpus),
                        "--resume_from_checkpoint", "latest"], check=False)
    assert result.returncode != 0 and "no complete checkpoint" in result.stderr


@pytest.mark.parametrize("case", ["missing_file", "stereo_8k", "empty_transcript"])
def test_training_survives_bad_examples(smoke_corpus, tmp_path, case):
    """Bad rows in the training data are converted or skipped and counted, never fatal."""
    import numpy as np
    import soundfile as sf

    corpus = tmp_path / "corpus"
    shutil.copytree(smoke_corpus, corpus)
    meta = corpus / "train" / "metadata.csv"
    lines = meta.read_text().splitlines()
    header, first = lines[0], lines[1].split(",")
    if case == "missing_file":
        os.remove(corpus / "train" / first[0])
        expected = "missing_audio"
    elif case == "stereo_8k":
        mono, rate = sf.read(corpus / "train" / first[0], dtype="float32")
        stereo = np.stack([mono, 0.5 * mono], axis=1)[::2]  # 8 kHz stereo of the same sentence
        sf.write(corpus / "train" / first[0], stereo, rate // 2, format="FLAC")
        expected = None
    else:
        first[1] = ""
        lines[1] = ",".join(first)
        meta.write_text("\n".join(lines) + "\n")
        expected = "empty_transcript"
    out = tmp_path / "run"
    run_train(["--config", SMOKE, "--output_dir", out, "--train_data", f"audiofolder:{corpus}",
               "--eval_data", f"audiofolder:{corpus}", "--max_steps", "2", "--save_steps", "0"])
    report = json.loads((out / "data_report.json").read_text())["train"]
    if expected is None:
        assert report["total_dropped"] == 0
    else:
        assert report["total_dropped"] == 1 and report["counts"][expected] == 1, report
        if expected == "missing_audio":
            assert first[0] in str(report["examples"][expected])
    assert header.startswith("file_name")


CONFIGS = sorted(glob.glob(os.path.join(REPO, "training", "configs", "**", "*.yaml"), recursive=True))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, os.path.join(REPO, "training", "configs")))
def test_every_config_parses_into_typed_options(path):
    args = parse_args(["--config", path])
    assert isinstance(args, TrainArgs)
    selection = args.selection_config()
    assert isinstance(selection, SelectionConfig)
    assert set(args.selection) <= set(selection.allowed_keys())
    if args.subnets:
        assert selection.method in METHODS
    assert (args.dmao_config() is None) == (not args.dmao)
    if args.dmao:
        assert isinstance(args.dmao_config(), DMAOConfig)


def test_bad_selection_and_dmao_options_are_refused_with_the_allowed_keys(monkeypatch):
    smoke = ["--config", SMOKE]
    with pytest.raises(SystemExit, match=r"error: selection: unknown selection option\(s\) \['tauO'\] for method "
                                         r"'ortho_softmax'; allowed keys: method, criterion, .*, tau0"):
        parse_args([*smoke, "--selection", '{"method": "ortho_softmax", "tauO": 1.0}'])
    with pytest.raises(SystemExit, match="error: selection: unknown selection.method 'lottery'; allowed: simple_top_k, "
                                         "iterative_zero_out, ortho_softmax, fixed"):
        parse_args([*smoke, "--selection", '{"method": "lottery"}'])
    with pytest.raises(SystemExit, match=r"error: dmao: rho must be in \(0, 1\)"):
        parse_args([*smoke, "--dmao", '{"rho": 2.0}'])
    # hf_dynasr.trainer.main() without arguments (the dynasr-train command) reads the command line
    monkeypatch.setattr(sys, "argv", ["dynasr-train", *smoke, "--max_steps", "3"])
    assert parse_args().max_steps == 3


def test_one_per_step_seed_formula():
    """step_seed is the one formula behind the subnet draws, LayerDrop and each batch's torch seed; its values
    must never change (resumed runs are compared bitwise with uninterrupted ones)."""
    assert step_seed(0, 7) == 7 and step_seed(3, 5) == 3 * 1_000_003 + 5
    assert step_rng(3, 5).random() == random.Random(3 * 1_000_003 + 5).random()
    sizes = ["a", "b", "c", "d"]
    for step in range(20):  # stage 2: the third net is drawn by step_rng(seed, step)
        middle = sizes[1 + random.Random(3 * 1_000_003 + step).randrange(3)]
        assert [r.subnet for r in plan_step(step, sizes, stage1_steps=0, seed=3)] == ["full", "a", middle]
