"""Held-out test sets built from a synthetic corpus: what the in-domain test split cannot show.

``python -m hf_dynasr.data.heldout --corpus data/demo_corpus --output_dir data/demo_heldout`` writes two
audiofolder corpora with the same transcripts as the corpus's test split:

* ``OUT/heldout_engine/test``: the sentences spoken by a TTS engine no training utterance uses (default
  festival, whose Debian voices are kal_diphone, ked_diphone and cmu_us_slt_arctic_hts; refused when the
  training split has that engine). Same text, other voices: the gap to the in-domain CER is the voice gap.
* ``OUT/telephone/test``: the test split's audio through a telephone channel (300-3400 Hz through 8 kHz,
  :func:`hf_dynasr.data.augmentation.telephone_channel`, no mu-law).

Evaluate all three side by side: ``python scripts/evaluate_model.py --checkpoint runs/demo/final --data
audiofolder:data/demo_corpus audiofolder:data/demo_heldout/heldout_engine audiofolder:data/demo_heldout/telephone
--split test``. The corpus itself is only read. Re-running reuses finished files.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import random
import sys

import soundfile as sf

from hf_dynasr.data.audio import load_audio
from hf_dynasr.data.augmentation import telephone_channel
from hf_dynasr.data.processing import SAMPLING_RATE
from hf_dynasr.data.synthesis import run_jobs, write_metadata
from hf_dynasr.data.voices import ALL_ENGINES, check_tools, espeak_variants, festival_voices, mbrola_voices, pick_voice

__all__ = ["make_heldout_sets", "read_metadata"]


def read_metadata(folder: str) -> list[dict]:
    """The rows of ``folder/metadata.csv`` (a split of a synthesized corpus)."""
    path = os.path.join(folder, "metadata.csv")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: --corpus must be a corpus of scripts/synthesize_corpus.py")
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def make_heldout_sets(corpus: str, output_dir: str, *, engine: str = "festival", split: str = "test",
                      seed: int = 0, max_utterances: int | None = None, num_workers: int = 2) -> dict:
    """Write ``output_dir/heldout_engine/test`` and ``output_dir/telephone/test`` from ``corpus``'s ``split``
    (see the module docstring); returns {set: utterances written}. ValueError when ``engine`` speaks any of the
    training split's utterances."""
    if engine not in ALL_ENGINES:
        raise ValueError(f"--engine {engine!r}: choose from {', '.join(ALL_ENGINES)}")
    trained = {row.get("engine") for row in read_metadata(os.path.join(corpus, "train"))}
    if engine in trained:
        raise ValueError(f"the corpus's training split already uses {engine!r} (it has {sorted(trained)}); "
                         "a held-out engine must be one no training utterance uses")
    rows = read_metadata(os.path.join(corpus, split))[:max_utterances]
    return {"heldout_engine": _speak_again(rows, os.path.join(output_dir, "heldout_engine", "test"), engine, seed,
                                           num_workers),
            "telephone": _telephone_copy(rows, os.path.join(corpus, split), os.path.join(output_dir, "telephone",
                                                                                         "test"))}


def _speak_again(rows: list[dict], folder: str, engine: str, seed: int, num_workers: int) -> int:
    check_tools([engine])  # MissingToolError (a RuntimeError) with the apt-get line when it is not installed
    os.makedirs(folder, exist_ok=True)
    rng = random.Random(seed)
    variants = espeak_variants() if engine == "espeak" else []
    jobs = []
    for i, row in enumerate(rows):
        voice, rate, pitch = pick_voice(engine, rng, variants, mbrola_voices(), festival_voices())
        text = row["transcription"]
        digest = hashlib.sha1(f"{engine}|{voice}|{rate}|{pitch}|{text}".encode()).hexdigest()[:10]
        jobs.append({"path": os.path.join(folder, f"{i:06d}-{engine}-{digest}.flac"), "transcription": text,
                     "engine": engine, "voice": voice, "rate": rate, "pitch": pitch})
    results = run_jobs(jobs, num_workers)
    done = [{**job, "duration": results[os.path.basename(job["path"])][0]} for job in jobs]
    done = [row for row in done if row["duration"] is not None]
    write_metadata(folder, done)
    return len(done)


def _telephone_copy(rows: list[dict], source: str, folder: str) -> int:
    os.makedirs(folder, exist_ok=True)
    kept = []
    for row in rows:
        target = os.path.join(folder, row["file_name"])
        if not os.path.exists(target):
            audio = telephone_channel(load_audio(os.path.join(source, row["file_name"]), SAMPLING_RATE))
            tmp = os.path.join(folder, f".{row['file_name']}.tmp.flac")
            sf.write(tmp, audio, SAMPLING_RATE, subtype="PCM_16", format="FLAC")
            os.replace(tmp, target)  # atomic: a half-written file never looks finished
        kept.append({**row, "path": target, "duration": float(row["duration"]),
                     "pitch": row["pitch"] if row["pitch"] != "" else None})
    write_metadata(folder, kept)
    return len(kept)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="a corpus of scripts/synthesize_corpus.py (read only)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--engine", default="festival", help="the held-out TTS engine (one the training split lacks)")
    p.add_argument("--split", default="test")
    p.add_argument("--max_utterances", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    try:
        counts = make_heldout_sets(args.corpus, args.output_dir, engine=args.engine, split=args.split, seed=args.seed,
                                   max_utterances=args.max_utterances, num_workers=args.num_workers)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for name, n in counts.items():
        print(f"{name}: {n} utterances in {os.path.join(args.output_dir, name, 'test')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
