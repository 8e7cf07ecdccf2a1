"""Reliability and safety: kill and resume, bad inputs, non-finite steps, safe loading.

Training runs call `hf_dynasr.trainer.main()` in a forked child process of this test process
(tests/fault_injection.py): a real process that a callback (`Faults`) can SIGKILL, without the imports of a
fresh interpreter for each of the eleven runs. The corpus is 16 training utterances. The matrix of bad inputs
and the test behind each row: docs/robustness.md.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import REPO, corpus_subset, make_model, mismatched_copy
from fault_injection import Faults, train
from safetensors.torch import load_file

from hf_dynasr.trainer.nonfinite import grads_finite

SMOKE = os.path.join(REPO, "training", "configs", "smoke.yaml")
MODEL = {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 96,
         "conv_kernel_size": 15, "frontend_type": "conv2d4x", "frontend_channels": 16, "hidden_dropout": 0.0,
         "activation_dropout": 0.0, "attention_dropout": 0.0, "reference_duration_s": 2.0}


def run_ok(args, log, faults=None):
    code, text = train(args, log, faults)
    assert code == 0, f"train.py failed ({code}):\n{text[-4000:]}"
    return text


def run_killed(args, log, faults):
    code, text = train(args, log, faults)
    assert code == -9, f"expected a SIGKILL, got exit code {code}:\n{text[-4000:]}"
    return text


@pytest.fixture(scope="module")
def corpus(smoke_corpus, tmp_path_factory):
    """16 training and 2 dev utterances of the smoke corpus (each run prepares its features again)."""
    root = tmp_path_factory.mktemp("small_corpus")
    return corpus_subset(smoke_corpus, root, {"train": 16, "dev": 2})


def _common(corpus, *extra):
    return ["--config", SMOKE, "--train_data", f"audiofolder:{corpus}", "--eval_data", f"audiofolder:{corpus}",
            "--max_steps", "8", "--save_steps", "2", "--save_total_limit", "10", "--max_batch_seconds", "8",
            "--logging_steps", "1", *extra]


def _weights_equal(a_dir, b_dir):
    a, b = load_file(os.path.join(a_dir, "model.safetensors")), load_file(os.path.join(b_dir, "model.safetensors"))
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


def _results(run_dir):
    with open(os.path.join(run_dir, "final", "training_results.json")) as f:
        return json.load(f)


def _tree_digest(folder):
    digest = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            digest.update(name.encode())
            with open(os.path.join(root, name), "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


# --- 1. kill and resume ----------------------------------------------------------------------------------

NAN_AT = {"nan_loss": {1: 1}, "nan_grad": {3: 1}}  # one NaN loss at step 1, one NaN gradient at step 3


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """An uninterrupted 8-step run that meets a NaN loss and a NaN gradient (both skipped)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    log = run_ok([*_common(corpus), "--output_dir", out], out.parent / "log.txt", Faults(**NAN_AT))
    return out, log


def test_nonfinite_loss_and_gradient_steps_are_skipped_and_counted(reference):
    out, log = reference
    results = _results(out)
    assert results["nonfinite_steps_skipped"] == 2 and results["steps"] == 8
    assert "step 1: non-finite loss" in log and "step 3: non-finite gradient" in log
    assert log.count("update skipped (1 in a row)") == 2
    weights = load_file(out / "final" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_kill_between_and_during_checkpoints_resumes_bitwise(corpus, reference, tmp_path):
    ref, _ = reference
    out = tmp_path / "run"
    args = [*_common(corpus), "--output_dir", out]
    ckpts = out / "checkpoints"
    # killed while writing checkpoint 4: step_2 stays complete and identical to the uninterrupted run's
    run_killed(args, tmp_path / "log1.txt", Faults(**NAN_AT, kill_in_checkpoint=4))
    assert sorted(os.listdir(ckpts)) == [".tmp-step_4", "step_2"]
    assert (ckpts / ".tmp-step_4" / "trainer_state.json").is_file()  # complete, only the rename was missing
    assert _tree_digest(ckpts / "step_2") == _tree_digest(ref / "checkpoints" / "step_2")
    from hf_dynasr.trainer.checkpointing import resolve_checkpoint

    assert resolve_checkpoint(str(ckpts), "latest") == str(ckpts / "step_2")
    # resumed, then killed between checkpoints (after update 5)
    log = run_killed([*args, "--resume_from_checkpoint", "latest"], tmp_path / "log2.txt",
                     Faults(**NAN_AT, kill_after_step=5))
    assert "at step 2" in log
    assert sorted(os.listdir(ckpts)) == ["step_2", "step_4"]  # the stale .tmp-step_4 was replaced
    log = run_ok([*args, "--resume_from_checkpoint", "latest"], tmp_path / "log3.txt", Faults(**NAN_AT))
    assert "at step 4" in log
    _weights_equal(ref / "final", out / "final")
    assert _results(out)["nonfinite_steps_skipped"] == 2  # the counter survives the resume


def _kill_resume_matches(corpus, tmp_path, extra, kill, resumed_at):
    args = _common(corpus, *extra)
    ref, out = tmp_path / "ref", tmp_path / "killed"
    run_ok([*args, "--output_dir", ref], tmp_path / "ref.txt")
    run_killed([*args, "--output_dir", out], tmp_path / "kill.txt", kill)
    log = run_ok([*args, "--output_dir", out, "--resume_from_checkpoint", "latest"], tmp_path / "resume.txt")
    assert f"at step {resumed_at}" in log
    _weights_equal(ref / "final", out / "final")
    return ref, out


def test_kill_and_resume_with_dmao_reshape(corpus, tmp_path):
    """Killed after the reshape at step 2 (events [0.3] of 8 steps); resumed from the reshaped checkpoint 2."""
    model = json.dumps({**MODEL, "conv_granularity": "chunk"})
    dmao = json.dumps({"events": [0.3], "update_every": 1})
    ref, out = _kill_resume_matches(corpus, tmp_path, ["--model", model, "--dmao", dmao],
                                    Faults(kill_after_step=3), 2)
    config = json.loads((ref / "final" / "config.json").read_text())
    assert config["architecture_spec"] != [{"ffn1": 96, "mhsa": 4, "conv": 48, "ffn2": 96}] * 2  # it reshaped
    assert config == json.loads((out / "final" / "config.json").read_text())


def test_kill_and_resume_a_supernet_after_its_dmao_event(corpus, tmp_path):
    """Supernet + DMAO: stage 1 ends at step 2, the reshape comes at step 4; killed after step 5, resumed from the
    reshaped checkpoint 4 (its selector was built on the pre-reshape model): the same weights, config and sizes."""
    extra = ["--model", json.dumps({**MODEL, "conv_granularity": "chunk"}),
             "--dmao", json.dumps({"events": [0.5], "update_every": 1}),
             "--subnets", json.dumps({"small": 0.5, "mid": 0.75}),
             "--selection", json.dumps({"method": "ortho_softmax", "criterion": "flops", "stage1_fraction": 0.25})]
    ref, out = _kill_resume_matches(corpus, tmp_path, extra, Faults(kill_after_step=5), 4)
    config = json.loads((ref / "final" / "config.json").read_text())
    assert config["architecture_spec"] != [{"ffn1": 96, "mhsa": 4, "conv": 48, "ffn2": 96}] * 2  # it reshaped
    assert config == json.loads((out / "final" / "config.json").read_text())


def test_kill_and_resume_across_the_stage_boundary(corpus, tmp_path):
    """Supernet: killed while writing checkpoint 4 (the stage boundary), resumed in stage 1 from step 2."""
    extra = ["--model", json.dumps(MODEL), "--subnets", json.dumps({"small": 0.5, "mid": 0.75}),
             "--selection", json.dumps({"method": "ortho_softmax", "criterion": "flops", "stage1_fraction": 0.5})]
    ref, out = _kill_resume_matches(corpus, tmp_path, extra, Faults(kill_in_checkpoint=4), 2)
    a = json.loads((ref / "final" / "config.json").read_text())["subnets"]
    assert a == json.loads((out / "final" / "config.json").read_text())["subnets"]


# --- 3. non-finite guard: K in a row, --detect_anomaly ---------------------------------------------------


def _poisoned_checkpoint(path):
    """A smoke-sized model whose block-1 FFN1 input weights are NaN."""
    from hf_dynasr import DynaSRConfig, DynaSRForCTC

    torch.manual_seed(0)
    model = DynaSRForCTC(DynaSRConfig(**MODEL))
    with torch.no_grad():
        model.dynasr.layers[1].ffn1.linear_in.weight[0, 0] = float("nan")
    model.save_pretrained(path)
    return path


def test_k_nonfinite_steps_in_a_row_stop_and_detect_anomaly_names_the_module(corpus, tmp_path):
    init = _poisoned_checkpoint(tmp_path / "poisoned")
    code, log = train([*_common(corpus), "--output_dir", tmp_path / "run", "--init_from", init,
                       "--max_nonfinite_steps", "2", "--detect_anomaly", "true"], tmp_path / "log.txt")
    assert code == 1, log[-3000:]
    module = "non-finite output in module dynasr.layers.1.ffn1 (DynaSRFeedForward)"
    assert "error: 2 non-finite steps in a row (last: non-finite loss; " + module in log
    assert "update skipped (1 in a row); " + module in log
    assert not (tmp_path / "run" / "final").exists()


def test_gradient_check_with_and_without_clipping(features):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = make_model()
    x, mask = features
    model(x, mask).logits.square().mean().backward()
    for max_norm in (0.0, 1e9):  # 0 = clipping off: the norm is only measured
        assert grads_finite(accelerator, model, None, max_norm)
    model.dynasr.layers[0].ffn1.linear_in.weight.grad[0, 0] = float("inf")
    for max_norm in (0.0, 1e9):
        assert not grads_finite(accelerator, model, None, max_norm)


def test_anomaly_detector_names_the_origin_module(features):
    from hf_dynasr.trainer.anomaly import AnomalyDetector
    from hf_dynasr.trainer.supernet_step import shared_frontend

    model = make_model()
    x, mask = features
    model(x, mask, output_hidden_states=True)  # transformers' own output-capture hooks, installed once per model
    before = {name: len(m._forward_hooks) for name, m in model.named_modules()}
    detector = AnomalyDetector(model)
    model(x, mask)
    assert detector.report() is None  # a healthy forward reports nothing (padding and masks included)
    with torch.no_grad():
        model.dynasr.layers[2].conv.pointwise_in.weight[3, 0] = float("inf")
    model(x, mask)
    assert detector.first == "non-finite output in module dynasr.layers.2.conv (DynaSRConvModule)"
    detector.reset()
    x_bad = x.clone()
    x_bad[0, 5, 3] = float("nan")
    with pytest.raises(ValueError, match=r"utterance\(s\) \[0\] contain NaN or Inf"):
        model(x_bad, mask)  # refused before any module runs
    with torch.no_grad():
        model.dynasr.layers[2].conv.pointwise_in.weight[3, 0] = 0.0
    embeds, embeds_mask = shared_frontend(model(x, mask, output_hidden_states=True), mask)
    embeds = embeds.clone()
    embeds[0, 2, 3] = float("nan")  # no module is the origin: the encoder's input already was non-finite
    detector.reset()
    model(inputs_embeds=embeds, attention_mask=embeds_mask)
    assert detector.first is None and detector.report().endswith("(input already non-finite)")
    detector.detach()
    assert {name: len(m._forward_hooks) for name, m in model.named_modules()} == before  # the detector's are gone
    captured = ("DynaSREncoderBlock", "DynaSRSelfAttention")  # where transformers records hidden states, attentions
    assert not any(m._forward_hooks for m in model.modules() if type(m).__name__ not in captured)


# --- 2. bad inputs: data, checkpoints, disk ---------------------------------------------------------------


@pytest.fixture(scope="module")
def processor():
    from hf_dynasr import build_processor

    return build_processor()


def _prepare(rows, processor, **kwargs):
    import datasets

    from hf_dynasr.data import prepare_dataset

    ds = datasets.Dataset.from_list([{"audio": {"array": a, "sampling_rate": sr}, "text": t} for a, sr, t in rows])
    return prepare_dataset(ds, processor.feature_extractor, processor.tokenizer, **kwargs)


def test_in_memory_arrays_int16_stereo_silence_and_inf(processor):
    from hf_dynasr.data import load_audio

    rng = np.random.default_rng(0)
    speechy = (0.1 * np.sin(np.arange(16000) / 5.0) * (1 + 0.3 * rng.standard_normal(16000))).astype(np.float32)
    pcm16 = np.round(speechy * 32768).astype(np.int16)
    np.testing.assert_allclose(load_audio({"array": pcm16, "sampling_rate": 16000}), speechy, atol=1.0 / 32768)
    stereo_first = np.stack([speechy, speechy])  # [channels, samples], as torchaudio returns it
    np.testing.assert_allclose(load_audio({"array": stereo_first, "sampling_rate": 16000}), speechy)
    np.testing.assert_allclose(load_audio({"array": stereo_first.T, "sampling_rate": 16000}), speechy)
    with_inf = speechy.copy()
    with_inf[100] = np.inf
    # int16 through a datasets table (the values arrive as python ints): scaled like the float original
    prepared, report = _prepare([(pcm16, 16000, "hello")], processor)
    reference, _ = _prepare([(speechy, 16000, "hello")], processor)
    np.testing.assert_allclose(np.asarray(prepared[0]["input_features"]),
                               np.asarray(reference[0]["input_features"]), atol=1e-2)
    prepared, report = _prepare([(np.zeros(16000, np.float32), 16000, "silence"), (with_inf, 16000, "hello")],
                                processor)
    assert report.total_kept == 1 and report.counts["non_finite_audio"] == 1
    assert report.examples["non_finite_audio"] == ["<row 1>"]
    silent = np.asarray(prepared[0]["input_features"], dtype=np.float32)
    assert np.isfinite(silent).all()  # all-zero audio is kept: finite (constant) features, a finite loss
    model = make_model()
    labels = torch.tensor([prepared[0]["labels"]])
    loss = model(torch.from_numpy(silent)[None], labels=labels).loss
    assert torch.isfinite(loss)


def test_metadata_paths_cannot_escape_the_dataset_root(tmp_path, speech_clips):
    from hf_dynasr.data import load_speech_dataset

    folder = tmp_path / "af"
    folder.mkdir()
    shutil.copy(speech_clips["hello world"], folder / "ok.wav")
    (folder / "metadata.csv").write_text("file_name,transcription\nok.wav,hello world\n../../etc/passwd,x\n")
    with pytest.raises(ValueError, match=r"audio path '\.\./\.\./etc/passwd' in .*metadata\.csv escapes its folder"):
        load_speech_dataset(f"audiofolder:{folder}")
    table = tmp_path / "abs.csv"
    table.write_text(f"audio,text\n{folder / 'ok.wav'},hello world\n/etc/passwd,x\n")
    with pytest.raises(ValueError, match=r"audio path '/etc/passwd' in .*abs\.csv escapes its folder"):
        load_speech_dataset(f"csv:{table}")
    jsonl = tmp_path / "jl"
    jsonl.mkdir()
    (jsonl / "metadata.jsonl").write_text(json.dumps({"file_name": "/etc/passwd", "text": "x"}) + "\n")
    with pytest.raises(ValueError, match="escapes its folder"):
        load_speech_dataset(f"audiofolder:{jsonl}")


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    from accelerate import Accelerator

    import hf_dynasr.trainer.checkpointing as ckpt
    from hf_dynasr.trainer import state_files

    model = make_model()
    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    objects = state_files.TrainingObjects(model, optimizer)
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    ckpt.save_checkpoint(accelerator, str(folder), 2, {"step": 2}, objects, keep_last=2)
    before = _tree_digest(folder / "step_2")

    real_save = state_files.save_file

    def full_disk(tensors, f, *args, **kwargs):  # write a little, then fail as a full disk does
        with open(f, "wb") as handle:
            handle.write(b"\0" * 10)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

    monkeypatch.setattr(state_files, "save_file", full_disk)  # a real full disk: test_checkpoint_safety.py
    with pytest.raises(OSError, match=r"disk full while writing checkpoint .*\.tmp-step_4 \(removed; the previous "
                                      r"checkpoint .*step_2 is intact\)") as err:
        ckpt.save_checkpoint(accelerator, str(folder), 4, {"step": 4}, objects, keep_last=2)
    assert err.value.errno == errno.ENOSPC
    assert sorted(os.listdir(folder)) == ["step_2"]
    assert _tree_digest(folder / "step_2") == before
    monkeypatch.setattr(state_files, "save_file", real_save)
    ckpt.load_checkpoint(ckpt.resolve_checkpoint(str(folder), "latest"), accelerator, objects)  # still loadable

    def other_failure(*args, **kwargs):
        raise PermissionError(errno.EACCES, "read-only")

    monkeypatch.setattr(ckpt, "write_training_state", other_failure)
    with pytest.raises(PermissionError):  # other errors pass through unchanged, the temp folder still goes
        ckpt.save_checkpoint(accelerator, str(folder), 6, {"step": 6}, objects, keep_last=2)
    assert sorted(os.listdir(folder)) == ["step_2"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = make_model()
    model.add_subnet("small", components=list(range(0, len(model.component_index), 3)))
    path = tmp_path_factory.mktemp("ckpt") / "model"
    model.save_pretrained(path)
    return path, model


def _spy_torch_load(monkeypatch):
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(args[:1])
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


def test_hub_loadable_files_never_go_through_torch_load(checkpoint, monkeypatch):
    from transformers import AutoModelForCTC, dynamic_module_utils

    import hf_dynasr  # noqa: F401  (registers the Auto classes: no trust_remote_code needed)

    path, model = checkpoint
    calls = _spy_torch_load(monkeypatch)

    def no_remote_code(*args, **kwargs):
        raise AssertionError("remote code was requested")

    monkeypatch.setattr(dynamic_module_utils, "get_class_from_dynamic_module", no_remote_code)
    full = AutoModelForCTC.from_pretrained(path)
    small = AutoModelForCTC.from_pretrained(path, subnet="small")
    assert type(full).__name__ == "DynaSRForCTC" and small.config.active_subnet == "small"
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), model.state_dict().values()))
    assert calls == []


@pytest.fixture
def pickled(checkpoint, tmp_path):
    path, model = checkpoint
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(path / "config.json", folder / "config.json")
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


def test_pickle_only_checkpoint_is_refused_for_a_size(pickled, monkeypatch):
    from hf_dynasr import DynaSRForCTC
    from hf_dynasr.models.dynasr.loading_dynasr import CheckpointFormatError

    calls = _spy_torch_load(monkeypatch)
    with pytest.raises(CheckpointFormatError, match=r"holds pickled weights \(pytorch_model\.bin\), not "
                                                    r"model\.safetensors; hf_dynasr loads only safetensors"):
        DynaSRForCTC.from_pretrained(pickled, subnet="small")
    assert calls == []


def test_pickle_only_checkpoint_is_refused_for_the_whole_model(pickled, monkeypatch):
    from hf_dynasr import DynaSRForCTC

    calls = _spy_torch_load(monkeypatch)
    with pytest.raises(OSError, match="model.safetensors"):
        DynaSRForCTC.from_pretrained(pickled)
    assert calls == []


def test_whole_model_load_of_bad_weights_fails_loudly(checkpoint, tmp_path, caplog):
    """Truncated/corrupted safetensors and a spec that disagrees with the weights: an error, never random init."""
    from safetensors import SafetensorError

    from hf_dynasr import DynaSRForCTC

    path, _ = checkpoint
    truncated = tmp_path / "truncated"
    shutil.copytree(path, truncated)
    weights = truncated / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    with pytest.raises(SafetensorError, match="incomplete metadata, file not fully covered"):
        DynaSRForCTC.from_pretrained(truncated)
    corrupted = tmp_path / "corrupted"
    shutil.copytree(path, corrupted)
    data = bytearray((corrupted / "model.safetensors").read_bytes())
    data[8:40] = b"x" * 32  # the JSON header
    (corrupted / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(SafetensorError, match="invalid JSON in header"):
        DynaSRForCTC.from_pretrained(corrupted)
    with pytest.raises(OSError, match="truncated or corrupted"):
        DynaSRForCTC.from_pretrained(corrupted, subnet="small")

    mismatch = mismatched_copy(path, tmp_path / "mismatch")
    caplog.clear()
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        DynaSRForCTC.from_pretrained(mismatch)
    report = caplog.text  # transformers' load report (a warning) names each tensor and both shapes
    assert "dynasr.layers.1.ffn2.linear_in.weight" in report and "torch.Size([96, 64])" in report
