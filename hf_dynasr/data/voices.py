"""The TTS engines and voices of the synthetic corpus (``hf_dynasr.data.synthesis``): which are installed, how
one utterance's voice, rate and pitch are drawn, and the command that speaks it.

Debian main (``APT_MAIN``): espeak-ng (8 English accents x its voice variants), flite (kal16, slt, rms, awb)
and festival with its Debian voices (kal_diphone, ked_diphone, cmu_us_slt_arctic_hts).
Optional (Debian contrib/non-free, ``APT_OPTIONAL``): MBROLA voices through espeak-ng, and pico2wave.
"""

from __future__ import annotations

import glob
import logging
import os
import random
import re
import shutil
import subprocess

logger = logging.getLogger(__name__)

APT_MAIN = ("apt-get install -y espeak-ng flite sox fortunes fortunes-min wordnet-base festival festvox-kallpc16k "
            "festvox-kdlpc16k festvox-us-slt-hts")
APT_OPTIONAL = (
    "add an apt source with the Debian 'contrib non-free' components, apt-get update, then "
    "apt-get install -y mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1 libttspico-utils"
)

ESPEAK_ACCENTS = [
    "en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc",
]
# Novelty/robot variants that do not sound like a human reader.
ESPEAK_VARIANT_EXCLUDE = {"Demonic", "UniRobot", "anikaRobot", "Tweaky"}
# flite's 16 kHz voices (F0 range in Hz; rms ignores the F0 target). Not drawn: awb_time (a talking clock: it
# speaks only times) and kal, an 8 kHz diphone voice (the same speaker and diphones as kal16, band-limited) whose
# addition would change the demo corpus every measured demo figure was made on.
FLITE_VOICES = {"kal16": (80, 130), "slt": (150, 210), "awb": (105, 150), "rms": None}
FESTIVAL_DIR = "/usr/share/festival/voices"
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")  # festvox-kallpc16k, -kdlpc16k, -us-slt-hts
MBROLA_VOICES = ["us1", "us2", "us3", "en1"]
PICO_VOICES = ["en-US", "en-GB"]

ALL_ENGINES = ("espeak", "flite", "festival", "mbrola", "pico")
OPTIONAL_ENGINES = ("festival", "mbrola", "pico")  # skipped with a message when not installed


def espeak_variants() -> list[str]:
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    match = re.search(r"Data at:\s*(\S+)", out)
    variant_dir = os.path.join(match.group(1) if match else "/usr/lib/x86_64-linux-gnu/espeak-ng-data", "voices", "!v")
    names = sorted(os.listdir(variant_dir)) if os.path.isdir(variant_dir) else []
    keep = [n for n in names if " " not in n and n not in ESPEAK_VARIANT_EXCLUDE and not n.startswith("robosoft")]
    return [""] + keep  # "" = the accent's default voice


def festival_voices() -> list[str]:
    """The voices of ``FESTIVAL_VOICES`` installed for festival's ``text2wave``."""
    if shutil.which("text2wave") is None:
        return []
    return [v for v in FESTIVAL_VOICES if glob.glob(os.path.join(FESTIVAL_DIR, "*", v))]


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


def check_tools(engines: list[str], text_sources: tuple[str, ...] = ()) -> list[str]:
    """The usable engines of `engines`: optional ones that are not installed are dropped with a warning; a
    missing required tool or text source (`text_sources`: paths of which one must exist, if any) raises
    MissingToolError with an apt-get hint."""
    needed = {"sox": "sox"}
    if "espeak" in engines or "mbrola" in engines:
        needed["espeak-ng"] = "espeak-ng"
    if "flite" in engines:
        needed["flite"] = "flite"
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if text_sources and not any(os.path.exists(p) for p in text_sources):
        missing.append("fortunes/wordnet-base text")
    if missing:
        raise MissingToolError(f"missing {', '.join(missing)}. Install with:\n    {APT_MAIN}")
    available = {"festival": ("text2wave or its voices", festival_voices, APT_MAIN),
                 "mbrola": ("mbrola or its voices", mbrola_voices, APT_OPTIONAL),
                 "pico": ("pico2wave", lambda: shutil.which("pico2wave"), APT_OPTIONAL)}
    usable = []
    for engine in engines:
        if engine in available and not available[engine][1]():
            what, _, hint = available[engine]
            logger.warning("engine %r requested but %s is not installed; skipping it.\n    To use it: %s",
                           engine, what, hint)
        else:
            usable.append(engine)
    if not usable:
        raise MissingToolError("none of the requested engines is available")
    return usable


def pick_voice(engine: str, rng: random.Random, variants: list[str], mbrola: list[str],
               festival: list[str] = FESTIVAL_VOICES) -> tuple:
    """(voice, rate, pitch) for one utterance."""
    if engine == "espeak":
        accent, variant = rng.choice(ESPEAK_ACCENTS), rng.choice(variants)
        return (f"{accent}+{variant}" if variant else accent), rng.randint(125, 200), rng.randint(25, 75)
    if engine == "flite":
        voice = rng.choice(sorted(FLITE_VOICES))
        stretch = round(rng.uniform(0.8, 1.25), 2)
        f0_range = FLITE_VOICES[voice]
        return voice, stretch, (rng.randint(*f0_range) if f0_range else None)
    if engine == "festival":
        return rng.choice(list(festival)), round(rng.uniform(0.8, 1.25), 2), None
    if engine == "mbrola":
        return f"mb-{rng.choice(mbrola)}", rng.randint(125, 200), rng.randint(25, 75)
    if engine == "pico":
        return rng.choice(PICO_VOICES), 1.0, None
    raise ValueError(engine)


def tts_command(job: dict, wav: str) -> tuple[list[str], str | None]:
    """(command, stdin text or None) that speaks ``job["transcription"]`` into ``wav``."""
    engine, voice, text = job["engine"], job["voice"], job["transcription"]
    if engine in ("espeak", "mbrola"):
        return ["espeak-ng", "-v", voice, "-s", str(job["rate"]), "-p", str(job["pitch"]), "-w", wav, text], None
    if engine == "flite":
        cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={job['rate']}"]
        if job["pitch"] is not None:
            cmd += ["--setf", f"int_f0_target_mean={job['pitch']}"]
        return cmd + ["-t", text, "-o", wav], None
    if engine == "festival":
        return ["text2wave", "-eval", f"(voice_{voice})", "-eval", f"(Parameter.set 'Duration_Stretch {job['rate']})",
                "-o", wav], text
    return ["pico2wave", "-l", voice, "-w", wav, text], None
