"""First contact (issue 20, points 1-4): the README's Python snippet and smoke training command run as written,
audio files in common formats and at any rate reach the pipeline and the evaluation script, an extracted size
saves as a folder the pipeline loads, a failed start is retried by the same command, and the training options
take their transformers.TrainingArguments names (old names still read, with a deprecation warning)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
from conftest import REPO, corpus_subset, train_in_process
from transformers import pipeline

from hf_dynasr import DynaSRConfig, DynaSRForCTC, build_processor
from hf_dynasr.models.dynasr.processor_files_dynasr import PROCESSOR_FILES
from hf_dynasr.trainer.options import parse_args
from hf_dynasr.trainer.run_folder import undo_failed_start

README = Path(REPO) / "README.md"
SMOKE = os.path.join(REPO, "training", "configs", "smoke.yaml")
TINY = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
            frontend_type="conv2d4x", frontend_channels=16)


def _need(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed; run scripts/test.sh, which installs them (scripts/setup.sh)")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A saved supernet with sizes small and medium and its processor: what runs/demo/final holds."""
    torch.manual_seed(0)
    model = DynaSRForCTC(DynaSRConfig(**TINY)).eval()
    n = len(model.component_index)
    model.add_subnet("small", components=list(range(0, n, 2)))
    model.add_subnet("medium", components=[i for i in range(n) if i % 4])
    path = tmp_path_factory.mktemp("first_contact") / "final"
    model.save_pretrained(path)
    build_processor().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """The same espeak-ng sentence (22,050 Hz) as wav, flac and ogg (sox) and mp3 (ffmpeg); a 44.1 kHz flac and
    an 8 kHz wav."""
    _need("espeak-ng", "sox", "ffmpeg")
    d = tmp_path_factory.mktemp("clips")
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(d / "s.wav"), "open the door please"], check=True)
    subprocess.run(["sox", str(d / "s.wav"), str(d / "s.flac")], check=True)
    subprocess.run(["sox", str(d / "s.wav"), str(d / "s.ogg")], check=True)
    subprocess.run(["sox", str(d / "s.wav"), "-r", "44100", str(d / "s44.flac")], check=True)
    subprocess.run(["sox", str(d / "s.wav"), "-r", "8000", str(d / "s8.wav")], check=True)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(d / "s.wav"), str(d / "s.mp3")], check=True)
    assert sf.info(str(d / "s.wav")).samplerate == 22050
    return d


def _features(asr, inputs):
    """The input features the pipeline computes for `inputs` (its first chunk)."""
    return next(iter(asr.preprocess(inputs)))["input_features"]


# --- 1. the README's Python snippet, as written -------------------------------------------------------------


def test_readme_python_snippet_runs_as_written(checkpoint, clips, tmp_path, monkeypatch, capsys):
    block = README.read_text().split("## Using a trained model", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert 'asr("speech.wav")' in block and 'small.save_pretrained("out/small")' in block
    shutil.copy(clips / "s.wav", tmp_path / "speech.wav")  # 22,050 Hz, as espeak-ng writes it
    monkeypatch.chdir(tmp_path)
    # the README's own text is the code under test, so it is executed as written
    exec(compile(block.replace("runs/demo/final", str(checkpoint)), "README.md", "exec"), {})  # noqa: S102
    text = capsys.readouterr().out.strip().splitlines()[-1]
    assert set(text) <= set("abcdefghijklmnopqrstuvwxyz' <>")
    # the size saved by the snippet is a folder the pipeline loads: the processor travelled with it
    assert {"processor_config.json", "tokenizer_config.json", "vocab.json"} <= set(os.listdir(tmp_path / "out/small"))
    small = pipeline("automatic-speech-recognition", model=str(tmp_path / "out/small"))
    assert small.model.config.active_subnet == "small" and isinstance(small(str(clips / "s.flac"))["text"], str)


def test_readme_smoke_command_runs_as_written_and_a_second_run_keeps_the_first(tmp_path):
    """`python training/train.py --config training/configs/smoke.yaml` in a fresh folder: the missing smoke
    corpus is synthesized (logged), the run finishes; the same command again is refused and deletes nothing."""
    line = next(ln for ln in README.read_text().splitlines() if "configs/smoke.yaml" in ln)
    assert line.split("#")[0].split() == ["python", "training/train.py", "--config", "training/configs/smoke.yaml"]
    (tmp_path / "training" / "configs").mkdir(parents=True)
    shutil.copy(SMOKE, tmp_path / "training" / "configs" / "smoke.yaml")
    command = [sys.executable, os.path.join(REPO, "training", "train.py"), "--config", "training/configs/smoke.yaml"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "holds no corpus; synthesizing 40 utterances there" in result.stderr
    assert (tmp_path / "data/smoke/train/metadata.csv").is_file()
    final = tmp_path / "runs/smoke/final"
    assert (final / "model.safetensors").is_file() and (final / "processor_config.json").is_file()
    before = (final / "model.safetensors").read_bytes()
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert again.returncode != 0 and "holds a previous run" in again.stderr
    assert "synthesizing" not in again.stderr  # the corpus is there now
    assert (final / "model.safetensors").read_bytes() == before


# --- 4. a failed start is retried by the same command -----------------------------------------------------


@pytest.fixture(scope="module")
def corpus(smoke_corpus, tmp_path_factory):
    return corpus_subset(smoke_corpus, tmp_path_factory.mktemp("fc_corpus"), {"train": 8, "dev": 2})


def _run_args(data, out, *extra):
    return ["--config", SMOKE, "--train_data", f"audiofolder:{data}", "--eval_data", f"audiofolder:{data}",
            "--output_dir", out, "--max_steps", 2, "--save_steps", 0, "--max_batch_seconds", 8,
            "--max_eval_utterances", 2, "--synthesize_missing_corpus", 0, *extra]


def test_a_failed_start_leaves_nothing_and_the_same_command_then_runs(corpus, tmp_path, caplog):
    data, out = tmp_path / "corpus", tmp_path / "run"
    args = _run_args(data, out)
    with caplog.at_level(logging.WARNING, logger="hf_dynasr.train"), pytest.raises(
            SystemExit, match="dataset directory not found"):
        train_in_process(args)
    assert os.listdir(out) == []  # checkpoints/ and the lock gone: nothing worth keeping was written
    assert "failed before training began; removed what it wrote" in caplog.text
    # --resume_from_checkpoint latest on it: says there is nothing to resume, and leaves it empty too
    with pytest.raises(SystemExit, match="no complete checkpoint .* drop --resume_from_checkpoint"):
        train_in_process(args + ["--resume_from_checkpoint", "latest"])
    assert os.listdir(out) == []
    shutil.copytree(corpus, data)
    train_in_process(args)  # the same command, once its data is there
    assert (out / "final" / "model.safetensors").is_file()


def test_a_failed_start_never_touches_a_saved_run(corpus, tmp_path):
    """The clean-up after a failed start runs only for a folder the run found empty, and even then leaves a folder
    holding a checkpoint or final/ alone."""
    out = tmp_path / "run"
    train_in_process(_run_args(corpus, out, "--save_steps", 1))
    kept = {name: sorted(os.listdir(out / name)) if (out / name).is_dir() else None for name in os.listdir(out)}
    assert "final" in kept and kept["checkpoints"]
    assert undo_failed_start(str(out)) == []
    assert {name: sorted(os.listdir(out / name)) if (out / name).is_dir() else None for name in os.listdir(out)} == kept
    # the same command again is refused before anything is written (a previous run is never cleaned up)
    with pytest.raises(SystemExit, match="holds a previous run"):
        train_in_process(_run_args(corpus, out, "--save_steps", 1))
    assert sorted(os.listdir(out)) == sorted(kept)


# --- 2. audio files and rates ---------------------------------------------------------------------------


def test_pipeline_reads_common_formats_and_rates(checkpoint, clips, monkeypatch):
    asr = pipeline("automatic-speech-recognition", model=str(checkpoint))
    texts = {name: asr(str(clips / name))["text"] for name in ("s.wav", "s.flac", "s.ogg", "s.mp3", "s44.flac",
                                                               "s8.wav")}
    assert texts["s.wav"] == texts["s.flac"]  # lossless: the same samples
    assert all(isinstance(t, str) for t in texts.values())
    audio, rate = sf.read(str(clips / "s.wav"), dtype="float32")
    raw = {"raw": audio, "sampling_rate": rate}
    # an array at 22,050 Hz is resampled without torchaudio (absent here: no wheel for this torch)
    assert isinstance(asr({**raw})["text"], str)
    assert isinstance(asr({"array": torch.from_numpy(audio), "sampling_rate": rate}, chunk_length_s=1.0,
                          stride_length_s=0.2)["text"], str)
    # without the ffmpeg program, files are decoded and resampled by hf_dynasr: exactly the array's features
    monkeypatch.setenv("PATH", "/nonexistent")
    assert shutil.which("ffmpeg") is None
    assert torch.equal(_features(asr, str(clips / "s.wav")), _features(asr, {**raw}))
    assert torch.equal(_features(asr, str(clips / "s.flac")), _features(asr, {**raw}))
    for name in ("s.ogg", "s.mp3", "s44.flac", "s8.wav"):
        features = _features(asr, str(clips / name))
        assert features.shape[-1] == 80 and torch.isfinite(features).all(), name
    assert asr(str(clips / "s.wav"))["text"] == texts["s.wav"] or texts["s.wav"] == ""


def test_evaluate_script_reads_every_format(checkpoint, clips, tmp_path):
    """scripts/evaluate_model.py on an audiofolder of wav, flac, ogg and mp3 files at 8, 22.05 and 44.1 kHz: every
    utterance is scored, none skipped."""
    folder = tmp_path / "corpus" / "test"
    folder.mkdir(parents=True)
    names = ["s.wav", "s.flac", "s.ogg", "s.mp3", "s44.flac", "s8.wav"]
    rows = ["file_name,transcription"]
    for name in names:
        shutil.copy(clips / name, folder / name)
        rows.append(f"{name},open the door please")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "eval"
    result = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "evaluate_model.py"), "--checkpoint",
                             str(checkpoint), "--data", f"audiofolder:{tmp_path / 'corpus'}", "--split", "test",
                             "--subnets", "small", "--latency_runs", "0", "--output_dir", str(out)],
                            capture_output=True, text=True, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["num_utterances"] == len(names)
    assert results["sizes"]["small"]["num_words"] == 4 * len(names)


# --- 3. the processor travels with the model --------------------------------------------------------------


def test_extracted_sizes_and_the_supernet_save_with_their_processor(checkpoint, clips, tmp_path, caplog):
    from transformers import AutoModelForCTC

    sup = AutoModelForCTC.from_pretrained(str(checkpoint))
    for name, model in (("small", sup.extract_subnet("small")), ("supernet", sup),
                        ("lazy_medium", AutoModelForCTC.from_pretrained(str(checkpoint), subnet="medium"))):
        target = tmp_path / name
        model.save_pretrained(target)
        for file in set(PROCESSOR_FILES) & set(os.listdir(checkpoint)):
            assert (target / file).read_bytes() == (checkpoint / file).read_bytes(), (name, file)
        asr = pipeline("automatic-speech-recognition", model=str(target))
        assert isinstance(asr(str(clips / "s.wav"))["text"], str)
    # a processor saved in the target on purpose is kept; a model built in memory says it has none to copy
    own = tmp_path / "own"
    build_processor(vocab=["<pad>", "<unk>", "|", "a", "b"]).save_pretrained(own)
    vocab = (own / "vocab.json").read_bytes()
    sup.extract_subnet("small").save_pretrained(own)
    assert (own / "vocab.json").read_bytes() == vocab
    with caplog.at_level(logging.INFO):
        DynaSRForCTC(DynaSRConfig(**TINY)).save_pretrained(tmp_path / "bare")
    assert not set(PROCESSOR_FILES) & set(os.listdir(tmp_path / "bare"))
    assert "has no processor files" in caplog.text and "processor.save_pretrained" in caplog.text


# --- 4. TrainingArguments names, old names as aliases, --help ---------------------------------------------


def test_training_arguments_names_and_deprecated_aliases(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_dynasr.train"):
        args = parse_args(["--lr_scheduler", "warmup_stable_decay", "--warmup_fraction", "0.1"])
    assert (args.lr_scheduler_type, args.warmup_ratio) == ("warmup_stable_decay", 0.1)
    assert "--lr_scheduler is deprecated: use --lr_scheduler_type" in caplog.text
    assert "--warmup_fraction is deprecated: use --warmup_ratio" in caplog.text
    old = tmp_path / "old.yaml"
    old.write_text("lr_scheduler: linear\nwarmup_fraction: 0.3\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_dynasr.train"):
        args = parse_args(["--config", str(old)])
    assert (args.lr_scheduler_type, args.warmup_ratio) == ("linear", 0.3)
    assert "warmup_fraction is deprecated: use warmup_ratio" in caplog.text
    both = tmp_path / "both.yaml"
    both.write_text("warmup_fraction: 0.3\nwarmup_ratio: 0.2\n")
    with pytest.raises(SystemExit, match="sets both warmup_fraction and warmup_ratio"):
        parse_args(["--config", str(both)])
    new = parse_args(["--lr_scheduler_type", "cosine", "--warmup_ratio", "0.2"])
    assert (new.lr_scheduler_type, new.warmup_ratio) == ("cosine", 0.2)


def test_report_to_is_a_list_and_strategies_follow_transformers(tmp_path):
    assert parse_args([]).report_to == ["none"]
    assert parse_args(["--report_to", "tensorboard", "wandb", "trackio"]).report_to == ["tensorboard", "wandb",
                                                                                         "trackio"]
    yaml_file = tmp_path / "r.yaml"
    yaml_file.write_text("report_to: tensorboard\n")
    assert parse_args(["--config", str(yaml_file)]).report_to == ["tensorboard"]
    with pytest.raises(SystemExit, match="--report_to tensorbored: unknown; allowed: tensorboard, wandb, trackio"):
        parse_args(["--report_to", "tensorbored"])
    with pytest.raises(SystemExit, match="none cannot be combined"):
        parse_args(["--report_to", "none", "wandb"])
    args = parse_args(["--eval_steps", "5", "--save_steps", "3"])
    assert (args.eval_strategy, args.save_strategy) == ("steps", "steps")
    args = parse_args(["--eval_steps", "5", "--eval_strategy", "no"])
    assert (args.eval_strategy, args.eval_steps, args.save_strategy) == ("no", 0, "no")
    with pytest.raises(SystemExit, match="--save_strategy steps needs --save_steps N"):
        parse_args(["--save_strategy", "steps"])
    with pytest.raises(SystemExit, match="--eval_strategy epoch: allowed: no, steps"):
        parse_args(["--eval_strategy", "epoch", "--eval_steps", "2"])


def test_help_shows_defaults_and_an_example_for_every_dict_option():
    result = subprocess.run([sys.executable, os.path.join(REPO, "training", "train.py"), "--help"],
                            capture_output=True, text=True, check=False, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0
    options = re.split(r"\n  (?=--)", result.stdout)
    for name in ("model", "subnets", "selection", "dmao"):
        entry = next(o for o in options if o.startswith(f"--{name} "))
        example = re.search(r"Example: --" + name + r" '(\{.*?\})'", " ".join(entry.split()))
        assert example, entry
        assert isinstance(json.loads(example.group(1)), dict)  # the example is valid JSON
        parse_args([f"--{name}", example.group(1)])  # and a valid value
    assert "(default: one_cycle)" in result.stdout and "--lr_scheduler LR_SCHEDULER_TYPE" in result.stdout


def test_docs_cli_lists_every_training_option():
    from dataclasses import fields

    from hf_dynasr.trainer.options import TrainArgs

    text = (Path(REPO) / "docs" / "cli.md").read_text()
    missing = [f.name for f in fields(TrainArgs) if f"`{f.name}`" not in text]
    assert not missing, missing


def test_a_checkpoint_recorded_under_the_old_names_resumes_under_the_new(tmp_path):
    """A checkpoint's trainer_state.json written before the rename records lr_scheduler / warmup_fraction: they are
    compared as lr_scheduler_type / warmup_ratio (equal values pass, another value is refused naming the new name)."""
    from types import SimpleNamespace

    from hf_dynasr.trainer.options import RENAMED_OPTIONS, TRAJECTORY_OPTIONS
    from hf_dynasr.trainer.resume_check import check_resume

    args = parse_args(["--lr_scheduler_type", "warmup_stable_decay", "--warmup_ratio", "0.1"])
    old_names = {new: old for old, new in RENAMED_OPTIONS.items()}
    recorded = {old_names.get(name, name): getattr(args, name) for name in TRAJECTORY_OPTIONS}
    assert "warmup_fraction" in recorded and "warmup_ratio" not in recorded
    checkpoint = tmp_path / "step_4"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text(json.dumps({"training_args": recorded}))
    accelerator = SimpleNamespace(num_processes=1, mixed_precision="no")
    check_resume(args, accelerator, str(checkpoint))  # the same options under their new names: accepted
    changed = parse_args(["--lr_scheduler_type", "warmup_stable_decay", "--warmup_ratio", "0.2"])
    with pytest.raises(SystemExit, match=r"--warmup_ratio is 0.2 but the checkpoint .*step_4 was trained with 0.1"):
        check_resume(changed, accelerator, str(checkpoint))
