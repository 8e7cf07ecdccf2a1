"""`--dry_run`: the paper recipes build and run a stage-1 and a stage-2 update on a synthetic batch without their
data (the Hub corpora they name cannot be reached here) and without a run folder; a broken recipe fails with its
usual error before anything trains."""

import math
import os

import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import REPO, run_train
from test_training import DDP_LAUNCHER, SMOKE

from hf_dynasr.trainer.dry_run import FlopCount, dry_run
from hf_dynasr.trainer.options import parse_args

CONFIGS = os.path.join(REPO, "training", "configs")
#: config -> (sizes, whether a selector learns their masks)
PAPER = {"librispeech_960h.yaml": ["small", "medium"], "tedlium2.yaml": ["small", "medium"],
         "tedlium2_simple_top_k.yaml": ["small", "medium"], "librispeech_960h_dmao.yaml": []}


def _dry_run(config, tmp_path, *extra):
    args = parse_args(["--config", os.path.join(CONFIGS, config), "--dry_run", "--max_batch_seconds", "4",
                       "--output_dir", str(tmp_path / "run"), *extra])
    try:
        return dry_run(args)
    finally:
        AcceleratorState._reset_state(True)  # accelerate's process-wide singletons (see conftest.train_in_process)


@pytest.mark.parametrize("config", PAPER)
def test_paper_recipe_dry_run(config, tmp_path):
    report = _dry_run(config, tmp_path)
    sizes = PAPER[config]
    assert report.batch["utterances"] == 1 and report.batch["audio_seconds"] == 4.0  # --max_batch_seconds 4
    assert report.batch["frames"] == 400 and report.batch["num_mel_bins"] == 80
    assert report.batch["label_length"] == 4 * 15
    first, second = report.updates
    if sizes:  # stage 1: the whole network and one soft-gated size; stage 2: the sandwich of frozen sizes
        assert (first.stage, first.step, second.stage) == (1, 0, 2) and second.step > 0
        assert first.nets[0] == "full" and first.nets[1] in sizes and "loss/regularizer" in first.losses
        assert second.nets == ["full", *sizes]
    else:
        assert [u.nets for u in report.updates] == [["full"], ["full"]]
    per_second = report.parameters["whole_network_flops"] / report.parameters["reference_duration_s"]
    for update in report.updates:
        assert all(math.isfinite(v) for v in update.losses.values())
        assert update.seconds > 0
        # forward + backward is about 3x the forward FLOPs of the nets run (the cost model's, linear in time),
        # a little less as the frontend runs once for all nets; a stage-1 size is soft-gated at full width, a
        # stage-2 size costs its frozen mask
        nets = 1 + sum(1.0 if update.stage == 1 else report.sizes[n]["flops"] / report.parameters["whole_network_flops"]
                       for n in update.nets[1:])
        assert 2.0 < update.flops / (nets * per_second * 4.0) < 3.5
    assert list(report.sizes) == sizes
    whole = report.parameters["whole_network"]
    assert 20e6 < whole < 200e6 and report.parameters["trainable"] >= whole
    for entry in report.sizes.values():  # masks frozen at the stage boundary
        assert 0 < entry["num_parameters"] < whole and 0 < entry["flops"]
        assert 0 < entry["fraction"] < 1
    assert report.peak_memory_bytes > 100 * 2**20
    assert not (tmp_path / "run").exists()  # no run folder


@pytest.mark.parametrize("groups", [1, 4, 64])
def test_flop_counter_counts_a_backward_as_two_forwards(groups):
    """Input and weight gradients each cost one forward convolution, also for a depthwise (grouped)
    convolution, which torch's own FlopCounterMode counts `channels` times too high in the backward."""
    conv = torch.nn.Conv1d(64, 64, 31, padding=15, groups=groups)
    x = torch.randn(2, 64, 100, requires_grad=True)
    with FlopCount() as forward:
        conv(x)
    with FlopCount() as both:
        conv(x).sum().backward()
    assert forward.flops == 2 * 2 * 100 * 64 * (64 // groups) * 31
    assert both.flops == 3 * forward.flops


def test_dry_run_command_prints_the_figures_and_writes_nothing(tmp_path):
    result = run_train(["--config", os.path.join(CONFIGS, "tedlium2_simple_top_k.yaml"), "--dry_run",
                        "--max_batch_seconds", "4", "--gradient_checkpointing", "--output_dir", tmp_path / "run"])
    out = result.stdout
    assert "gradient checkpointing on" in out and "batch per process: 1 x 4 s = 4 s of audio" in out
    assert "update 0 (stage 1: full + " in out and "(stage 2: full + small + medium)" in out
    assert "FLOPs forward+backward" in out and "peak memory:" in out and "frozen mask:" in out
    assert not (tmp_path / "run").exists()


# the recipe's selection without paper_rest_share: fractions of this model's own FLOPs, checked against its own rest
NO_PAPER_SHARE = ('{"method": "ortho_softmax", "criterion": "flops", "stage1_fraction": 0.6, "loss_weight": "focal", '
                  '"tau0": 2.0, "orth_norm": "L2_sqrt"}')
BROKEN = [
    (["--selection", '{"method": "ortho_softmax", "tau_0": 2.0}'], r"unknown selection option\(s\) \['tau_0'\]"),
    (["--subnets", '{"small": {"target": 1e15, "criterion": "flops"}}'],
     r"subnets.small: target 1e\+15 is .* of the whole network's flops .*; a subnet must be smaller"),
    (["--subnets", '{"small": {"fraction": 0.05, "criterion": "flops"}}', "--selection", NO_PAPER_SHARE],
     r"size 'small' \(fraction 0.05\) is not above the never-pruned rest of the model"),
    (["--subnets", '{"small": {"fraction": 0.05, "criterion": "flops"}}'],
     r"size fraction 0.05 is not above the paper's never-pruned share 0.177 \(selection.paper_rest_share\)"),
    (["--model", '{"hidden_size": 500, "num_attention_heads": 8}'], "num_attention_heads=8 does not divide"),
]


@pytest.mark.parametrize("extra,message", BROKEN, ids=["bad_option", "size_too_large", "size_too_small",
                                                       "size_below_paper_share", "bad_model"])
def test_broken_recipe_fails_before_training(extra, message, tmp_path):
    # train_data that does not exist: the error must be the recipe's, found before any data is read
    with pytest.raises((SystemExit, ValueError), match=message):
        _dry_run("librispeech_960h.yaml", tmp_path, "--train_data", f"audiofolder:{tmp_path / 'missing'}", *extra)
    assert not (tmp_path / "run").exists()


def test_broken_recipe_fails_on_the_command_line(tmp_path):
    result = run_train(["--config", os.path.join(CONFIGS, "tedlium2.yaml"), "--dry_run", "--output_dir",
                        tmp_path / "run", "--subnets", '{"small": 0.0}', "--selection", NO_PAPER_SHARE], check=False)
    assert result.returncode != 0
    assert "subnets.small: target 0 is 0.000 of the whole network's" in result.stderr
    assert "a subnet must be smaller than the whole network and larger than 0" in result.stderr
    assert not (tmp_path / "run").exists()


def test_dry_run_under_ddp_with_gradient_checkpointing_trains_like_one_plain_process(tmp_path):
    """2 CPU processes (gloo DDP), every block checkpointed: DDP sees each block run by several nets per
    step and recomputed in the backward. No dropout and the same batch on both ranks, so the averaged
    gradients equal one process's: the losses of the stage-2 update (after a stage-1 update) match."""
    common = ["--config", SMOKE, "--dry_run", "--max_batch_seconds", "3", "--output_dir", tmp_path / "run",
              "--subnets", '{"small": 0.4, "mid": 0.7}']
    ddp = run_train([*common, "--gradient_checkpointing", "--num_processes", "2"], launcher=DDP_LAUNCHER,
                    env={"ACCELERATE_USE_CPU": "1"})
    plain = run_train(common)
    assert "x 2 process(es), gradient checkpointing on" in ddp.stdout
    assert "x 1 process(es), gradient checkpointing off" in plain.stdout

    def updates(out):
        return [line.split(" s; losses ")[1] for line in out.splitlines() if line.startswith("update ")]

    assert len(updates(ddp.stdout)) == 2 and updates(ddp.stdout) == updates(plain.stdout)
    assert not (tmp_path / "run").exists()
