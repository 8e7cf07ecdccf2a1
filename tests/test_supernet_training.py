"""Supernet training end to end: every method and granularity gives a checkpoint whose every size
loads by name and transcribes; budgets hold; resume in stage 1, at the boundary and in stage 2 is exact."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import run_train, train_in_process
from safetensors.torch import load_file
from test_training import SMOKE, _data_args
from transformers import AutoModelForCTC, AutoProcessor, pipeline

import hf_dynasr  # noqa: F401  (registers the Auto classes)

SIZES = {"small": 0.5, "mid": 0.75}


def _supernet_args(method, granularity, criterion, steps=8):
    model = {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 96,
             "conv_kernel_size": 15, "frontend_type": "conv2d4x", "frontend_channels": 16,
             "granularity": granularity, "reference_duration_s": 2.0}
    return ["--max_steps", str(steps), "--model", json.dumps(model), "--subnets", json.dumps(SIZES),
            "--selection", json.dumps({"method": method, "criterion": criterion, "stage1_fraction": 0.5,
                                       "layerdrop_stage2": 0.2})]


@pytest.mark.parametrize("method,granularity,criterion", [
    ("simple_top_k", "module", "params"),
    ("iterative_zero_out", "module", "params"),
    ("ortho_softmax", "module", "flops"),
    ("ortho_softmax", "component", "flops"),
    ("ortho_softmax", "component", "params"),
    ("simple_top_k", "component", "flops"),
])
def test_every_method_gives_loadable_nested_sizes(smoke_corpus, tmp_path, method, granularity, criterion):
    out = tmp_path / "run"
    train_in_process(["--config", SMOKE, "--output_dir", out, *_data_args(smoke_corpus), "--save_steps", "0",
                      "--logging_steps", "1", *_supernet_args(method, granularity, criterion)])
    final = out / "final"
    config = json.loads((final / "config.json").read_text())
    subnets = config["subnets"]
    assert set(subnets) == set(SIZES)
    small, mid = set(subnets["small"]["components"]), set(subnets["mid"]["components"])
    assert small < mid  # nested, binary (ids), smaller than the full net
    supernet = AutoModelForCTC.from_pretrained(final)
    costs = supernet.component_costs()
    per_component, total = costs.of(criterion)
    rest = total - sum(per_component)
    for name, fraction in SIZES.items():
        kept = rest + sum(per_component[i] for i in subnets[name]["components"])
        assert abs(kept - fraction * total) <= max(per_component), (name, kept, fraction * total)
    audio = np.sin(np.arange(16000, dtype=np.float32) / 7.0) * 0.1
    processor = AutoProcessor.from_pretrained(final)
    for name in SIZES:
        compact = AutoModelForCTC.from_pretrained(final, subnet=name)
        assert compact.config.active_subnet == name
        assert compact.num_parameters() == subnets[name]["num_parameters"]
        asr = pipeline("automatic-speech-recognition", model=compact, tokenizer=processor.tokenizer,
                       feature_extractor=processor.feature_extractor)
        assert isinstance(asr(audio)["text"], str)
    results = json.loads((final / "training_results.json").read_text())
    assert set(results["eval"]) == {"full", "small", "mid"}
    assert (final / "selector.safetensors").is_file()
    # stage 1 ran the full net plus one soft subnet; stage 2 the sandwich (full, smallest, the other)
    nets = [h["nets"].split(",") for h in results["history"]]  # logged at every step
    assert len(nets) == 8
    assert all(n[0] == "full" and len(n) == 2 for n in nets[:4])
    assert all(n == ["full", "small", "mid"] for n in nets[4:])


def test_resume_in_stage1_at_the_boundary_and_in_stage2(smoke_corpus, tmp_path):
    full = tmp_path / "full"
    common = ["--config", SMOKE, *_data_args(smoke_corpus), "--save_steps", "2", "--save_total_limit", "10",
              "--max_batch_seconds", "10", *_supernet_args("ortho_softmax", "component", "flops", steps=8)]
    run_train([*common, "--output_dir", full])
    reference = load_file(full / "final" / "model.safetensors")
    for resume_step in (2, 4, 6):  # stage 1, the boundary (masks frozen at step 4), stage 2
        stopped = tmp_path / f"stopped{resume_step}"
        shutil.copytree(full, stopped)
        shutil.rmtree(stopped / "final")
        for later in range(resume_step + 2, 10, 2):
            shutil.rmtree(stopped / "checkpoints" / f"step_{later}")
        run_train([*common, "--output_dir", stopped, "--resume_from_checkpoint", "latest"])
        resumed = load_file(stopped / "final" / "model.safetensors")
        assert resumed.keys() == reference.keys()
        assert all(torch.equal(resumed[k], reference[k]) for k in reference), resume_step
        a = json.loads((full / "final" / "config.json").read_text())["subnets"]
        b = json.loads((stopped / "final" / "config.json").read_text())["subnets"]
        assert a == b
