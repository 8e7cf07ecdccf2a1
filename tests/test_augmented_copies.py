"""Augmented copies with precomputed features (``--augmentation_copies``, hf_dynasr.data.augmented_copies):
each copy is the Augmenter's output for (copy, row), rows stay aligned across copies, each read draws a copy
per epoch, and training with copies reads the precomputed features and resumes bit for bit."""

import json

import numpy as np
import pytest
from conftest import build_data_args, cpu_accelerator, run_train, train_and_resume
from datasets import Audio
from test_training import DDP_LAUNCHER, SMOKE

from hf_dynasr.data import load_audio, load_speech_dataset, prepare_dataset
from hf_dynasr.data.augmentation import AugmentationConfig, Augmenter
from hf_dynasr.data.augmented_copies import AugmentedCopiesDataset, prepare_augmented_copies
from hf_dynasr.data.prepare import preparation_options, prepare_example
from hf_dynasr.data.processing import build_processor
from hf_dynasr.trainer.data import build_data
from hf_dynasr.trainer.options import parse_args

TELEPHONE = AugmentationConfig(telephone_prob=1.0, telephone_mu_law=0.0)


@pytest.fixture(scope="module")
def train_rows(smoke_corpus):
    return load_speech_dataset(f"audiofolder:{smoke_corpus}", split="train")


def _prepare(rows, config, copies, **kwargs):
    processor = build_processor()
    return prepare_augmented_copies(rows, processor.feature_extractor, processor.tokenizer,
                                    Augmenter(config, seed=0), copies, min_duration_s=0.3, **kwargs)


def test_copies_are_the_augmented_audio_and_aligned(train_rows):
    """Copy k of row i holds the features of the Augmenter's output for key (k, i), each row keeps its labels
    in every copy, and a second preparation gives the same features (deterministic, cached)."""
    processor = build_processor()
    options = preparation_options(processor.feature_extractor, processor.tokenizer, min_duration_s=0.3)
    plain, _ = prepare_dataset(train_rows, processor.feature_extractor, processor.tokenizer, min_duration_s=0.3)
    copies, report = _prepare(train_rows, TELEPHONE, 2)
    again, _ = _prepare(train_rows, TELEPHONE, 2)
    plain, copies = plain.with_format("numpy"), [c.with_format("numpy") for c in copies]
    assert len(copies[0]) == len(copies[1]) == len(plain) == report.total_kept == len(train_rows)
    augment = Augmenter(TELEPHONE, seed=0)
    for i in range(len(plain)):
        assert list(copies[0][i]["labels"]) == list(copies[1][i]["labels"]) == list(plain[i]["labels"])
        audio = load_audio(train_rows.cast_column("audio", Audio(decode=False))[i]["audio"], 16000)
        expected = prepare_example({"array": augment(audio, (1, i)), "sampling_rate": 16000}, "x", options)[1]
        assert np.allclose(copies[1][i]["input_features"], expected, atol=1e-5)
        assert not np.allclose(copies[1][i]["input_features"], plain[i]["input_features"], atol=1e-2)
    assert np.array_equal(again[1].with_format("numpy")[0]["input_features"], copies[1][0]["input_features"])


def test_copies_differ_where_the_augmentation_is_random(train_rows):
    """With speed perturbation, copy k is the Augmenter's output for key (k, row): copies of a row differ."""
    config = AugmentationConfig(speed_prob=1.0, speed_factors=(0.9, 1.1), noise_prob=1.0)
    copies, _ = _prepare(train_rows.select(range(6)), config, 3)
    rows = [c.with_format("numpy")[0]["input_features"] for c in copies]
    assert len({r.shape for r in rows}) > 1 or not np.array_equal(rows[0], rows[1])


def test_a_row_unusable_in_one_copy_is_dropped_from_all(train_rows):
    """Speed 0.5 doubles durations past --max_duration_s in the copies that draw it: those rows leave every copy,
    counted once as too_long."""
    durations = [r["duration"] for r in _prepare(train_rows, TELEPHONE, 1)[0][0]]
    limit = float(np.median(durations)) * 1.5
    config = AugmentationConfig(speed_prob=0.5, speed_factors=(0.5,))
    copies, report = _prepare(train_rows, config, 2, max_duration_s=limit)
    assert report.counts.get("too_long", 0) > 0
    assert len(copies[0]) == len(copies[1]) == report.total_kept
    assert report.total_kept + report.total_dropped == len(train_rows)
    assert all(d <= limit for c in copies for d in c["duration"])


def test_each_read_draws_a_copy_by_seed_epoch_and_row(train_rows):
    copies, _ = _prepare(train_rows, TELEPHONE, 2)

    class Epoch:
        epoch = 0

    epoch = Epoch()
    ds = AugmentedCopiesDataset(copies, seed=0, epoch_source=epoch)
    first = [ds.copy_of(i) for i in range(len(ds))]
    assert first == [AugmentedCopiesDataset(copies, seed=0).copy_of(i) for i in range(len(ds))]
    assert set(first) == {0, 1}
    epoch.epoch = 1
    assert [ds.copy_of(i) for i in range(len(ds))] != first
    batch = ds.__getitems__([3, 0, 5])
    for i, row in zip([3, 0, 5], batch):
        expected = copies[ds.copy_of(i)].with_format("numpy")[i]["input_features"]
        assert np.array_equal(row["input_features"], expected)
    with pytest.raises(ValueError, match="equal length"):
        AugmentedCopiesDataset([copies[0], copies[1].select(range(2))])


def test_copies_need_an_augmentation(train_rows):
    with pytest.raises(ValueError, match="at least one family on"):
        _prepare(train_rows, AugmentationConfig(), 1)
    with pytest.raises(ValueError, match="at least 1"):
        _prepare(train_rows, TELEPHONE, 0)


def test_build_data_picks_precomputed_copies_and_refuses_mismatches(smoke_corpus, tmp_path):
    common = build_data_args(smoke_corpus, tmp_path)
    telephone = '{"telephone_prob": 0.5}'
    with cpu_accelerator() as accelerator:
        data = build_data(parse_args([*common, "--augmentation", telephone, "--augmentation_copies", "2"]),
                          accelerator)
        with pytest.raises(SystemExit, match="--data_pipeline precomputed or auto"):
            build_data(parse_args([*common, "--augmentation", telephone, "--augmentation_copies", "2",
                                   "--data_pipeline", "on_the_fly"]), accelerator)
        with pytest.raises(SystemExit, match="needs --augmentation"):
            build_data(parse_args([*common, "--augmentation_copies", "2"]), accelerator)
        with pytest.raises(SystemExit, match="--augmentation_copies K"):
            build_data(parse_args([*common, "--augmentation", telephone, "--data_pipeline", "precomputed"]),
                       accelerator)
    assert data.pipeline == "precomputed"
    assert isinstance(data.loader.dataset, AugmentedCopiesDataset) and len(data.loader.dataset.copies) == 2


def test_training_with_copies_resumes_bitwise(smoke_corpus, tmp_path):
    """A run reading augmented copies, resumed from its step-3 checkpoint, ends with the uninterrupted run's
    weights bit for bit; the workers computed no features (no train_workers counts in data_report.json)."""
    common = ["--config", SMOKE, "--train_data", f"audiofolder:{smoke_corpus}", "--eval_data",
              f"audiofolder:{smoke_corpus}", "--max_steps", 6, "--save_steps", 3, "--save_total_limit", 3,
              "--dataloader_num_workers", 1, "--max_eval_utterances", 2, "--augmentation_copies", 2,
              "--augmentation", '{"speed_prob": 0.5, "telephone_prob": 0.5}']
    whole = train_and_resume(common, tmp_path)
    report = json.loads((whole / "data_report.json").read_text())
    assert "train_workers" not in report and report["train"]["total_kept"] > 0


def test_two_processes_read_the_copies_alike(smoke_corpus, tmp_path):
    """accelerate launch with 2 processes (gloo on CPU): the main process prepares the copies first, the other
    then finds them, the run trains from the copies to the end, and both ranks end with the same weights."""
    out = tmp_path / "ddp"
    run_train(["--config", SMOKE, "--output_dir", out, "--train_data", f"audiofolder:{smoke_corpus}", "--eval_data",
               f"audiofolder:{smoke_corpus}", "--max_steps", "6", "--save_steps", "0", "--num_processes", "2",
               "--augmentation", '{"telephone_prob": 0.5}', "--augmentation_copies", "2"],
              launcher=DDP_LAUNCHER, env={"ACCELERATE_USE_CPU": "1"})
    results = json.loads((out / "final" / "training_results.json").read_text())
    assert results["num_processes"] == 2
    checksums = results["rank_weight_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert json.loads((out / "data_report.json").read_text())["train"]["total_kept"] > 0
