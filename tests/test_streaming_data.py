"""The data paths for corpora that do not fit a feature cache (hf_dynasr.data.streaming, --data_pipeline):
features computed in DataLoader workers equal the precomputed ones, the header index is an Arrow cache that a
changed corpus invalidates, the stream gives each process its own shard and resumes at the same position, bad
rows are counted wherever they are found, and training runs and resumes bitwise on both paths."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import run_train, train_in_process
from safetensors.torch import load_file
from test_training import DDP_LAUNCHER, SMOKE

from hf_dynasr.data import load_speech_dataset, prepare_dataset
from hf_dynasr.data.prepare import preparation_options
from hf_dynasr.data.processing import build_processor
from hf_dynasr.data.streaming import (
    OnTheFlyCollator,
    OnTheFlySpeechDataset,
    StreamingSpeechBatches,
    index_corpus,
    is_placeholder,
)


@pytest.fixture(scope="module")
def processor():
    return build_processor()


@pytest.fixture
def options(processor):
    return preparation_options(processor.feature_extractor, processor.tokenizer, min_duration_s=0.3,
                               max_duration_s=20.0)


@pytest.fixture
def bad_corpus(smoke_corpus, tmp_path):
    """The smoke corpus's train split plus a missing file, a FIFO named .flac (a header read would block) and a
    float WAV with NaN samples (its header is fine: only decoding finds it)."""
    folder = tmp_path / "corpus"
    shutil.copytree(smoke_corpus / "train", folder / "train")
    shutil.copytree(smoke_corpus / "dev", folder / "dev")
    sf.write(folder / "train" / "nan.wav", np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    os.mkfifo(folder / "train" / "fifo.flac")
    with open(folder / "train" / "metadata.csv", "a", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        for name in ("nan.wav", "missing.flac", "fifo.flac"):
            writer.writerow([name, "a bad row"] + [""] * 5)
    return folder


def _paths(index):
    return [a["path"] for a in index.with_format(None)["audio"]]


def test_on_the_fly_items_equal_precomputed_features(smoke_corpus, processor, options, tmp_path):
    """Each item the workers compute is the precomputed path's row, bit for bit (features and labels)."""
    raw = load_speech_dataset(f"audiofolder:{smoke_corpus}", split="train")
    index, report = index_corpus(raw, options, cache_dir=str(tmp_path))
    pre, pre_report = prepare_dataset(raw, processor.feature_extractor, processor.tokenizer, min_duration_s=0.3,
                                      max_duration_s=20.0)
    assert report.total_kept == pre_report.total_kept == len(index) == len(pre) > 20
    assert abs(report.kept_seconds - pre_report.kept_seconds) < 0.05 * len(index)  # header vs decoded lengths
    dataset = OnTheFlySpeechDataset(index, options)
    pre = pre.with_format("numpy")
    for i in (0, len(index) // 2, len(index) - 1):
        item = dataset[i]
        assert np.array_equal(item["input_features"], pre[i]["input_features"])
        assert list(item["labels"]) == list(pre[i]["labels"])


def test_index_counts_bad_rows_without_decoding_and_is_a_cache(bad_corpus, options, tmp_path):
    """Missing and FIFO rows are counted when the index is built (the FIFO does not hang it); the NaN file
    passes (its header is valid) and is counted by the worker that decodes it. The index is an Arrow file
    reused as long as the corpus is unchanged and rebuilt when a file changes."""
    raw = load_speech_dataset(f"audiofolder:{bad_corpus}", split="train")
    index, report = index_corpus(raw, options, cache_dir=str(tmp_path))
    assert report.counts["missing_audio"] == 1 and report.counts["unreadable_audio"] == 1
    assert "not a regular file" in report.details["unreadable_audio"][0]
    assert any(p.endswith("nan.wav") for p in _paths(index))
    cache = index.cache_files[0]["filename"]
    assert cache.startswith(str(tmp_path)) and cache.endswith(".arrow")

    again, _ = index_corpus(load_speech_dataset(f"audiofolder:{bad_corpus}", split="train"), options,
                            cache_dir=str(tmp_path))
    assert again.cache_files[0]["filename"] == cache

    first = bad_corpus / "train" / _paths(index)[0].rsplit("/", 1)[1]
    sf.write(first, np.zeros(8 * 16000, np.float32), 16000)  # the same name, other audio (8 s)
    changed, _ = index_corpus(load_speech_dataset(f"audiofolder:{bad_corpus}", split="train"), options,
                              cache_dir=str(tmp_path))
    assert changed.cache_files[0]["filename"] != cache
    durations = dict(zip(_paths(changed), changed.with_format(None)["duration"]))
    assert durations[str(first)] == pytest.approx(8.0)

    dataset = OnTheFlySpeechDataset(index, options)
    collate = OnTheFlyCollator(options["feature_extractor"], options["n_mels"])
    nan_row = next(i for i, p in enumerate(_paths(index)) if p.endswith("nan.wav"))
    batch = collate([dataset[nan_row], dataset[1 if nan_row != 1 else 2]])
    assert batch["input_features"].shape[0] == 1
    assert [d[0] for d in batch["data_report"]["dropped"]] == ["non_finite_audio"]
    empty = collate([dataset[nan_row]])
    assert empty["input_features"].shape[0] == 0 and empty["data_report"]["kept"] == 0


def _stream(corpus, options, **kwargs):
    raw = load_speech_dataset(f"audiofolder:{corpus}", split="train")
    collate = OnTheFlyCollator(options["feature_extractor"], options["n_mels"])
    return StreamingSpeechBatches(raw.to_iterable_dataset(num_shards=8), options, collate,
                                  max_batch_seconds=8.0, seed=3, shuffle_buffer=16, bucket_size=12, **kwargs), raw


def _first_pass(stream):
    """The rows of each batch of the first pass of a shard (by path), and the drops reported with them."""
    seen, drops = [], []
    for rows, dropped, stream_pass in stream.batch_plan():
        if stream_pass:
            break
        seen.append([audio["path"] for audio, _, _ in rows])
        drops += dropped
    return seen, drops


def test_stream_shards_are_disjoint_and_bounded(bad_corpus, options):
    """Two processes read disjoint shards that together hold every usable row once per pass; every batch keeps
    its padded size within max_batch_seconds; the missing and FIFO rows are counted with the batches."""
    shards, drops = [], []
    for rank in (0, 1):
        stream, raw = _stream(bad_corpus, options, rank=rank, world_size=2)
        batches, dropped = _first_pass(stream)
        shards.append({p for b in batches for p in b})
        drops += dropped
        for rows, _, stream_pass in stream.batch_plan():
            if stream_pass == 2:
                break
            assert len(rows) * max(d for _, _, d in rows) <= 8.0 or len(rows) == 1
    assert not shards[0] & shards[1]
    usable = {p for p in raw["path"] if not p.endswith(("missing.flac", "fifo.flac"))}
    assert shards[0] | shards[1] == usable
    assert sorted(d[0] for d in drops) == ["missing_audio", "unreadable_audio"]


def test_stream_resumes_at_the_same_position_with_workers(smoke_corpus, options):
    """With two DataLoader workers, the batches after skipping the first k are the uninterrupted run's batches
    k, k+1, ... (the workers skip their share without decoding), across the end of a pass."""
    stream, _ = _stream(smoke_corpus, options)

    def batches(count):
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
        return [b for _, b in zip(range(count), (b for b in loader if not is_placeholder(b)))]

    full = batches(14)
    stream.skip_batches = 5
    resumed = batches(9)
    assert len(resumed) == 9
    for a, b in zip(full[5:], resumed):
        assert torch.equal(a["input_features"], b["input_features"]) and torch.equal(a["labels"], b["labels"])


def _weights(run_dir):
    return load_file(str(run_dir / "final" / "model.safetensors"))


@pytest.mark.parametrize("pipeline", ["on_the_fly", "streaming"])
def test_training_resumes_bitwise_on_the_fly_and_streaming(smoke_corpus, tmp_path, pipeline):
    """A run resumed from its step-3 checkpoint ends with the uninterrupted run's weights, bit for bit, with
    features computed in a DataLoader worker (on_the_fly) or read from the stream."""
    common = ["--config", SMOKE, "--train_data", f"audiofolder:{smoke_corpus}", "--eval_data",
              f"audiofolder:{smoke_corpus}", "--max_steps", 6, "--save_steps", 3, "--save_total_limit", 3,
              "--data_pipeline", pipeline, "--dataloader_num_workers", 1, "--max_eval_utterances", 2]
    whole, part = tmp_path / "whole", tmp_path / "part"
    train_in_process([*common, "--output_dir", whole])
    shutil.copytree(whole / "checkpoints" / "step_3", part / "checkpoints" / "step_3")
    for name in ("training_args.json",):
        shutil.copy(whole / name, part / name)
    train_in_process([*common, "--output_dir", part, "--resume_from_checkpoint", "latest"])
    a, b = _weights(whole), _weights(part)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    report = json.loads((whole / "data_report.json").read_text())
    assert report["train_workers"]["pipeline"] == pipeline and report["train_workers"]["kept_reads"] > 0


def test_two_process_streaming_run_counts_bad_rows(bad_corpus, tmp_path):
    """A real 2-process accelerate launch on the stream: each process reads its own shard, the run finishes, and
    data_report.json sums what both processes dropped (the NaN file, the missing file and the FIFO)."""
    out = tmp_path / "ddp"
    run_train(["--config", SMOKE, "--train_data", f"audiofolder:{bad_corpus}", "--eval_data",
               f"audiofolder:{bad_corpus}", "--max_steps", 12, "--output_dir", out, "--num_processes", 2,
               "--data_pipeline", "streaming", "--max_eval_utterances", 2, "--max_batch_seconds", 6],
              launcher=DDP_LAUNCHER, env={"ACCELERATE_USE_CPU": "1"})
    counts = json.loads((out / "data_report.json").read_text())["train_workers"]["counts"]
    assert counts["missing_audio"] >= 1 and counts["unreadable_audio"] >= 1 and counts["non_finite_audio"] >= 1
    assert (out / "final" / "model.safetensors").is_file()
