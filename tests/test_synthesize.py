"""scripts/synthesize_corpus.py (hf_dynasr.data.synthesis and its CLI): a real (tiny) espeak-ng + flite corpus."""

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "synthesize_corpus.py"
COLUMNS = ["file_name", "transcription", "engine", "voice", "rate", "pitch", "duration"]
TOOLS = ("espeak-ng", "flite", "sox")

pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS) or not os.path.isdir("/usr/share/games/fortunes"),
    reason="needs apt-get install -y espeak-ng flite sox fortunes fortunes-min wordnet-base",
)


def run(out_dir, *extra, seed=3, n=10, env=None):
    cmd = [sys.executable, str(SCRIPT), "--output_dir", str(out_dir), "--num_utterances", str(n),
           "--seed", str(seed), "--num_workers", "2", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def read_split(out_dir, split):
    with open(Path(out_dir) / split / "metadata.csv", newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "corpus"
    proc = run(out)
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def test_layout_and_audio(corpus):
    out, stdout = corpus
    sizes = {}
    for split in ("train", "dev", "test"):
        header, rows = read_split(out, split)
        assert header == COLUMNS
        sizes[split] = len(rows)
        for row in rows:
            path = out / split / row["file_name"]
            info = sf.info(str(path))
            assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
            audio, sr = sf.read(str(path), dtype="float32")
            assert audio.ndim == 1 and len(audio) > 1600 and 0.5 < abs(audio).max() <= 1.0
            if row["engine"] == "flite":  # 16 kHz already: normalised in-process to exactly -1 dBFS
                assert abs(audio).max() == pytest.approx(10 ** (-1 / 20), abs=1e-3)
            else:  # sox normalises at 22.05 kHz, then resamples (its rate effect goes last): about -1 dBFS
                assert 0.8 < abs(audio).max() <= 1.0
            assert float(row["duration"]) == pytest.approx(len(audio) / sr, abs=1e-3)
            assert row["engine"] in ("espeak", "flite") and row["voice"]
    assert sizes == {"train": 8, "dev": 1, "test": 1}
    engines = {r["engine"] for s in ("train", "dev", "test") for r in read_split(out, s)[1]}
    assert engines == {"espeak", "flite"}
    assert "failed 0" in stdout and "train:" in stdout and " h" in stdout
    train_engines = [r["engine"] for r in read_split(out, "train")[1]]
    assert f"(espeak {train_engines.count('espeak')}, flite {train_engines.count('flite')})" in stdout


@pytest.mark.skipif(shutil.which("text2wave") is None, reason="needs apt-get install -y festival festvox-kallpc16k")
def test_festival_voices(tmp_path):
    """festival speaks with its Debian voices (each utterance 16 kHz FLAC at about -1 dBFS), counted per engine."""
    proc = run(tmp_path / "f", "--engines", "festival,flite", n=6, seed=1)
    assert proc.returncode == 0, proc.stderr
    rows = sum((read_split(tmp_path / "f", s)[1] for s in ("train", "dev", "test")), [])
    festival = [r for r in rows if r["engine"] == "festival"]
    assert len(festival) == 3 and "failed 0" in proc.stdout
    for row in festival:
        assert row["voice"] in ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
        split = next(s for s in ("train", "dev", "test") if row in read_split(tmp_path / "f", s)[1])
        audio, sr = sf.read(str(tmp_path / "f" / split / row["file_name"]), dtype="float32")
        assert sr == 16000 and len(audio) > 8000 and 0.8 < abs(audio).max() <= 1.0


def test_sentences_are_disjoint_and_normalised(corpus):
    from hf_dynasr.data import normalize_text

    out, _ = corpus
    texts = {s: [r["transcription"] for r in read_split(out, s)[1]] for s in ("train", "dev", "test")}
    assert not set(texts["train"]) & set(texts["dev"])
    assert not set(texts["train"]) & set(texts["test"])
    assert not set(texts["dev"]) & set(texts["test"])
    for t in sum(texts.values(), []):
        assert normalize_text(t) == t and 3 <= len(t.split()) <= 20


def test_deterministic_for_a_seed(corpus, tmp_path):
    out, _ = corpus
    again = run(tmp_path / "again")
    assert again.returncode == 0, again.stderr
    other = run(tmp_path / "other", seed=4)
    assert other.returncode == 0, other.stderr
    for split in ("train", "dev", "test"):
        assert read_split(tmp_path / "again", split)[1] == read_split(out, split)[1]
    assert [r["transcription"] for r in read_split(tmp_path / "other", "train")[1]] != \
        [r["transcription"] for r in read_split(out, "train")[1]]


def test_rerun_skips_existing_files(corpus):
    out, _ = corpus
    files = sorted((out / "train").glob("*.flac"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    proc = run(out)
    assert proc.returncode == 0, proc.stderr
    assert "synthesized 0, reused 10, failed 0" in proc.stdout
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert not list(out.glob("*/*.tmp*"))


def test_audiofolder_reads_it(corpus):
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("torchcodec")
    out, _ = corpus
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(out.parent / "hf_cache"))
        ds = datasets.load_dataset("audiofolder", data_dir=str(out / "train"), split="train")
    assert len(ds) == 8
    assert ds["transcription"] == [r["transcription"] for r in read_split(out, "train")[1]]
    audio = ds.cast_column("audio", datasets.Audio(sampling_rate=16000))[0]["audio"]
    assert audio["sampling_rate"] == 16000 and len(audio["array"]) > 0


def test_failed_syntheses_are_counted(tmp_path):
    # a `flite` that always fails: its utterances are reported and left out, the run still succeeds
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "flite").write_text("#!/bin/sh\necho 'flite: broken voice' >&2\nexit 3\n")
    (fake_bin / "flite").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"}
    proc = run(tmp_path / "out", n=6, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "failed 3" in proc.stdout and "flite exited 3" in proc.stdout
    rows = sum((read_split(tmp_path / "out", s)[1] for s in ("train", "dev", "test")), [])
    assert len(rows) == 3 and {r["engine"] for r in rows} == {"espeak"}


def test_missing_tools_and_bad_engines(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # no espeak-ng, flite or sox
    proc = run(tmp_path / "x", env=env)
    assert proc.returncode != 0 and "apt-get install -y espeak-ng flite sox" in proc.stderr
    proc = run(tmp_path / "y", "--engines", "espeak,piper")
    assert proc.returncode != 0 and "piper" in proc.stderr
    if shutil.which("pico2wave") is None:
        proc = run(tmp_path / "z", "--engines", "espeak,pico", n=3)
        assert proc.returncode == 0 and "pico2wave is not installed" in proc.stderr


def test_plan_helpers():
    """The library's sentence filter, split sizes and engine list, without synthesizing anything."""
    from hf_dynasr.data import synthesis

    assert synthesis.normalize_sentence("Mr. Smith's cat sat down.") == "mr smith's cat sat down"
    assert synthesis.normalize_sentence("I have 3 cats here") is None and synthesis.normalize_sentence("Too short") is None
    assert synthesis.split_sentences("Mr. Smith went home. He slept well! Did he?") == \
        ["Mr. Smith went home.", "He slept well!", "Did he?"]
    assert synthesis.split_sizes(10, 0.05, 0.05) == {"train": 8, "dev": 1, "test": 1}
    with pytest.raises(ValueError, match="too small"):
        synthesis.split_sizes(2, 0.05, 0.05)
    assert synthesis.parse_engines(" espeak, flite ") == ["espeak", "flite"]
    with pytest.raises(ValueError, match="piper"):
        synthesis.parse_engines("espeak,piper")
