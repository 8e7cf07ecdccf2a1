"""Synthesize an offline English read-speech corpus (train/dev/test) with espeak-ng, flite and festival.

Usage (the `dynasr-synthesize` command, or `python scripts/synthesize_corpus.py`):
    dynasr-synthesize --output_dir data/synth --num_utterances 2000 --seed 0
    dynasr-synthesize --output_dir data/synth --num_utterances 200 --seed 0 \\
        --engines espeak,flite,festival,mbrola,pico --dev_fraction 0.05 --test_fraction 0.05 --num_workers 2

Needs (Debian main):  apt-get install -y espeak-ng flite sox fortunes fortunes-min wordnet-base; festival with
festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts for the festival engine (also Debian main).
Optional engines (Debian contrib/non-free, see docs): mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1
libttspico-utils. festival, mbrola and pico are used only when installed; a requested but missing one is skipped
with a message. The summary counts the utterances of each engine per split.

Text: sentences from /usr/share/games/fortunes/* (skipping any off/ dir and lines with crude words) and the
quoted usage examples in /usr/share/wordnet/data.{noun,verb,adj,adv}, lowercased to [a-z' ], 3-20 words,
deduplicated. The train, dev and test splits use disjoint sentence sets.

Voices (``hf_dynasr.data.voices``): espeak-ng with 8 English accents x +variants (rate -s 125-200 wpm, pitch
-p 25-75), flite kal16/slt/rms/awb (duration_stretch 0.8-1.25, int_f0_target_mean in a per-voice range; rms
ignores it) and festival kal_diphone/ked_diphone/cmu_us_slt_arctic_hts (Duration_Stretch
0.8-1.25).
Every utterance becomes 16 kHz mono 16-bit FLAC peak-normalised to -1 dBFS: with sox (`norm -1`) when it
needs resampling (espeak-ng speaks 22.05 kHz), in-process with soundfile when it is 16 kHz mono already
(flite, pico, MBROLA), which spares a sox process per utterance.

Output: DIR/{train,dev,test}/ in audiofolder layout: FLAC files plus metadata.csv with the columns
file_name, transcription, engine, voice, rate, pitch, duration.  `rate` is espeak's words per minute or
flite's or festival's duration stretch; `pitch` is espeak's -p (0-99) or flite's target F0 in Hz (empty = voice
default).
Read it with `datasets.load_dataset("audiofolder", data_dir="DIR/train")`.

The same --seed gives the same sentences, voices and files. File names contain a hash of the utterance's
settings, so re-running skips files that already exist, and a run with other settings never reuses a
mismatching file. Failed syntheses are counted and reported; they never stop the run.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import multiprocessing
import os
import random
import re
import subprocess
import time
from collections import Counter

import numpy as np
import soundfile as sf
from tqdm import tqdm

from hf_dynasr.data.processing import SAMPLING_RATE
from hf_dynasr.data.voices import (
    ALL_ENGINES,
    MissingToolError,
    check_tools,
    espeak_variants,
    festival_voices,
    mbrola_voices,
    parse_engines,
    pick_voice,
    tts_command,
)

logger = logging.getLogger(__name__)

# the engines' names, errors and parsing live in hf_dynasr.data.voices; the CLI reaches them through here
__all__ = ["ALL_ENGINES", "MissingToolError", "parse_engines", "plan_utterances", "run_jobs", "synthesize",
           "synthesize_corpus", "write_metadata"]

SPLITS = ("train", "dev", "test")

FORTUNE_DIR = "/usr/share/games/fortunes"
WORDNET_FILES = [f"/usr/share/wordnet/data.{pos}" for pos in ("noun", "verb", "adj", "adv")]

# Crude or offensive words: a sentence containing one of these words (or starting with one of the stems) is dropped.
BLOCKED_WORDS = {
    "ass", "asses", "arse", "bastard", "bastards", "boob", "boobs", "cock", "cocks", "crap", "dick", "dicks",
    "dildo", "fag", "fags", "horny", "kike", "penis", "piss", "pissed", "porn", "prick", "pussy", "rape", "raped",
    "rapist", "retard", "retarded", "sex", "sexual", "sexy", "slut", "sluts", "spic", "tit", "tits", "twat",
    "vagina", "wank", "whore", "whores",
}
BLOCKED_STEMS = ("fuck", "shit", "cunt", "bitch", "asshole", "nigg", "fagg", "masturbat", "orgasm", "erotic",
                 "sodom", "semen", "prostitut", "porno")

# Sentence filter: only letters, spaces and plain punctuation; anything else (digits, symbols) drops the sentence.
ALLOWED_RAW = re.compile(r"^[A-Za-z\s'.,;:!?\"-]+$")
PUNCTUATION = re.compile(r"[.,;:!?\"]")
EDGE_APOSTROPHE = re.compile(r"(?<![a-z])'|'(?![a-z])")
BLOCKED_STEM = re.compile(r"\b(?:" + "|".join(BLOCKED_STEMS) + ")")
ABBREVIATION_END = re.compile(r"(\b(mr|mrs|ms|dr|st|jr|sr|vs|etc|prof|gen|capt|lt|col|rev|mt)|\b[a-z])\.$", re.I)


# ----------------------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------------------
def normalize_sentence(raw: str) -> str | None:
    """Lowercase to [a-z' ] with 3-20 words, or None if the sentence has digits/symbols or crude words."""
    raw = raw.replace("\u2019", "'").replace("`", "'").strip()
    if not raw or not ALLOWED_RAW.match(raw):
        return None
    text = PUNCTUATION.sub(" ", raw.lower().replace("-", " "))
    text = EDGE_APOSTROPHE.sub(" ", text)  # apostrophes only inside words
    words = text.split()
    if not 3 <= len(words) <= 20 or BLOCKED_WORDS.intersection(words) or BLOCKED_STEM.search(text):
        return None
    return " ".join(words)


def split_sentences(paragraph: str) -> list[str]:
    pieces = re.split(r"(?<=[.!?])\s+(?=[A-Z\"'])", paragraph)
    out: list[str] = []
    for piece in pieces:
        if out and ABBREVIATION_END.search(out[-1]):
            out[-1] += " " + piece  # "Mr. Smith" is one sentence
        else:
            out.append(piece)
    return out


def fortune_files() -> list[str]:
    files = []
    for root, dirs, names in os.walk(FORTUNE_DIR):
        dirs[:] = sorted(d for d in dirs if d != "off")  # never read the offensive collection
        for name in sorted(names):
            path = os.path.join(root, name)
            if name.endswith((".dat", ".u8")) or os.path.islink(path):
                continue
            files.append(path)
    return sorted(files)


def load_sentences() -> list[str]:
    """All usable sentences, sorted (so the result does not depend on file-system order)."""
    sentences = set()
    for path in fortune_files():
        with open(path, encoding="utf-8", errors="replace") as f:
            for entry in f.read().split("\n%\n"):
                for raw in split_sentences(" ".join(entry.split())):
                    if (s := normalize_sentence(raw)) is not None:
                        sentences.add(s)
    for path in WORDNET_FILES:
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  ") or " | " not in line:  # licence header
                    continue
                for example in re.findall(r'"([^"]+)"', line.split(" | ", 1)[1]):
                    if (s := normalize_sentence(example)) is not None:
                        sentences.add(s)
    return sorted(sentences)


# ----------------------------------------------------------------------------------------------------------
# Synthesis (runs in worker processes)
# ----------------------------------------------------------------------------------------------------------
def normalize_in_process(wav: str, flac: str) -> bool:
    """Peak-normalise a 16 kHz mono `wav` to -1 dBFS (what sox's `norm -1` does) and write 16-bit `flac`.
    Returns False, writing nothing, when the audio needs resampling or downmixing (then sox does all of it)."""
    info = sf.info(wav)
    if info.samplerate != SAMPLING_RATE or info.channels != 1:
        return False
    audio, _ = sf.read(wav, dtype="float32")  # [T]
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak > 0:
        audio = audio * (10 ** (-1 / 20) / peak)
    sf.write(flac, audio, SAMPLING_RATE, subtype="PCM_16", format="FLAC")
    return True


def synthesize(job: dict) -> tuple[str, float | None, str]:
    """Write job["path"] (16 kHz FLAC); return (file_name, duration or None, error message)."""
    path = job["path"]
    name = os.path.basename(path)
    if os.path.exists(path):
        try:
            return name, sf.info(path).duration, ""
        except Exception:  # a damaged leftover: synthesize again
            os.remove(path)
    folder = os.path.dirname(path)
    tmp_wav, tmp_flac = os.path.join(folder, f".{name}.tmp.wav"), os.path.join(folder, f".{name}.tmp.flac")
    cmd, stdin = tts_command(job, tmp_wav)
    sox = ["sox", tmp_wav, "-r", str(SAMPLING_RATE), "-c", "1", "-b", "16", "-t", "flac", tmp_flac, "norm", "-1"]
    try:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)
        if proc.returncode == 0 and not normalize_in_process(tmp_wav, tmp_flac):
            proc = subprocess.run(sox, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            return name, None, f"{proc.args[0]} exited {proc.returncode}: {proc.stderr.strip()[:200]}"
        duration = sf.info(tmp_flac).duration
        if duration <= 0:
            return name, None, "empty audio"
        os.replace(tmp_flac, path)  # atomic: a half-written file never looks finished
        return name, duration, ""
    except Exception as exc:  # never crash the run
        return name, None, f"{type(exc).__name__}: {exc}"
    finally:
        for tmp in (tmp_wav, tmp_flac):
            if os.path.exists(tmp):
                os.remove(tmp)


# ----------------------------------------------------------------------------------------------------------
# The corpus
# ----------------------------------------------------------------------------------------------------------
def split_sizes(n: int, dev_fraction: float, test_fraction: float) -> dict[str, int]:
    """Utterances per split; ValueError when `n` leaves no training utterance."""
    n_dev, n_test = max(1, round(n * dev_fraction)), max(1, round(n * test_fraction))
    if n - n_dev - n_test < 1:
        raise ValueError(f"--num_utterances {n} is too small for train/dev/test (need at least 3)")
    return {"train": n - n_dev - n_test, "dev": n_dev, "test": n_test}


def plan_utterances(output_dir: str, num_utterances: int, engines: list[str], *, seed: int = 0,
                    dev_fraction: float = 0.05, test_fraction: float = 0.05) -> dict[str, list[dict]]:
    """Deterministic plan for a seed: sentences (disjoint per split), engine, voice, rate, pitch and file path."""
    rng = random.Random(seed)
    sentences = load_sentences()
    rng.shuffle(sentences)
    sizes = split_sizes(num_utterances, dev_fraction, test_fraction)
    total = sum(sizes.values())
    variants, mbrola, festival = espeak_variants(), mbrola_voices(), festival_voices()
    plan, start, counter = {}, 0, 0
    for split, n in sizes.items():
        # Each split draws from its own slice of the shuffled sentences; sentences repeat only if n > #sentences.
        pool_size = n if total <= len(sentences) else max(1, len(sentences) * n // total)
        pool = sentences[start:start + pool_size]
        start += pool_size
        jobs = []
        for i in range(n):
            engine = engines[counter % len(engines)]  # round-robin over all utterances
            counter += 1
            voice, rate, pitch = pick_voice(engine, rng, variants, mbrola, festival)
            text = pool[i % len(pool)]
            digest = hashlib.sha1(f"{engine}|{voice}|{rate}|{pitch}|{text}".encode()).hexdigest()[:10]
            path = os.path.join(output_dir, split, f"{i:06d}-{engine}-{digest}.flac")
            jobs.append(dict(path=path, transcription=text, engine=engine, voice=voice, rate=rate, pitch=pitch))
        plan[split] = jobs
    return plan


def write_metadata(folder: str, rows: list[dict]) -> None:
    tmp = os.path.join(folder, "metadata.csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "transcription", "engine", "voice", "rate", "pitch", "duration"])
        for r in rows:
            pitch = "" if r["pitch"] is None else r["pitch"]
            writer.writerow([os.path.basename(r["path"]), r["transcription"], r["engine"], r["voice"], r["rate"],
                             pitch, f"{r['duration']:.3f}"])
    os.replace(tmp, os.path.join(folder, "metadata.csv"))


def synthesize_corpus(output_dir: str, num_utterances: int, *, seed: int = 0, engines: list[str] = ("espeak", "flite"),
                      dev_fraction: float = 0.05, test_fraction: float = 0.05, num_workers: int | None = None) -> dict:
    """Synthesize (or complete) the corpus in `output_dir` with `num_workers` processes and write each split's
    metadata.csv. Returns a summary: the engines used, per split the utterances and hours written, how many
    files were synthesized, reused or failed ("failures": "split/file: reason" lines) and the wall time."""
    start_time = time.time()
    engines = check_tools(list(engines), (FORTUNE_DIR, *WORDNET_FILES))
    plan = plan_utterances(output_dir, num_utterances, engines, seed=seed, dev_fraction=dev_fraction,
                           test_fraction=test_fraction)
    for split in plan:
        os.makedirs(os.path.join(output_dir, split), exist_ok=True)
    jobs = [job for split_jobs in plan.values() for job in split_jobs]
    reused = sum(os.path.exists(job["path"]) for job in jobs)
    results = run_jobs(jobs, num_workers or os.cpu_count() or 1)
    splits, failures = {}, []
    for split, split_jobs in plan.items():
        rows = []
        for job in split_jobs:
            duration, error = results[os.path.basename(job["path"])]
            if duration is None:
                failures.append(f"{split}/{os.path.basename(job['path'])}: {error}")
            else:
                rows.append({**job, "duration": duration})
        write_metadata(os.path.join(output_dir, split), rows)
        splits[split] = {"utterances": len(rows), "hours": sum(r["duration"] for r in rows) / 3600,
                         "engines": dict(sorted(Counter(r["engine"] for r in rows).items()))}
    return {"output_dir": output_dir, "seed": seed, "engines": engines, "splits": splits, "jobs": len(jobs),
            "synthesized": len(jobs) - reused - len(failures), "reused": reused, "failures": failures,
            "wall_s": time.time() - start_time}


def run_jobs(jobs: list[dict], num_workers: int) -> dict[str, tuple[float | None, str]]:
    """file name -> (duration or None, error message), synthesized by a pool of `num_workers` processes."""
    results = {}
    with multiprocessing.Pool(max(1, num_workers)) as pool:
        for name, duration, error in tqdm(pool.imap_unordered(synthesize, jobs, chunksize=4), total=len(jobs),
                                          desc="synthesizing", unit="utt"):
            results[name] = (duration, error)
    return results
