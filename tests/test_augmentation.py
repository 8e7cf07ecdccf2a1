"""Waveform augmentation (hf_dynasr.data.augmentation) on real speech: each family changes the audio the way it
claims (speed divides the duration by its factor, the telephone channel removes the energy above 4 kHz, noise
lands at the requested SNR, silence is low-level noise, not zeros), the result is a function of the seed and the
utterance's place in the data stream (so resumed streams match), and evaluation data is never augmented."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import build_data_args, cpu_accelerator, train_and_resume
from test_training import SMOKE

from hf_dynasr.data import load_audio, load_speech_dataset, prepare_dataset
from hf_dynasr.data.augmentation import (
    FAMILIES,
    AugmentationConfig,
    Augmenter,
    add_noise,
    babble,
    coloured_noise,
    insert_silence,
    reverberate,
    speed_perturb,
    telephone_channel,
)
from hf_dynasr.data.prepare import preparation_options
from hf_dynasr.data.processing import build_processor
from hf_dynasr.data.streaming import (
    OnTheFlyCollator,
    OnTheFlySpeechDataset,
    StreamingSpeechBatches,
    index_corpus,
    is_placeholder,
    prepare_rows,
)
from hf_dynasr.trainer.data import build_data
from hf_dynasr.trainer.options import parse_args

ALL_ON = AugmentationConfig(**{f"{family}_prob": 1.0 for family in FAMILIES})


@pytest.fixture(scope="module")
def speech(speech_clips):
    """Real espeak-ng speech at 16 kHz, one array per clip."""
    return [load_audio(str(path)) for path in speech_clips.values()]


def _band_energy(x, low_hz, high_hz, sr=16000):
    power = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(x.size, 1 / sr)
    return power[(freqs >= low_hz) & (freqs <= high_hz)].sum() / power.sum()


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_divides_duration_by_the_factor(speech, factor):
    x = speech[0]
    y = speed_perturb(x, factor)
    assert abs(y.size - x.size / factor) <= 2
    assert speed_perturb(x, 1.0) is x


@pytest.mark.parametrize("mu_law", [False, True])
def test_telephone_channel_removes_energy_above_4khz(speech, mu_law):
    x = speech[1]
    assert _band_energy(x, 4000, 8000) > 1e-3  # the wide-band clip has energy there to remove
    y = telephone_channel(x, mu_law=mu_law)
    assert y.size == x.size
    assert _band_energy(y, 4100, 8000) < 1e-5
    assert _band_energy(y, 300, 3400) > 0.9  # the speech band stays


@pytest.mark.parametrize("kind", ["white", "pink", "brown", "babble"])
@pytest.mark.parametrize("snr_db", [0.0, 12.5])
def test_noise_lands_at_the_requested_snr(speech, kind, snr_db):
    rng = np.random.default_rng(3)
    x = speech[2]
    noise = babble(x.size, speech, rng) if kind == "babble" else \
        coloured_noise(x.size, rng, {"white": 0, "pink": 1, "brown": 2}[kind])
    added = add_noise(x, noise, snr_db) - x
    measured = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(added.astype(np.float64) ** 2))
    assert abs(measured - snr_db) < 0.1


def test_coloured_noise_slopes():
    """Pink and brown noise put more of their power in the low band than white noise does."""
    rng = np.random.default_rng(0)
    low = [_band_energy(coloured_noise(32000, rng, e), 0, 500) for e in (0, 1, 2)]
    assert low[0] < 0.1 < low[1] < low[2]


def test_silence_is_low_level_noise_not_zeros(speech):
    x = speech[3]
    y = insert_silence(x, np.random.default_rng(0), edge_s=(0.3, 0.3), max_pauses=2, pause_s=(0.2, 0.2),
                       level_db=(-50.0, -50.0))
    lead = y[: int(0.3 * 16000)]
    assert y.size >= x.size + int(0.6 * 16000)
    assert np.count_nonzero(lead) == lead.size
    level = 20 * np.log10(np.sqrt(np.mean(lead.astype(np.float64) ** 2)) / np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    assert abs(level + 50) < 1.0


def test_reverberation_leaves_a_decaying_tail(speech):
    x = np.concatenate([speech[4], np.zeros(8000, np.float32)])  # speech, then half a second of silence
    y = reverberate(x, np.random.default_rng(0), rt60_s=0.6, drr_db=0.0)
    assert y.size == x.size
    end = speech[4].size
    first, later = (np.sqrt(np.mean(y[end + a:end + a + 800] ** 2)) for a in (0, 6400))
    assert first > 10 * later > 0  # energy after the speech ended, decaying


def test_augmenter_is_a_function_of_seed_and_key(speech):
    augment = Augmenter(ALL_ON, seed=1)
    a = augment(speech[0], (0, 5), speech[1:])
    assert np.array_equal(a, augment(speech[0], (0, 5), speech[1:]))
    assert not np.array_equal(a, augment(speech[0], (1, 5), speech[1:]))
    assert not np.array_equal(a, Augmenter(ALL_ON, seed=2)(speech[0], (0, 5), speech[1:]))
    assert a.dtype == np.float32 and np.abs(a).max() <= 1.0 and np.isfinite(a).all()
    assert np.array_equal(Augmenter(AugmentationConfig(), seed=1)(speech[0], (0, 5)), speech[0])


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="allowed: speed_prob"):
        AugmentationConfig.from_dict({"sped_prob": 0.5})
    with pytest.raises(ValueError, match=r"noise_prob must be a probability in \[0, 1\]"):
        AugmentationConfig.from_dict({"noise_prob": 2})
    with pytest.raises(ValueError, match="allowed white, pink, brown, babble"):
        AugmentationConfig.from_dict({"noise_kinds": ["pink", "traffic"]})
    with pytest.raises(ValueError, match="low <= high"):
        AugmentationConfig.from_dict({"noise_snr_db": [20, 5]})
    with pytest.raises(SystemExit, match="unknown augmentation option"):
        parse_args(["--augmentation", '{"sped_prob": 0.5}'])


@pytest.fixture
def options():
    processor = build_processor()
    return preparation_options(processor.feature_extractor, processor.tokenizer, min_duration_s=0.3,
                               max_duration_s=20.0)


def test_on_the_fly_items_follow_epoch_and_index(smoke_corpus, options, tmp_path):
    """Items are perturbed by (seed, epoch, index): the same in a fresh dataset (a resumed run), different in
    another epoch and from the plain item."""
    index, _ = index_corpus(load_speech_dataset(f"audiofolder:{smoke_corpus}", split="train"), options,
                            cache_dir=str(tmp_path))

    class Epoch:
        epoch = 0

    epoch = Epoch()
    augmenter = Augmenter(AugmentationConfig(noise_prob=1.0, speed_prob=1.0, speed_factors=(0.9, 1.1)), seed=0)
    first = OnTheFlySpeechDataset(index, options, augmenter, epoch_source=epoch).__getitems__([0, 1, 2])
    again = OnTheFlySpeechDataset(index, options, augmenter, epoch_source=epoch).__getitems__([0, 1, 2])
    plain = OnTheFlySpeechDataset(index, options)[0]
    epoch.epoch = 1
    later = OnTheFlySpeechDataset(index, options, augmenter, epoch_source=epoch).__getitems__([0, 1, 2])
    assert all(np.array_equal(a["input_features"], b["input_features"]) for a, b in zip(first, again))
    assert not np.array_equal(first[0]["input_features"], later[0]["input_features"])
    assert first[0]["input_features"].shape != plain["input_features"].shape  # speed 0.9 or 1.1
    assert first[0]["labels"] == plain["labels"]


def test_augmented_stream_resumes_at_the_same_audio(smoke_corpus, options):
    raw = load_speech_dataset(f"audiofolder:{smoke_corpus}", split="train")
    stream = StreamingSpeechBatches(raw.to_iterable_dataset(num_shards=4), options,
                                    OnTheFlyCollator(build_processor().feature_extractor, options["n_mels"]),
                                    max_batch_seconds=8.0, augmenter=Augmenter(ALL_ON, seed=0))

    def batches(count):
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=0)
        return [b for _, b in zip(range(count), (b for b in loader if not is_placeholder(b)))]

    full = batches(5)
    stream.skip_batches = 3
    resumed = batches(2)
    for a, b in zip(full[3:], resumed):
        assert torch.equal(a["input_features"], b["input_features"])


def test_training_data_is_augmented_and_evaluation_data_is_not(smoke_corpus, tmp_path):
    """build_data with augmentation: auto picks on_the_fly, the training items differ from the plain ones, the
    evaluation set's features equal the unaugmented preparation bit for bit; precomputed is refused."""
    common = build_data_args(smoke_corpus, tmp_path)
    augmentation = '{"noise_prob": 1.0, "telephone_prob": 1.0}'
    with cpu_accelerator() as accelerator:
        data = build_data(parse_args([*common, "--augmentation", augmentation, "--data_pipeline", "auto"]),
                          accelerator)
        plain = build_data(parse_args([*common, "--data_pipeline", "on_the_fly"]), accelerator)
        with pytest.raises(SystemExit, match="--data_pipeline on_the_fly, streaming or auto"):
            build_data(parse_args([*common, "--augmentation", augmentation, "--data_pipeline", "precomputed"]),
                       accelerator)
    assert data.pipeline == "on_the_fly"
    item, plain_item = data.loader.dataset[0], plain.loader.dataset[0]
    assert item["input_features"].shape == plain_item["input_features"].shape
    assert not np.array_equal(item["input_features"], plain_item["input_features"])
    processor = build_processor()
    dev = load_speech_dataset(f"audiofolder:{smoke_corpus}", split="dev").select(range(3))
    expected, _ = prepare_dataset(dev, processor.feature_extractor, processor.tokenizer, min_duration_s=0.0,
                                  max_duration_s=None)
    got, expected = data.eval_ds.with_format("numpy"), expected.with_format("numpy")
    assert len(got) == len(expected) == 3
    for i in range(3):
        assert np.array_equal(got[i]["input_features"], expected[i]["input_features"])


def test_augmented_training_resumes_bitwise(smoke_corpus, tmp_path):
    """A run with augmentation in a DataLoader worker, resumed from its step-3 checkpoint, ends with the
    uninterrupted run's weights bit for bit (the worker perturbs each utterance by seed, epoch and index)."""
    common = ["--config", SMOKE, "--train_data", f"audiofolder:{smoke_corpus}", "--eval_data",
              f"audiofolder:{smoke_corpus}", "--max_steps", 6, "--save_steps", 3, "--save_total_limit", 3,
              "--dataloader_num_workers", 1, "--max_eval_utterances", 2, "--augmentation",
              '{"speed_prob": 0.5, "noise_prob": 0.5, "silence_prob": 0.5, "telephone_prob": 0.5}']
    whole = train_and_resume(common, tmp_path)
    assert json.loads((whole / "data_report.json").read_text())["train_workers"]["pipeline"] == "on_the_fly"


def test_rows_that_do_not_decode_are_counted_not_augmented(speech_clips, options, tmp_path):
    """In an augmented batch a NaN file and a missing file keep their drop reasons; the good row is perturbed."""
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    good = str(speech_clips["hello world"])
    rows = [(str(nan), "a bad row"), (str(tmp_path / "missing.flac"), "gone"), (good, "hello world")]
    items = prepare_rows(rows, options, Augmenter(ALL_ON, seed=0), [(0, 0), (0, 1), (0, 2)])
    assert [item.get("dropped", ("",))[0] for item in items] == ["non_finite_audio", "missing_audio", ""]
    plain = prepare_rows(rows[2:], options)[0]
    assert items[2]["labels"] == plain["labels"]
    assert not np.array_equal(items[2]["input_features"], plain["input_features"])
