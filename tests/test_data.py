"""hf_dynasr.data.loading on real (espeak-ng) speech in audiofolder, LibriSpeech, CSV and streaming layouts."""

import csv
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

datasets = pytest.importorskip("datasets")

from hf_dynasr.data import (  # noqa: E402
    DROP_REASONS,
    DataCollatorCTCWithPadding,
    DurationBatchSampler,
    FilterReport,
    ctc_output_length,
    load_audio,
    load_speech_dataset,
    normalize_text,
    prepare_dataset,
    resample,
)
from hf_dynasr.data import build_feature_extractor, build_tokenizer  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _isolated_hf_cache(tmp_path_factory):
    """Keep load_dataset's arrow cache of the tmp corpora out of ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_cache")))
        yield


@pytest.fixture(scope="module")
def fe():
    return build_feature_extractor()


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _speech(clips, text):
    x, sr = sf.read(clips[text], dtype="float32")
    return x, sr


def _write_csv(path, rows, header=("file_name", "transcription")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


# One row per filter case; (file, text, expected reason or "" when kept).
@pytest.fixture(scope="module")
def mixed_csv(speech_clips, tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    (root / "audio").mkdir()
    a = lambda name: f"audio/{name}"  # noqa: E731 - paths relative to the CSV's folder
    shutil.copy(speech_clips["hello world"], root / "audio/good0.wav")
    shutil.copy(speech_clips["open the door"], root / "audio/good1.wav")
    x, sr = _speech(speech_clips, "good morning")
    x44 = resample(x, sr, 44100)
    sf.write(root / "audio/stereo44k.wav", np.stack([x44, 0.5 * x44], axis=1), 44100)
    x, sr = _speech(speech_clips, "a red cat")
    sf.write(root / "audio/tel8k.flac", resample(x, sr, 8000), 8000)
    (root / "audio/corrupt.flac").write_bytes(b"fLaC\x00\x00 definitely not audio" * 20)
    sf.write(root / "audio/empty.wav", np.zeros(0, np.float32), 16000)
    nan = np.full(16000, 0.1, np.float32)
    nan[500] = np.nan
    sf.write(root / "audio/nan.wav", nan, 16000, subtype="FLOAT")
    t = np.arange(int(0.3 * 16000)) / 16000
    sf.write(root / "audio/tone_short.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    sf.write(root / "audio/tiny.wav", np.full(800, 0.1, np.float32), 16000)
    rng = np.random.default_rng(0)
    sf.write(root / "audio/long_noise.wav", (0.05 * rng.standard_normal(6 * 16000)).astype(np.float32), 16000)
    rows = [
        (a("good0.wav"), "Hello, World!", ""),
        (a("good1.wav"), "open the door", ""),
        (a("stereo44k.wav"), "GOOD morning", ""),
        (a("tel8k.flac"), "a red cat", ""),
        (a("missing.wav"), "come back soon", "missing_audio"),
        (a("corrupt.flac"), "she sells shells", "unreadable_audio"),
        (a("good0.wav"), "", "empty_transcript"),
        (a("good1.wav"), "open the door 42", "oov_characters"),
        (a("tone_short.wav"), "this transcript is far too long for so little audio", "ctc_infeasible"),
        (a("long_noise.wav"), "a long noise", "too_long"),
        (a("empty.wav"), "nothing here", "empty_audio"),
        (a("nan.wav"), "not a number", "non_finite_audio"),
        (a("tiny.wav"), "tiny", "too_short"),
    ]
    _write_csv(root / "data.csv", [r[:2] for r in rows], header=("audio", "text"))
    return root / "data.csv", rows


KEEP_DIGITS = {"keep": "a-z0-9' "}  # so the digits reach prepare_dataset's OOV policy


def test_normalize_text():
    assert normalize_text("Don't   STOP -- it's well-known, Café!") == "don't stop it's well known cafe"
    assert normalize_text("‘Quoted’ rock 'n' roll\tnow") == "quoted rock n roll now"
    assert normalize_text("Room 101") == "room"
    assert normalize_text("Room 101", **KEEP_DIGITS) == "room 101"
    assert normalize_text("a+b", unknown="space") == "a b"
    assert normalize_text("MiXeD", lowercase=False, keep="A-Za-z") == "MiXeD"
    assert normalize_text(None) == ""


def test_load_audio_converts_to_16k_mono(mixed_csv, speech_clips):
    root = mixed_csv[0].parent
    ref, ref_sr = _speech(speech_clips, "good morning")
    stereo = load_audio(str(root / "audio/stereo44k.wav"))
    assert stereo.dtype == np.float32 and stereo.ndim == 1
    assert abs(len(stereo) - len(ref) * 16000 / ref_sr) <= 2
    tel = load_audio({"path": str(root / "audio/tel8k.flac"), "bytes": None})
    x, sr = _speech(speech_clips, "a red cat")
    assert abs(len(tel) - len(x) * 16000 / sr) <= 2
    from_bytes = load_audio({"bytes": (root / "audio/tel8k.flac").read_bytes(), "path": None})
    np.testing.assert_allclose(from_bytes, tel)
    # the resampler is band-limited: a 300 Hz tone survives 8k -> 16k
    tone = np.sin(2 * np.pi * 300 * np.arange(8000) / 8000).astype(np.float32)
    up = resample(tone, 8000, 16000)
    np.testing.assert_allclose(up[100:-100], np.sin(2 * np.pi * 300 * np.arange(16000) / 16000)[100:-100], atol=2e-3)


def test_prepare_csv_filter_counts(mixed_csv, fe, tok):
    csv_path, rows = mixed_csv
    ds = load_speech_dataset(f"csv:{csv_path}", normalize=KEEP_DIGITS)
    assert {"audio", "text", "path"} <= set(ds.column_names)
    assert ds[0]["text"] == "hello world" and ds[2]["text"] == "good morning"
    assert ds[0]["path"] == str(csv_path.parent / "audio/good0.wav")

    prepared, report = prepare_dataset(ds, fe, tok, min_duration_s=0.1, max_duration_s=5.0)
    expected = {r: 0 for r in DROP_REASONS}
    for *_, reason in rows:
        if reason:
            expected[reason] += 1
    assert report.counts == expected
    assert report.total_kept == 4 == len(prepared) and report.total_dropped == len(rows) - 4
    assert report.examples["missing_audio"] == [str(csv_path.parent / "audio/missing.wav")]
    assert report.examples["unreadable_audio"] == [str(csv_path.parent / "audio/corrupt.flac")]
    text = str(report)
    assert "missing_audio: 1" in text and "ctc_infeasible: 1" in text
    assert report.to_dict()["counts"]["too_long"] == 1

    assert prepared["text"] == ["hello world", "open the door", "good morning", "a red cat"]
    inv = {i: t for t, i in tok.get_vocab().items()}
    for row in prepared.with_format("numpy"):
        feats = row["input_features"]
        assert feats.shape == (row["input_length"], 80) and feats.dtype == np.float32
        assert np.isfinite(feats).all()
        assert "".join(inv[int(i)] for i in row["labels"]).replace("|", " ") == row["text"]
        assert abs(row["input_length"] - row["duration"] * 100) <= 1
        assert len(row["labels"]) <= ctc_output_length(row["input_length"])
    # stereo 44.1 kHz and 8 kHz clips were converted: same length as their 22.05 kHz sources
    for name, text in (("stereo44k.wav", "good morning"), ("tel8k.flac", "a red cat")):
        row = prepared[prepared["text"].index(text)]
        info = sf.info(str(csv_path.parent / "audio" / name))
        assert row["input_length"] == int(info.duration * 16000) // 160


@pytest.mark.parametrize("oov", ["remove", "unk"])
def test_prepare_oov_policies(mixed_csv, fe, tok, oov):
    ds = load_speech_dataset(f"csv:{mixed_csv[0]}", normalize=KEEP_DIGITS).select([1, 7])  # clean + digits
    prepared, report = prepare_dataset(ds, fe, tok, oov=oov)
    assert report.total_kept == 2 and report.counts["oov_characters"] == 0
    row = prepared[1]
    if oov == "remove":
        assert row["text"] == "open the door"
        assert row["labels"] == prepared[0]["labels"]
    else:
        assert row["text"] == "open the door 42"
        assert row["labels"][-2:] == [tok.unk_token_id] * 2


def test_prepare_num_proc_matches(mixed_csv, fe, tok):
    ds = load_speech_dataset(f"csv:{mixed_csv[0]}", normalize=KEEP_DIGITS)
    single, r1 = prepare_dataset(ds, fe, tok, max_duration_s=5.0)
    multi, r2 = prepare_dataset(ds, fe, tok, max_duration_s=5.0, num_proc=2, batch_size=4)
    assert r1.counts == r2.counts and r1.total_kept == r2.total_kept
    assert multi["labels"] == single["labels"]
    np.testing.assert_allclose(np.asarray(multi[3]["input_features"]), np.asarray(single[3]["input_features"]))


def test_csv_paths_must_stay_inside_root(tmp_path, speech_clips):
    (tmp_path / "sub").mkdir()
    shutil.copy(speech_clips["hello world"], tmp_path / "outside.wav")
    _write_csv(tmp_path / "sub/data.csv", [("../outside.wav", "hello world")])
    with pytest.raises(ValueError, match="escapes"):
        load_speech_dataset(f"csv:{tmp_path / 'sub/data.csv'}")


def test_unknown_spec_lists_forms():
    with pytest.raises(ValueError, match="librispeech:"):
        load_speech_dataset("ftp://example.org/corpus")
    with pytest.raises(ValueError, match="audiofolder"):
        load_speech_dataset({"type": "s3", "path": "x"})


@pytest.fixture(scope="module")
def audiofolder_root(speech_clips, tmp_path_factory):
    """root/train (3 clips) and root/dev (1 clip) with metadata.csv."""
    root = tmp_path_factory.mktemp("af")
    texts = list(speech_clips)
    for split, chosen in (("train", texts[:3]), ("dev", texts[3:4])):
        (root / split).mkdir()
        rows = []
        for i, text in enumerate(chosen):
            shutil.copy(speech_clips[text], root / split / f"utt{i}.wav")
            rows.append((f"utt{i}.wav", text.upper() + "."))
        _write_csv(root / split / "metadata.csv", rows)
    return root


def test_audiofolder_layouts(audiofolder_root, speech_clips):
    pytest.importorskip("torchcodec")
    texts = list(speech_clips)
    ds = load_speech_dataset(f"audiofolder:{audiofolder_root / 'train'}")
    assert isinstance(ds, datasets.Dataset) and len(ds) == 3
    assert ds["text"] == texts[:3]
    assert ds[0]["path"] == str(audiofolder_root / "train/utt0.wav")
    assert ds.features["audio"].sampling_rate == 16000
    audio = ds[0]["audio"]
    x, sr = _speech(speech_clips, texts[0])
    assert audio["sampling_rate"] == 16000 and audio["array"].dtype == np.float32 and audio["array"].ndim == 1
    assert abs(len(audio["array"]) - len(x) * 16000 / sr) <= 16
    # a plain directory, a split subdirectory, and the hub code path (offline, via the audiofolder builder)
    assert load_speech_dataset(str(audiofolder_root / "train"))["text"] == texts[:3]
    assert load_speech_dataset(f"audiofolder:{audiofolder_root}", split="dev")["text"] == texts[3:4]
    assert load_speech_dataset(str(audiofolder_root))["text"] == texts[:3]  # root -> train
    hub = load_speech_dataset({"type": "hub", "path": "audiofolder", "data_dir": str(audiofolder_root / "dev")})
    assert hub["text"] == texts[3:4] and "path" in hub.column_names


def test_audiofolder_streaming_and_lazy_report(audiofolder_root, speech_clips, fe, tok):
    pytest.importorskip("torchcodec")
    ds = load_speech_dataset(f"audiofolder:{audiofolder_root}", split="train", streaming=True)
    assert isinstance(ds, datasets.IterableDataset)
    rows = list(ds)
    assert [r["text"] for r in rows] == list(speech_clips)[:3]
    assert rows[0]["path"].endswith("utt0.wav") and rows[0]["audio"]["sampling_rate"] == 16000
    prepared, report = prepare_dataset(ds, fe, tok)
    out = list(prepared)
    assert len(out) == 3 and report.total_kept == 3 and report.total_dropped == 0 and report.streaming
    assert np.asarray(out[0]["input_features"]).shape[1] == 80 and out[0]["labels"]


@pytest.fixture(scope="module")
def librispeech_root(speech_clips, tmp_path_factory):
    """LibriSpeech/dev-clean/<spk>/<chapter>/ with FLACs at 16 kHz and uppercase transcripts."""
    root = tmp_path_factory.mktemp("ls") / "LibriSpeech"
    texts = list(speech_clips)
    for spk, chapter, chosen in (("84", "121123", texts[:2]), ("174", "50561", texts[2:4])):
        folder = root / "dev-clean" / spk / chapter
        folder.mkdir(parents=True)
        lines = []
        for i, text in enumerate(chosen):
            utt = f"{spk}-{chapter}-{i:04d}"
            x, sr = _speech(speech_clips, text)
            sf.write(folder / f"{utt}.flac", resample(x, sr, 16000), 16000)
            lines.append(f"{utt} {text.upper()}\n")
        (folder / f"{spk}-{chapter}.trans.txt").write_text("".join(lines))
    return root


def test_librispeech_layout(librispeech_root, speech_clips, fe, tok):
    texts = list(speech_clips)
    ds = load_speech_dataset(f"librispeech:{librispeech_root}")
    assert len(ds) == 4 and sorted(ds["text"]) == sorted(texts[:4])
    row = ds[ds["id"].index("84-121123-0001")]
    assert row["text"] == texts[1] and row["speaker_id"] == "84" and row["path"].endswith("84-121123-0001.flac")
    assert load_speech_dataset(f"librispeech:{librispeech_root}", split="dev-clean")["id"] == ds["id"]
    assert load_speech_dataset(str(librispeech_root / "dev-clean"))["id"] == ds["id"]  # auto-detected
    prepared, report = prepare_dataset(ds, fe, tok)
    assert report.total_kept == 4 and report.total_dropped == 0

    stream = load_speech_dataset(f"librispeech:{librispeech_root}", streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    assert [r["id"] for r in stream] == ds["id"]


def test_ctc_output_length_matches_model_frontend():
    assert [ctc_output_length(t) for t in (0, 3, 4, 7, 8, 401)] == [0, 0, 1, 1, 2, 100]
    try:
        from hf_dynasr.models.dynasr.frontend_dynasr import subsampled_lengths
    except ImportError:
        pytest.skip("model frontend not available")
    t = torch.arange(0, 300)
    assert torch.equal(subsampled_lengths(t), ctc_output_length(t))


def test_duration_batch_sampler():
    rng = np.random.default_rng(0)
    lengths = rng.uniform(0.5, 15.0, size=400).tolist()
    s = DurationBatchSampler(lengths, max_batch_seconds=60.0, seed=3)
    batches = list(s)
    assert len(batches) == len(s)
    assert sorted(i for b in batches for i in b) == list(range(400))
    for b in batches:
        assert sum(lengths[i] for i in b) <= 60.0
        assert len(b) * max(lengths[i] for i in b) <= 60.0
    assert list(DurationBatchSampler(lengths, 60.0, seed=3)) == batches  # deterministic for (seed, epoch)
    s.set_epoch(1)
    epoch1 = list(s)
    assert epoch1 != batches and len(epoch1) == len(s)
    assert list(DurationBatchSampler(lengths, 60.0, seed=4)) != batches
    # length grouping: padding waste is small
    waste = sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)
    assert waste / sum(lengths) < 0.1
    # no shuffle: sorted by length, an over-long item gets its own batch
    s2 = DurationBatchSampler([1.0, 5.0, 2.0, 100.0], 6.0, shuffle=False)
    assert list(s2) == [[0, 2], [1], [3]]


def test_duration_batch_sampler_with_dataloader_and_accelerate():
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    lengths = np.random.default_rng(1).uniform(1.0, 10.0, size=120).tolist()
    reference = DurationBatchSampler(lengths, 30.0, seed=7)
    plain = DataLoader(list(range(120)), batch_sampler=DurationBatchSampler(lengths, 30.0, seed=7),
                       collate_fn=lambda b: b)
    assert list(plain) == reference.batches(0) and len(plain) == len(reference)

    shards = []
    for rank in range(2):
        dl = DataLoader(list(range(120)), batch_sampler=DurationBatchSampler(lengths, 30.0, seed=7),
                        collate_fn=lambda b: b)
        shards.append(prepare_data_loader(dl, num_processes=2, process_index=rank, put_on_device=False,
                                          even_batches=False))
    for epoch in range(2):  # accelerate advances the epoch of the wrapped sampler itself
        got = [list(shard) for shard in shards]
        want = reference.batches(epoch)
        assert got[0] == want[0::2] and got[1] == want[1::2]
        assert [len(shard) for shard in shards] == [len(want[0::2]), len(want[1::2])]
    assert reference.batches(0) != reference.batches(1)


def test_collator_pads_features_and_labels(fe):
    rows = [
        {"input_features": np.ones((5, 80), np.float32), "labels": [4, 5, 6], "text": "x"},
        {"input_features": np.full((3, 80), 2.0, np.float32).tolist(), "labels": [7]},
    ]
    batch = DataCollatorCTCWithPadding(fe)(rows)
    assert batch["input_features"].shape == (2, 5, 80) and batch["input_features"].dtype == torch.float32
    assert batch["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    assert batch["attention_mask"].dtype == torch.long
    assert batch["labels"].tolist() == [[4, 5, 6], [7, -100, -100]]
    assert torch.all(batch["input_features"][1, 3:] == fe.padding_value)
    assert torch.all(batch["input_features"][1, :3] == 2.0)
    padded = DataCollatorCTCWithPadding(-1.0, pad_to_multiple_of=4, attention_mask_dtype=torch.bool)(rows)
    assert padded["input_features"].shape == (2, 8, 80) and padded["labels"].shape == (2, 4)
    assert padded["attention_mask"].dtype == torch.bool and padded["attention_mask"].sum().item() == 8
    assert torch.all(padded["input_features"][0, 5:] == -1.0)
    assert "labels" not in DataCollatorCTCWithPadding()([{"input_features": np.zeros((2, 80))}])


def test_end_to_end_prepared_batches(mixed_csv, fe, tok):
    ds = load_speech_dataset(f"csv:{mixed_csv[0]}")
    prepared, _ = prepare_dataset(ds, fe, tok, max_duration_s=5.0)
    sampler = DurationBatchSampler.from_dataset(prepared, max_batch_seconds=4.0, seed=0)
    loader = torch.utils.data.DataLoader(prepared.with_format("numpy"), batch_sampler=sampler,
                                         collate_fn=DataCollatorCTCWithPadding(fe))
    seen = 0
    for batch in loader:
        lengths = batch["attention_mask"].sum(1)
        assert batch["input_features"].shape[:2] == batch["attention_mask"].shape
        assert (ctc_output_length(lengths) >= (batch["labels"] != -100).sum(1)).all()
        seen += len(lengths)
    assert seen == len(prepared)


def test_filter_report_api():
    r = FilterReport(max_examples=1)
    r.add("", duration=2.0)
    r.add("too_long", "a.wav", "40 s")
    r.add("too_long", "b.wav", "50 s")
    assert r.total_kept == 1 and r.total_dropped == 2 and r.examples["too_long"] == ["a.wav"]
    assert r.to_dict()["kept_hours"] == pytest.approx(2.0 / 3600)
    assert "too_long: 2" in str(r)


def test_hub_spec_parsing():
    from hf_dynasr.data.loading import parse_spec

    assert parse_spec("hub:openslr/librispeech_asr:clean:train.100")[:4] == \
        ("hub", "openslr/librispeech_asr", "clean", "train.100")
    assert parse_spec("hub:user/ds::train[:10]")[:4] == ("hub", "user/ds", None, "train[:10]")
    assert parse_spec({"type": "hub", "path": "a/b", "name": "c", "split": "test", "revision": "main"}) == \
        ("hub", "a/b", "c", "test", {"revision": "main"})
