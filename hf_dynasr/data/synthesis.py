"""Synthesize an offline English read-speech corpus (train/dev/test) with espeak-ng and flite.

Usage (the `dynasr-synthesize` command, or `python scripts/synthesize_corpus.py`):
    dynasr-synthesize --output_dir data/synth --num_utterances 2000 --seed 0
    dynasr-synthesize --output_dir data/synth --num_utterances 200 --seed 0 \\
        --engines espeak,flite,mbrola,pico --dev_fraction 0.05 --test_fraction 0.05 --num_workers 2

Needs (Debian main):  apt-get install -y espeak-ng flite sox fortunes fortunes-min wordnet-base
Optional engines (Debian contrib/non-free, see docs): mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1
libttspico-utils. They are used only when installed; a requested but missing one is skipped with a message.

Text: sentences from /usr/share/games/fortunes/* (skipping any off/ dir and lines with crude words) and the
quoted usage examples in /usr/share/wordnet/data.{noun,verb,adj,adv}, lowercased to [a-z' ], 3-20 words,
deduplicated. The train, dev and test splits use disjoint sentence sets.

Voices: espeak-ng with 8 English accents x +variants (rate -s 125-200 wpm, pitch -p 25-75) and flite
kal16/slt/rms/awb (duration_stretch 0.8-1.25, int_f0_target_mean in a per-voice range; rms ignores it).
Every utterance becomes 16 kHz mono 16-bit FLAC peak-normalised to -1 dBFS: with sox (`norm -1`) when it
needs resampling (espeak-ng speaks 22.05 kHz), in-process with soundfile when it is 16 kHz mono already
(flite, pico, MBROLA), which spares a sox process per utterance.

Output: DIR/{train,dev,test}/ in audiofolder layout: FLAC files plus metadata.csv with the columns
file_name, transcription, engine, voice, rate, pitch, duration.  `rate` is espeak's words per minute or
flite's duration_stretch; `pitch` is espeak's -p (0-99) or flite's target F0 in Hz (empty = voice default).
Read it with `datasets.load_dataset("audiofolder", data_dir="DIR/train")`.

The same --seed gives the same sentences, voices and files. File names contain a hash of the utterance's
settings, so re-running skips files that already exist, and a run with other settings never reuses a
mismatching file. Failed syntheses are counted and reported; they never stop the run.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import logging
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import time

import numpy as np
import soundfile as sf
from tqdm import tqdm

from hf_dynasr.data.processing import SAMPLING_RATE

logger = logging.getLogger(__name__)

APT_MAIN = "apt-get install -y espeak-ng flite sox fortunes fortunes-min wordnet-base"
APT_OPTIONAL = (
    "add an apt source with the Debian 'contrib non-free' components, apt-get update, then "
    "apt-get install -y mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1 libttspico-utils"
)

ESPEAK_ACCENTS = [
    "en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc",
]
# Novelty/robot variants that do not sound like a human reader.
ESPEAK_VARIANT_EXCLUDE = {"Demonic", "UniRobot", "anikaRobot", "Tweaky"}
FLITE_VOICES = {"kal16": (80, 130), "slt": (150, 210), "awb": (105, 150), "rms": None}  # F0 range in Hz
MBROLA_VOICES = ["us1", "us2", "us3", "en1"]
PICO_VOICES = ["en-US", "en-GB"]

ALL_ENGINES = ("espeak", "flite", "mbrola", "pico")
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
# Tools and voices
# ----------------------------------------------------------------------------------------------------------
def espeak_variants() -> list[str]:
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    match = re.search(r"Data at:\s*(\S+)", out)
    variant_dir = os.path.join(match.group(1) if match else "/usr/lib/x86_64-linux-gnu/espeak-ng-data", "voices", "!v")
    names = sorted(os.listdir(variant_dir)) if os.path.isdir(variant_dir) else []
    keep = [n for n in names if " " not in n and n not in ESPEAK_VARIANT_EXCLUDE and not n.startswith("robosoft")]
    return [""] + keep  # "" = the accent's default voice


def mbrola_voices() -> list[str]:
    if shutil.which("mbrola") is None:
        return []
    return [v for v in MBROLA_VOICES if glob.glob(f"/usr/share/mbrola/{v}/{v}*")]


class MissingToolError(RuntimeError):
    """A tool or text source the corpus needs is not installed (the message says how to install it)."""


def parse_engines(text: str) -> list[str]:
    """The engines of a comma list such as "espeak,flite"; ValueError for an empty list or an unknown name."""
    requested = [e.strip() for e in text.split(",") if e.strip()]
    unknown = [e for e in requested if e not in ALL_ENGINES]
    if unknown or not requested:
        raise ValueError(f"unknown engine(s) {unknown}; choose from {', '.join(ALL_ENGINES)}")
    return requested


def check_tools(engines: list[str]) -> list[str]:
    """The usable engines of `engines`: optional ones that are not installed are dropped with a warning; a
    missing required tool raises MissingToolError with an apt-get hint."""
    needed = {"sox": "sox"}
    if "espeak" in engines or "mbrola" in engines:
        needed["espeak-ng"] = "espeak-ng"
    if "flite" in engines:
        needed["flite"] = "flite"
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if not os.path.isdir(FORTUNE_DIR) or not any(os.path.exists(p) for p in WORDNET_FILES):
        missing.append("fortunes/wordnet-base text")
    if missing:
        raise MissingToolError(f"missing {', '.join(missing)}. Install with:\n    {APT_MAIN}")
    usable = []
    for engine in engines:
        if engine == "mbrola" and not mbrola_voices():
            logger.warning("engine 'mbrola' requested but mbrola or its voices are not installed; skipping it.\n"
                           "    To use it: %s", APT_OPTIONAL)
        elif engine == "pico" and shutil.which("pico2wave") is None:
            logger.warning("engine 'pico' requested but pico2wave is not installed; skipping it.\n"
                           "    To use it: %s", APT_OPTIONAL)
        else:
            usable.append(engine)
    if not usable:
        raise MissingToolError("none of the requested engines is available")
    return usable


def pick_voice(engine: str, rng: random.Random, variants: list[str], mbrola: list[str]) -> tuple:
    """(voice, rate, pitch) for one utterance."""
    if engine == "espeak":
        accent, variant = rng.choice(ESPEAK_ACCENTS), rng.choice(variants)
        return (f"{accent}+{variant}" if variant else accent), rng.randint(125, 200), rng.randint(25, 75)
    if engine == "flite":
        voice = rng.choice(sorted(FLITE_VOICES))
        stretch = round(rng.uniform(0.8, 1.25), 2)
        f0_range = FLITE_VOICES[voice]
        return voice, stretch, (rng.randint(*f0_range) if f0_range else None)
    if engine == "mbrola":
        return f"mb-{rng.choice(mbrola)}", rng.randint(125, 200), rng.randint(25, 75)
    if engine == "pico":
        return rng.choice(PICO_VOICES), 1.0, None
    raise ValueError(engine)


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
    path, text, engine, voice = job["path"], job["transcription"], job["engine"], job["voice"]
    name = os.path.basename(path)
    if os.path.exists(path):
        try:
            return name, sf.info(path).duration, ""
        except Exception:  # a damaged leftover: synthesize again
            os.remove(path)
    folder = os.path.dirname(path)
    tmp_wav, tmp_flac = os.path.join(folder, f".{name}.tmp.wav"), os.path.join(folder, f".{name}.tmp.flac")
    if engine in ("espeak", "mbrola"):
        cmd = ["espeak-ng", "-v", voice, "-s", str(job["rate"]), "-p", str(job["pitch"]), "-w", tmp_wav, text]
    elif engine == "flite":
        cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={job['rate']}"]
        if job["pitch"] is not None:
            cmd += ["--setf", f"int_f0_target_mean={job['pitch']}"]
        cmd += ["-t", text, "-o", tmp_wav]
    else:  # pico
        cmd = ["pico2wave", "-l", voice, "-w", tmp_wav, text]
    sox = ["sox", tmp_wav, "-r", str(SAMPLING_RATE), "-c", "1", "-b", "16", "-t", "flac", tmp_flac, "norm", "-1"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
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
    variants, mbrola = espeak_variants(), mbrola_voices()
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
            voice, rate, pitch = pick_voice(engine, rng, variants, mbrola)
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
    engines = check_tools(list(engines))
    plan = plan_utterances(output_dir, num_utterances, engines, seed=seed, dev_fraction=dev_fraction,
                           test_fraction=test_fraction)
    for split in plan:
        os.makedirs(os.path.join(output_dir, split), exist_ok=True)
    jobs = [job for split_jobs in plan.values() for job in split_jobs]
    reused = sum(os.path.exists(job["path"]) for job in jobs)
    results = _run_jobs(jobs, num_workers or os.cpu_count() or 1)
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
        splits[split] = {"utterances": len(rows), "hours": sum(r["duration"] for r in rows) / 3600}
    return {"output_dir": output_dir, "seed": seed, "engines": engines, "splits": splits, "jobs": len(jobs),
            "synthesized": len(jobs) - reused - len(failures), "reused": reused, "failures": failures,
            "wall_s": time.time() - start_time}


def _run_jobs(jobs: list[dict], num_workers: int) -> dict[str, tuple[float | None, str]]:
    """file name -> (duration or None, error message), synthesized by a pool of `num_workers` processes."""
    results = {}
    with multiprocessing.Pool(max(1, num_workers)) as pool:
        for name, duration, error in tqdm(pool.imap_unordered(synthesize, jobs, chunksize=4), total=len(jobs),
                                          desc="synthesizing", unit="utt"):
            results[name] = (duration, error)
    return results
