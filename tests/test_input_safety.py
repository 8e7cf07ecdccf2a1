"""Inputs and loading that are never silently wrong: the evaluation split, inference audio, whole-model and
one-size loading checked against the weights, and odd corpus files (a FIFO, a truncated WAV, digits, symlinks,
an empty metadata.csv).

Real tiny models saved to real safetensors files, real espeak-ng speech, a real FIFO (os.mkfifo) and a real
train.py run. The matrix of bad inputs and the test behind each row: docs/robustness.md.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import struct

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO, make_model, run_train
from safetensors.torch import load_file, save_file

SMOKE = os.path.join(REPO, "training", "configs", "smoke.yaml")


def _speech(speech_clips, text="hello world"):
    audio, rate = sf.read(speech_clips[text], dtype="float32")
    return audio, rate


def _audiofolder(folder, rows):
    """An audiofolder at `folder` with `rows` = [(file name, transcript)]."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["file_name,transcription"] + [f"{name},{text}" for name, text in rows]
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def processor():
    from hf_dynasr import build_processor

    return build_processor()


# --- item 3: evaluation never silently on the training rows --------------------------------------------------

def test_eval_split_without_its_folder_is_refused(speech_clips, tmp_path):
    from hf_dynasr.data.loading import check_distinct_splits, load_speech_dataset, resolve_split

    flat = tmp_path / "flat"
    flat.mkdir()
    for i, text in enumerate(("hello world", "open the door", "good morning", "a red cat")):
        shutil.copy(speech_clips[text], flat / f"c{i}.wav")
    _audiofolder(flat, [(f"c{i}.wav", t) for i, t in
                        enumerate(("hello world", "open the door", "good morning", "a red cat"))])
    spec = f"audiofolder:{flat}"
    assert resolve_split(spec, "dev") == (os.path.realpath(flat), False)  # read whole: no dev/ folder
    with pytest.raises(ValueError, match=r"evaluation split 'dev' of audiofolder:.*flat has no folder of its own, "
                                         r"so it would be the training rows.*--eval_data.*--eval_split train"):
        check_distinct_splits(spec, "train", spec, "dev")
    check_distinct_splits(spec, "train", spec, "train")  # asking for the training rows is allowed

    split = tmp_path / "split"
    shutil.copytree(flat, split / "train")
    with pytest.raises(FileNotFoundError, match=r"no split 'dev' under .*split \(its splits: train\)"):
        load_speech_dataset(f"audiofolder:{split}", split="dev")
    assert len(load_speech_dataset(f"audiofolder:{split}", split="train")) == 4
    with pytest.raises(FileNotFoundError, match=r"evaluation data \(--eval_data / --eval_split\): no split 'dev'"):
        check_distinct_splits(f"audiofolder:{split}", "train", f"audiofolder:{split}", "dev")

    # the training script refuses before any data is prepared or any run folder is written
    out = tmp_path / "run"
    result = run_train(["--config", SMOKE, "--train_data", spec, "--eval_data", spec, "--output_dir", out,
                        "--max_steps", "1"], check=False)
    assert result.returncode != 0
    assert "error: the evaluation split 'dev'" in result.stderr and "Traceback" not in result.stderr
    assert not (out / "final").exists()


# --- item 5: inference audio checked and normalised as training's is -----------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory, processor):
    model = make_model()
    model.add_subnet("small", components=list(range(0, len(model.component_index), 3)))
    path = tmp_path_factory.mktemp("ckpt") / "model"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path, model


def test_inference_audio_is_scaled_resampled_and_nan_refused(speech_clips, saved, processor):
    from hf_dynasr.data import load_audio
    from hf_dynasr.evaluation import evaluate_checkpoint
    from hf_dynasr.evaluation.inference import audio_array, transcribe_batch

    audio, rate = _speech(speech_clips)
    at16k = load_audio({"array": audio, "sampling_rate": rate})  # what training's loader makes of it
    np.testing.assert_allclose(audio_array({"array": audio, "sampling_rate": rate}, 16000), at16k)
    pcm16 = np.round(at16k * 32767).astype(np.int16)
    np.testing.assert_allclose(audio_array(pcm16, 16000), at16k, atol=2.0 / 32768)
    np.testing.assert_allclose(audio_array(str(speech_clips["hello world"]), 16000), at16k)

    _, model = saved
    fe, tok = processor.feature_extractor, processor.tokenizer
    clips = [load_audio(str(p)) for p in speech_clips.values()]
    as_int16 = [np.round(c * 32767).astype(np.int16) for c in clips]
    same_as_float = [c.astype(np.float32) / 32768 for c in as_int16]  # scaled as training's loader scales
    assert transcribe_batch(model, fe, tok, as_int16) == transcribe_batch(model, fe, tok, same_as_float)

    with_nan = at16k.copy()
    with_nan[10] = np.nan
    with pytest.raises(ValueError, match=r"arrays\[1\]: the audio has NaN or Inf samples \(1 of"):
        transcribe_batch(model, fe, tok, [at16k, with_nan])
    rows = [{"audio": {"array": at16k, "sampling_rate": 16000}, "text": "hello world"},
            {"audio": {"array": np.where(np.arange(at16k.size) == 5, np.inf, at16k), "sampling_rate": 16000},
             "text": "hello world"}]
    with pytest.raises(ValueError, match=r"row 1: the audio has NaN or Inf samples"):
        evaluate_checkpoint(model, rows, processor=processor, latency=False)
    result = evaluate_checkpoint(model, rows[:1] * 2, processor=processor, latency=False)
    assert result["num_utterances"] == 2


def test_pipeline_refuses_nan_audio(speech_clips, saved):
    from transformers import pipeline

    import hf_dynasr  # noqa: F401  (registers the Auto classes)

    path, _ = saved
    asr = pipeline("automatic-speech-recognition", model=str(path))
    audio = resample_to_16k(speech_clips)
    assert isinstance(asr(audio)["text"], str)
    audio[100:200] = np.nan
    with pytest.raises(ValueError, match=r"input_features of utterance\(s\) \[0\] contain NaN or Inf"):
        asr(audio)


def resample_to_16k(speech_clips):
    from hf_dynasr.data import load_audio

    return load_audio(str(speech_clips["hello world"]))


# --- item 8: loading checks config against the weights before allocating --------------------------------------

def _edited(path, dest, *, weights=None, config=None):
    """A copy of checkpoint `path` at `dest` with its tensors passed through `weights` and its config through
    `config` (functions editing and returning them)."""
    shutil.copytree(path, dest)
    if weights is not None:
        save_file(weights(load_file(dest / "model.safetensors")), dest / "model.safetensors", metadata={"format": "pt"})
    if config is not None:
        (dest / "config.json").write_text(json.dumps(config(json.loads((dest / "config.json").read_text()))))
    return dest


def _no_model_built(monkeypatch):
    from hf_dynasr import DynaSRForCTC

    built = []
    real = DynaSRForCTC.__init__

    def spy(self, config):
        built.append(len(config.architecture_spec))
        real(self, config)

    monkeypatch.setattr(DynaSRForCTC, "__init__", spy)
    return built


def test_whole_model_and_size_loading_check_the_weights(saved, tmp_path, monkeypatch):
    from hf_dynasr import DynaSRForCTC
    from hf_dynasr.models.dynasr.loading_dynasr import CheckpointFormatError

    path, _ = saved
    key = "dynasr.frontend.conv1.weight"  # every size needs it
    missing = _edited(path, tmp_path / "missing", weights=lambda sd: {k: v for k, v in sd.items() if k != key})
    with pytest.raises(CheckpointFormatError, match=rf"1 tensor\(s\) the config needs are missing from the weights "
                                                    rf"of .*missing: \['{key}'\]\. They are not filled with random"):
        DynaSRForCTC.from_pretrained(missing)
    with pytest.raises(CheckpointFormatError, match=f"tensor '{key}' .* is missing from the weights"):
        DynaSRForCTC.from_pretrained(missing, subnet="small")

    def fewer_blocks(config):
        config["architecture_spec"] = config["architecture_spec"][:2]
        config["num_hidden_layers"], config["subnets"] = 2, {}
        return config

    extra = _edited(path, tmp_path / "extra", config=fewer_blocks)
    with pytest.raises(CheckpointFormatError, match=r"hold \d+ tensor\(s\) config.json has no place for: "
                                                    r"\['dynasr\.layers\.2\."):
        DynaSRForCTC.from_pretrained(extra)

    int8 = _edited(path, tmp_path / "int8",
                   weights=lambda sd: {k: (v * 50).to(torch.int8) if v.is_floating_point() else v for k, v in sd.items()})
    for kwargs in ({}, {"subnet": "small"}):
        with pytest.raises(CheckpointFormatError, match=r"tensor 'dynasr\..*' in .*int8 is stored as I8 but the "
                                                        r"model's is float32: quantized or integer"):
            DynaSRForCTC.from_pretrained(int8, **kwargs)

    def huge(config):
        config["architecture_spec"] = config["architecture_spec"][:1] * 20_000
        config["num_hidden_layers"] = 20_000
        return config

    absurd = _edited(path, tmp_path / "absurd", config=huge)
    built = _no_model_built(monkeypatch)
    for kwargs in ({}, {"subnet": "small"}):
        with pytest.raises(CheckpointFormatError, match=r"config.json of .*absurd describes at least "
                                                        r"[\d,]{13,} parameters \(20000 blocks .*Refused before "
                                                        r"allocating"):
            DynaSRForCTC.from_pretrained(absurd, **kwargs)
    assert built == []  # not even on the meta device

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(path / "config.json", no_weights / "config.json")
    with pytest.raises(CheckpointFormatError, match=r"no model\.safetensors or model\.safetensors\.index\.json "
                                                    r"found in .*no_weights"):
        DynaSRForCTC.from_pretrained(no_weights)


def test_pickled_whole_model_is_refused_without_torch_load(saved, tmp_path, monkeypatch):
    from hf_dynasr import DynaSRForCTC
    from hf_dynasr.models.dynasr.loading_dynasr import CheckpointFormatError

    path, model = saved
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(path / "config.json", folder / "config.json")
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a))
    with pytest.raises(CheckpointFormatError, match=r"holds pickled weights \(pytorch_model\.bin\), not "
                                                    r"model\.safetensors; hf_dynasr loads only safetensors"):
        DynaSRForCTC.from_pretrained(folder)
    assert calls == []


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_checkpoint_loads_and_runs(saved, tmp_path, dtype):
    from hf_dynasr import DynaSRForCTC

    _, model = saved
    half = tmp_path / "half"
    copy.deepcopy(model).to(dtype).save_pretrained(half)
    x = torch.randn(2, 120, 80, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 120, dtype=torch.long)
    mask[1, 90:] = 0
    with torch.no_grad():
        reference = model.extract_subnet("small").eval()(x, mask).logits
        for kwargs in ({"subnet": "small"}, {}):
            loaded = DynaSRForCTC.from_pretrained(half, **kwargs)
            assert loaded.dtype == dtype and loaded.config.active_subnet == kwargs.get("subnet")
            logits = loaded(x, mask).logits  # float32 features into a half-precision model
            assert logits.dtype == dtype and torch.isfinite(logits).all()
            if kwargs:
                torch.testing.assert_close(logits.float(), reference, atol=0.1, rtol=0.05)


# --- from item 9: odd corpus files ---------------------------------------------------------------------------

def _prepare(folder, processor):
    from hf_dynasr.data import load_speech_dataset, prepare_dataset

    ds = load_speech_dataset(f"audiofolder:{folder}")
    return prepare_dataset(ds, processor.feature_extractor, processor.tokenizer)


def _alarm(seconds):
    def timeout(*_):
        raise TimeoutError(f"no answer in {seconds} s: a read blocked")

    signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)


def test_fifo_truncated_wav_digits_and_overflow_are_counted(speech_clips, tmp_path, processor):
    from hf_dynasr.data import load_audio
    from hf_dynasr.data.audio import AudioDecodeError, TruncatedAudioError

    folder = tmp_path / "corpus"
    folder.mkdir()
    shutil.copy(speech_clips["hello world"], folder / "good.wav")
    os.mkfifo(folder / "x.flac")
    audio, rate = _speech(speech_clips, "open the door")
    sf.write(folder / "cut.wav", audio, rate, subtype="PCM_16")
    size = (folder / "cut.wav").stat().st_size
    with open(folder / "cut.wav", "r+b") as f:
        f.truncate(size // 2)
    shutil.copy(speech_clips["a red cat"], folder / "cats.wav")
    # a WAV streamed to a pipe has no length in its header (0xFFFFFFFF): read whole, not "truncated"
    streamed = bytearray((folder / "good.wav").read_bytes())
    data_at = streamed.index(b"data")
    streamed[data_at + 4:data_at + 8] = struct.pack("<I", 0xFFFFFFFF)
    (folder / "streamed.wav").write_bytes(bytes(streamed))
    sf.write(folder / "loud.wav", np.full(16000, 1e30, np.float32), 16000, subtype="FLOAT")  # finite, but huge
    _audiofolder(folder, [("good.wav", "hello world"), ("x.flac", "a fifo"), ("cut.wav", "open the door"),
                          ("cats.wav", "I have 3 cats"), ("streamed.wav", "hello world"), ("loud.wav", "too loud")])

    _alarm(60)
    try:
        with pytest.raises(AudioDecodeError, match="x.flac is not a regular file"):
            load_audio(str(folder / "x.flac"))
        prepared, report = _prepare(folder, processor)
    finally:
        signal.alarm(0)
    with pytest.raises(TruncatedAudioError, match=r"truncated: the WAV header declares \d+ frames, the file holds"):
        load_audio(str(folder / "cut.wav"))
    np.testing.assert_array_equal(load_audio(str(folder / "streamed.wav")), load_audio(str(folder / "good.wav")))
    assert report.counts["unreadable_audio"] == 1 and "not a regular file" in report.details["unreadable_audio"][0]
    assert report.examples["truncated_audio"] == [str(folder / "cut.wav")]
    assert report.counts["oov_characters"] == 1
    assert report.details["non_finite_audio"] == ["non-finite features (peak sample 1e+30)"]
    assert report.details["oov_characters"] == ["'3': spell numbers out (3 -> three)"]
    assert sorted(prepared["text"]) == ["hello world", "hello world"]  # never "i have cats"


def test_symlink_escape_and_empty_metadata_are_refused(speech_clips, tmp_path):
    from hf_dynasr.data import load_speech_dataset

    outside = tmp_path / "outside.wav"
    shutil.copy(speech_clips["hello world"], outside)
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "link.wav").symlink_to(outside)
    _audiofolder(folder, [("link.wav", "hello world")])
    with pytest.raises(ValueError, match=r"audio path 'link.wav' in .*metadata.csv escapes its folder .* through a "
                                         r"symbolic link \(it resolves to .*outside.wav\)"):
        load_speech_dataset(f"audiofolder:{folder}")
    inside = tmp_path / "inside"
    shutil.copytree(folder, inside, symlinks=True)
    (inside / "link.wav").unlink()
    shutil.copy(outside, inside / "real.wav")
    (inside / "link.wav").symlink_to(inside / "real.wav")  # a link within the folder is fine
    assert load_speech_dataset(f"audiofolder:{inside}")["text"] == ["hello world"]

    for content in ("", "file_name,transcription\n"):
        (folder / "metadata.csv").write_text(content)
        with pytest.raises(ValueError, match=r"metadata.csv lists no utterance \(it is empty or has only a header\); "
                                             r"add one line per audio file") as err:
            load_speech_dataset(f"audiofolder:{folder}")
        assert "_column" not in str(err.value)  # no option that train.py does not have
    table = tmp_path / "table.csv"
    table.write_text("name,words\nreal.wav,hello\n")
    with pytest.raises(ValueError, match=r"no audio column in .*table.csv .*rename its audio column to one of"):
        load_speech_dataset(f"csv:{table}")


def test_a_file_listed_twice_is_read_once(speech_clips, tmp_path, caplog):
    from hf_dynasr.data import load_speech_dataset

    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, text in (("a.wav", "hello world"), ("b.wav", "open the door"), ("c.wav", "good morning")):
        shutil.copy(speech_clips[text], folder / name)
    _audiofolder(folder, [("a.wav", "hello world"), ("b.wav", "open the door"), ("a.wav", "yellow world"),
                          ("b.wav", "Open the door!"), ("c.wav", "good morning")])
    spec = f"audiofolder:{folder}"
    with caplog.at_level("WARNING", logger="hf_dynasr.data.loading"):
        kept = load_speech_dataset(spec, duplicates="drop")
    assert kept["text"] == ["open the door", "good morning"]  # a.wav: which transcript is right? neither kept
    assert "1 audio file(s) listed with different transcripts (2 rows), all dropped" in caplog.text
    assert "'hello world' / 'yellow world'" in caplog.text
    assert "1 repeated listing(s) of an audio file with the same transcript dropped" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_dynasr.data.loading"):
        assert len(load_speech_dataset(spec)) == 5  # the library default keeps the rows as listed, with a warning
    assert "listed with different transcripts (2 rows), kept as listed" in caplog.text
    with pytest.raises(ValueError, match="duplicates must be 'keep' or 'drop'"):
        load_speech_dataset(spec, duplicates="first")
