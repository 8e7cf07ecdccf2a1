"""Speech data for hf_dynasr: loading, text normalisation, robust preparation, duration batching, collation.

Typical use::

    from hf_dynasr.data import (load_speech_dataset, prepare_dataset, DurationBatchSampler,
                                DataCollatorCTCWithPadding)
    from hf_dynasr.processing import build_feature_extractor, build_tokenizer

    fe, tok = build_feature_extractor(), build_tokenizer()
    raw = load_speech_dataset("audiofolder:data/synth", split="train")      # columns audio, text, path, ...
    train, report = prepare_dataset(raw, fe, tok, max_duration_s=20.0, num_proc=2)
    logger.info("%s", report)                                               # what was dropped and why
    sampler = DurationBatchSampler.from_dataset(train, max_batch_seconds=60.0, seed=0)
    loader = DataLoader(train.with_format("numpy"), batch_sampler=sampler,   # numpy: fast collation
                        collate_fn=DataCollatorCTCWithPadding(fe))

Audio is decoded by ``prepare_dataset`` itself (soundfile first, torchcodec as a fallback for other
containers), downmixed to mono and resampled to the feature extractor's rate with a windowed-sinc
resampler, so one unreadable file is reported instead of crashing ``Dataset.map``. Decoding rows of the
loaded dataset directly (``ds[0]["audio"]``) goes through ``datasets``/torchcodec instead; both give
16 kHz mono float32, with slightly different resampling filters.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import glob
import io
import json
import logging
import math
import os
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import soundfile as sf
import torch
from datasets import Array2D, Audio, Dataset, Features, IterableDataset, Value, load_dataset

try:  # datasets >= 4
    from datasets import List as _ListFeature
except ImportError:  # pragma: no cover
    from datasets import Sequence as _ListFeature

from .processing import SAMPLING_RATE

logger = logging.getLogger(__name__)
_IMPORT_PID = os.getpid()  # a different pid in _prepare_batch means a forked datasets.map worker

__all__ = [
    "AudioDecodeError",
    "DataCollatorCTCWithPadding",
    "DROP_REASONS",
    "DurationBatchSampler",
    "FilterReport",
    "SPEC_FORMS",
    "ctc_output_length",
    "load_audio",
    "load_speech_dataset",
    "normalize_text",
    "prepare_dataset",
    "resample",
]

TEXT_COLUMN_CANDIDATES = ("text", "transcription", "sentence", "transcript", "normalized_text", "raw_text")
AUDIO_COLUMN_CANDIDATES = ("audio", "file_name", "path", "file", "filename", "audio_path", "filepath",
                           "audio_filepath", "wav")

SPEC_FORMS = """\
  "hub:<dataset id>[:<config>[:<split>]]"  e.g. "hub:openslr/librispeech_asr:clean:train.100",
      or {"type": "hub", "path": ..., "name": ..., "split": ..., **load_dataset kwargs}
  "librispeech:<dir>"   a LibriSpeech-format directory (<spk>/<chapter>/<spk>-<chapter>.trans.txt + .flac)
  "audiofolder:<dir>"   an audiofolder (metadata.csv or metadata.jsonl with file_name + audio files);
                        a plain existing directory with metadata.csv (or train/metadata.csv) works too
  "csv:<file.csv>"      a CSV/TSV with an audio-path column and a text column (paths relative to its folder)
  dicts take the same types: {"type": "librispeech" | "audiofolder" | "csv", "path": ...}"""


# ==========================================================================================================
# Text
# ==========================================================================================================
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u00b4": "'", "\u02bc": "'"})


@functools.lru_cache(maxsize=32)
def _not_in_class(keep: str) -> re.Pattern:
    return re.compile(f"[^{keep}]")


def normalize_text(
    text: str | None,
    *,
    lowercase: bool = True,
    keep: str = "a-z' ",
    unknown: str = "drop",
    strip_accents: bool = True,
    separators: str = "-_/\u2013\u2014",
    strip_edge_apostrophes: bool = True,
) -> str:
    """Normalise a transcription for a character CTC vocabulary.

    Steps: typographic apostrophes -> ``'``; accents stripped (``é`` -> ``e``); lowercase; the characters in
    ``separators`` (hyphens, slashes, dashes) become spaces; characters outside the regex character class
    ``keep`` are dropped (``unknown="drop"``), replaced by a space (``"space"``) or kept (``"keep"``, leaving
    them to ``prepare_dataset``'s ``oov`` policy); apostrophes at word edges are removed (quotes, not
    contractions); whitespace is collapsed. Digits are not spelled out: they are unknown characters by default.

    >>> normalize_text("Don't   STOP -- it's well-known, Café!")
    "don't stop it's well known cafe"
    """
    if not text:
        return ""
    if unknown not in ("drop", "space", "keep"):
        raise ValueError(f"unknown must be 'drop', 'space' or 'keep', got {unknown!r}")
    text = text.translate(_APOSTROPHES)
    if strip_accents:
        text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    if lowercase:
        text = text.lower()
    for sep in separators:
        text = text.replace(sep, " ")
    text = re.sub(r"\s+", " ", text)
    if unknown != "keep":
        text = _not_in_class(keep).sub("" if unknown == "drop" else " ", text)
    if strip_edge_apostrophes:
        text = re.sub(r"(?<!\w)'+|'+(?!\w)", "", text)
    return " ".join(text.split())


# ==========================================================================================================
# Loading
# ==========================================================================================================
def load_speech_dataset(
    spec: str | Mapping[str, Any],
    *,
    split: str | None = None,
    streaming: bool = False,
    text_column: str | None = None,
    audio_column: str | None = None,
    sampling_rate: int = SAMPLING_RATE,
    normalize: bool | Mapping[str, Any] = True,
) -> Dataset | IterableDataset:
    """Load a speech corpus as a ``Dataset`` (or ``IterableDataset`` with ``streaming=True``).

    ``spec`` is one of the forms in :data:`SPEC_FORMS`. The result has the columns ``audio`` (cast to
    ``Audio(sampling_rate, num_channels=1)``: rows decode to mono float32 at ``sampling_rate``), ``text``
    (``normalize_text`` of the transcription; ``normalize=False`` keeps it raw, a dict passes keyword
    arguments to ``normalize_text``) and ``path`` where the audio path is known, plus the source's other
    columns. ``split`` selects a subdirectory of a local corpus when it exists (``"audiofolder:data/synth",
    split="dev"`` reads ``data/synth/dev``); for the Hub it is the split passed to ``load_dataset`` (default
    ``"train"``). ``text_column``/``audio_column`` override the detection (text: first of
    ``TEXT_COLUMN_CANDIDATES``; audio: the first ``Audio`` column or first of ``AUDIO_COLUMN_CANDIDATES``).

    Local corpora are listed in memory (paths only) and, with ``streaming=True``, iterated lazily.
    """
    kind, path, name, spec_split, extra = _parse_spec(spec)
    split = split if split is not None else spec_split
    extra = dict(extra)
    text_column = text_column or extra.pop("text_column", None)
    audio_column = audio_column or extra.pop("audio_column", None)

    if kind == "hub":
        ds = load_dataset(path, name, split=split or "train", streaming=streaming, **extra)
        return _standardize(ds, text_column, audio_column, sampling_rate, normalize, f"hub:{path}")
    if kind == "librispeech":
        data_dir = _split_dir(path, split, marker=lambda d: bool(_trans_files(d)))
        columns = _librispeech_columns(data_dir)
    elif kind == "audiofolder":
        data_dir = _split_dir(path, split, marker=_has_metadata)
        columns = _audiofolder_columns(data_dir, audio_column, text_column)
    else:  # csv
        columns = _table_columns(_read_table(path), os.path.dirname(os.path.abspath(path)), path,
                                 audio_column, text_column)
    ds = _standardize(Dataset.from_dict(columns), "text", "audio", sampling_rate, normalize, path)
    return ds.to_iterable_dataset() if streaming else ds


def _parse_spec(spec: str | Mapping[str, Any]) -> tuple[str, str, str | None, str | None, dict]:
    """-> (kind, path, config name, split, extra load_dataset kwargs)."""
    kinds = ("hub", "librispeech", "audiofolder", "csv")
    if isinstance(spec, Mapping):
        extra = dict(spec)
        kind = extra.pop("type", None)
        if kind not in kinds or "path" not in extra:
            raise ValueError(f"dataset spec dict needs 'type' in {kinds} and 'path'; got {dict(spec)!r}. "
                             f"Allowed forms:\n{SPEC_FORMS}")
        path = os.fspath(extra.pop("path"))
        name, split = extra.pop("name", None) or None, extra.pop("split", None)
        if kind != "hub" and set(extra) - {"text_column", "audio_column"}:
            raise ValueError(f"unexpected keys {sorted(extra)} for a {kind!r} spec")
        return kind, path, name, split, extra
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"dataset spec must be a str or dict, got {type(spec).__name__}")
    spec = os.fspath(spec)
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in kinds:
        if prefix == "hub":
            parts = rest.split(":", 2)  # a split may contain ':' (e.g. "train[:100]")
            parts += [None] * (3 - len(parts))
            return "hub", parts[0], parts[1] or None, parts[2] or None, {}
        return prefix, rest, None, None, {}
    if os.path.isdir(spec):
        if _has_metadata(spec) or _has_metadata(os.path.join(spec, "train")):
            return "audiofolder", spec, None, None, {}
        if _trans_files(spec):
            return "librispeech", spec, None, None, {}
    if os.path.isfile(spec) and spec.lower().endswith((".csv", ".tsv")):
        return "csv", spec, None, None, {}
    raise ValueError(f"cannot interpret dataset spec {spec!r}. Allowed forms:\n{SPEC_FORMS}")


def _has_metadata(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, f"metadata.{ext}")) for ext in ("csv", "jsonl"))


def _trans_files(root: str) -> list[str]:
    found = glob.glob(os.path.join(glob.escape(root), "*", "*", "*.trans.txt"))
    found += glob.glob(os.path.join(glob.escape(root), "*", "*", "*", "*.trans.txt"))  # LibriSpeech/<subset>/...
    return sorted(found)


def _split_dir(path: str, split: str | None, marker) -> str:
    """The directory to read: ``path/split`` if it exists, ``path/train`` for a corpus root without a split."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"dataset directory not found: {path}")
    if split and os.path.isdir(os.path.join(path, split)):
        return os.path.join(path, split)
    if split and not marker(path):
        raise FileNotFoundError(f"no split {split!r} under {path}")
    if split is None and not marker(path) and os.path.isdir(os.path.join(path, "train")):
        return os.path.join(path, "train")
    return path


def _librispeech_columns(root: str) -> dict[str, list]:
    trans = _trans_files(root)
    if not trans:
        raise FileNotFoundError(f"no LibriSpeech transcripts (<spk>/<chapter>/*.trans.txt) under {root}")
    cols: dict[str, list] = {"audio": [], "text": [], "path": [], "id": [], "speaker_id": [], "chapter_id": []}
    for trans_file in trans:
        folder = os.path.dirname(trans_file)
        with open(trans_file, encoding="utf-8") as f:
            for line in f:
                utt_id, _, text = line.strip().partition(" ")
                if not utt_id:
                    continue
                audio = os.path.join(folder, utt_id + ".flac")
                if not os.path.exists(audio) and os.path.exists(os.path.join(folder, utt_id + ".wav")):
                    audio = os.path.join(folder, utt_id + ".wav")
                speaker, chapter = (utt_id.split("-") + ["", ""])[:2]
                for key, value in zip(cols, (audio, text, audio, utt_id, speaker, chapter)):
                    cols[key].append(value)
    return cols


def _read_table(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"metadata file not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            return [json.loads(line) for line in f if line.strip()]
        return list(csv.DictReader(f, delimiter="\t" if path.lower().endswith(".tsv") else ","))


def _audiofolder_columns(folder: str, audio_column: str | None, text_column: str | None) -> dict[str, list]:
    for name in ("metadata.csv", "metadata.jsonl"):
        if os.path.isfile(os.path.join(folder, name)):
            table = os.path.join(folder, name)
            return _table_columns(_read_table(table), os.path.abspath(folder), table,
                                  audio_column or "file_name", text_column)
    raise FileNotFoundError(f"no metadata.csv or metadata.jsonl in {folder}")


def _table_columns(rows: list[dict], root: str, source: str, audio_column: str | None,
                   text_column: str | None) -> dict[str, list]:
    """Rows with a relative audio path and a transcription -> columns audio, text, path, <others>."""
    header = list(rows[0]) if rows else []
    audio_column = audio_column or _first_present(AUDIO_COLUMN_CANDIDATES, header, "audio", source)
    text_column = text_column or _first_present(TEXT_COLUMN_CANDIDATES, header, "text", source)
    for column in (audio_column, text_column):
        if rows and column not in header:
            raise ValueError(f"column {column!r} not in {source} (columns {header})")
    extra = [c for c in header if c not in (audio_column, text_column, "audio", "text", "path")]
    cols: dict[str, list] = {"audio": [], "text": [], "path": [], **{c: [] for c in extra}}
    for row in rows:
        rel = str(row.get(audio_column) or "").strip()
        full = os.path.normpath(os.path.join(root, rel)) if rel else ""
        if rel and os.path.commonpath([root, full]) != root:
            raise ValueError(f"audio path {rel!r} in {source} escapes its folder {root}")
        cols["audio"].append(full)
        cols["path"].append(full)
        cols["text"].append(str(row.get(text_column) or ""))
        for c in extra:
            cols[c].append(row.get(c))
    return cols


def _first_present(candidates: Sequence[str], columns: Sequence[str], what: str, source: str) -> str:
    for c in candidates:
        if c in columns:
            return c
    raise ValueError(f"no {what} column in {source} (columns {list(columns)}); tried {list(candidates)}. "
                     f"Pass {what}_column=...")


def _standardize(ds, text_column, audio_column, sampling_rate, normalize, origin):
    """Rename to audio/text, add path, normalise text, cast audio to mono at ``sampling_rate``."""
    features = ds.features or {}
    columns = list(ds.column_names or features)
    if audio_column is None:
        audio_column = next((c for c, f in features.items() if isinstance(f, Audio)), None)
        audio_column = audio_column or _first_present(AUDIO_COLUMN_CANDIDATES, columns, "audio", origin)
    text_column = text_column or _first_present(TEXT_COLUMN_CANDIDATES, columns, "text", origin)
    streaming = not isinstance(ds, Dataset)
    if streaming:
        # Keep audio undecoded through every map (rename_column is a map too) and declare the decoding
        # features last: a map over an ``Audio(decode=True)`` column decodes every row upstream, so one
        # missing file would stop the stream before prepare_dataset could report it.
        if ds.features is None:
            raise ValueError(f"streaming dataset {origin} has unknown features; load it without streaming")
        ds = ds.cast_column(audio_column, Audio(decode=False))
    for wanted, have in (("audio", audio_column), ("text", text_column)):
        if have not in columns:
            raise ValueError(f"column {have!r} not found in {origin} (columns {columns})")
        if have != wanted:
            if wanted in columns:
                ds = ds.rename_column(wanted, f"{wanted}_original")
            ds = ds.rename_column(have, wanted)
            columns = list(ds.column_names or columns)
    norm_kwargs = dict(normalize) if isinstance(normalize, Mapping) else {}
    audio = Audio(sampling_rate=sampling_rate, num_channels=1)

    if not streaming:  # add_column: no rewrite of (possibly embedded) audio bytes
        ds = ds.cast_column("audio", audio)
        if "path" not in columns:
            table = ds.select_columns(["audio"]).with_format("arrow")[:]
            ds = ds.add_column("path", [p for c in table.column("audio").chunks for p in c.field("path").to_pylist()])
        if normalize:
            texts = [normalize_text(t, **norm_kwargs) for t in ds.with_format(None)["text"]]
            ds = ds.remove_columns("text").add_column("text", texts)
        return ds

    features = ds.features.copy()
    features.update({"audio": audio, "text": Value("string"), "path": features.get("path", Value("string"))})
    add_path = "path" not in columns

    def standardize_row(row):
        out = {}
        if normalize:
            out["text"] = normalize_text(row["text"], **norm_kwargs)
        if add_path:
            out["path"] = (row["audio"] or {}).get("path")
        return out

    return ds.map(standardize_row).cast(features)


# ==========================================================================================================
# Audio decoding
# ==========================================================================================================
class AudioDecodeError(RuntimeError):
    """The audio exists but cannot be decoded (corrupt, or a format no installed decoder reads)."""


def load_audio(source: Any, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """Decode ``source`` to mono float32 at ``sampling_rate``.

    ``source``: a path, encoded bytes, a ``{"path", "bytes"}`` dict (``Audio(decode=False)`` rows), a
    ``{"array", "sampling_rate"}`` dict, or a ``datasets`` decoded audio object. Raises
    ``FileNotFoundError`` if there is no bytes and the path does not exist, ``AudioDecodeError`` if it
    cannot be decoded. Empty audio gives an empty array (no error).
    """
    data, orig_sr = _read_audio(source)
    data = _pcm_to_float(np.asarray(data))
    if data.ndim == 2 and data.shape[0] < data.shape[1]:  # in-memory arrays may be [channels, samples]
        data = data.T
    mono = data.mean(axis=1) if data.ndim == 2 else data
    return resample(mono, int(orig_sr), sampling_rate)


def _pcm_to_float(data: np.ndarray) -> np.ndarray:
    """Integer PCM (an int16 array, or a list of ints from a datasets table) -> float32 in [-1, 1)."""
    if data.dtype.kind not in "iu":
        return data.astype(np.float32, copy=False)
    if data.dtype == np.uint8:  # 8-bit WAV is offset binary
        return (data.astype(np.float32) - 128.0) / 128.0
    bits = 8 * data.dtype.itemsize
    if bits == 64:  # python ints lost their width: 16-bit PCM unless the values need more
        bits = 16 if data.size == 0 or np.abs(data).max() <= 32768 else 32
    return (data / float(2 ** (bits - 1))).astype(np.float32)


def _read_audio(source: Any) -> tuple[np.ndarray, int]:
    """-> (samples [n] or [n, channels], sampling rate)."""
    data = path = None
    if isinstance(source, Mapping):
        if source.get("array") is not None:
            return np.asarray(source["array"]), int(source["sampling_rate"])
        data, path = source.get("bytes"), source.get("path")
    elif isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
    elif hasattr(source, "get_all_samples"):  # datasets/torchcodec AudioDecoder
        try:
            samples = source.get_all_samples()
        except Exception as exc:
            raise AudioDecodeError(f"{type(exc).__name__}: {exc}") from exc
        return samples.data.numpy().T, int(samples.sample_rate)
    else:
        raise TypeError(f"cannot read audio from {type(source).__name__}")
    if data is None:
        if not path:
            raise FileNotFoundError("no audio bytes and no path")
        if not os.path.exists(path):
            raise FileNotFoundError(path)
    try:
        array, sr = sf.read(io.BytesIO(data) if data is not None else path, dtype="float32", always_2d=True)
        return array, sr
    except Exception as sf_error:
        try:  # other containers (mp3 on old libsndfile, m4a, ...) via FFmpeg
            from torchcodec.decoders import AudioDecoder
        except Exception:
            raise AudioDecodeError(f"soundfile: {sf_error} (torchcodec unavailable)") from sf_error
        try:
            samples = AudioDecoder(data if data is not None else path).get_all_samples()
        except Exception as exc:
            raise AudioDecodeError(f"soundfile: {sf_error}; torchcodec: {str(exc).splitlines()[0]}") from exc
        return samples.data.numpy().T, int(samples.sample_rate)


@functools.lru_cache(maxsize=16)
def _sinc_kernel(orig: int, new: int, lowpass_filter_width: int = 6, rolloff: float = 0.99):
    """Hann-windowed sinc polyphase kernel (the same construction as torchaudio.functional.resample)."""
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = (torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + idx) * base
    t = t.clamp(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t) * window * (base / orig)
    return kernel.to(torch.float32), width


def resample(x: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited resampling of a 1-D float signal (no torchaudio needed)."""
    x = np.asarray(x, dtype=np.float32)
    if orig_sr == new_sr or x.size == 0:
        return x if orig_sr == new_sr else np.zeros(0, np.float32)
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    kernel, width = _sinc_kernel(orig, new)
    wav = torch.nn.functional.pad(torch.from_numpy(x)[None, None], (width, width + orig))
    out = torch.nn.functional.conv1d(wav, kernel, stride=orig).transpose(1, 2).reshape(-1)
    return out[: math.ceil(new * x.size / orig)].numpy()


# ==========================================================================================================
# Preparation (features, labels, filtering)
# ==========================================================================================================
DROP_REASONS = ("missing_audio", "unreadable_audio", "empty_audio", "non_finite_audio", "too_short", "too_long",
                "empty_transcript", "oov_characters", "ctc_infeasible", "processing_error")


def ctc_output_length(num_frames, subsampling_factor: int = 4):
    """Encoder output frames for ``num_frames`` feature frames (ints, numpy arrays or tensors).

    Mirrors the frontend's time subsampling (two halvings with floor: floor(floor(T/2)/2) = T // 4, as in
    ``frontend_dynasr.subsampled_lengths``). Keep the two in step (a test compares them).
    """
    return num_frames // subsampling_factor


@dataclasses.dataclass
class FilterReport:
    """What ``prepare_dataset`` kept and dropped. For streaming datasets it fills up during iteration."""

    counts: dict[str, int] = dataclasses.field(default_factory=lambda: {r: 0 for r in DROP_REASONS})
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    details: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    total_kept: int = 0
    kept_seconds: float = 0.0
    max_examples: int = 5
    streaming: bool = False

    @property
    def total_dropped(self) -> int:
        return sum(self.counts.values())

    @property
    def total(self) -> int:
        return self.total_kept + self.total_dropped

    def add(self, reason: str, path: str = "", detail: str = "", duration: float = 0.0) -> None:
        if not reason:
            self.total_kept += 1
            self.kept_seconds += float(duration)
            return
        self.counts[reason] = self.counts.get(reason, 0) + 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < self.max_examples:
            examples.append(path)
            self.details.setdefault(reason, []).append(detail)

    def to_dict(self) -> dict[str, Any]:
        return {"total_kept": self.total_kept, "total_dropped": self.total_dropped,
                "kept_hours": self.kept_seconds / 3600, "counts": dict(self.counts),
                "examples": {k: list(v) for k, v in self.examples.items()}}

    def __str__(self) -> str:
        lines = [f"FilterReport{' (streaming, so far)' if self.streaming else ''}: kept {self.total_kept} of "
                 f"{self.total} ({self.kept_seconds / 3600:.3f} h), dropped {self.total_dropped}"]
        for reason, n in self.counts.items():
            if n:
                shown = ", ".join(f"{p} ({d})" if d else p for p, d in zip(self.examples[reason], self.details[reason]))
                lines.append(f"  {reason}: {n}  e.g. {shown}")
        return "\n".join(lines)


class _Drop(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def _audio_path(audio: Any) -> str:
    if isinstance(audio, Mapping):
        return audio.get("path") or ""
    if isinstance(audio, (str, os.PathLike)):
        return os.fspath(audio)
    return ""


def _prepare_one(audio, text, o) -> tuple[str, np.ndarray, list[int], float]:
    """-> (text, features [T, n_mels], labels, duration) or raise _Drop."""
    try:
        array = load_audio(audio, o["sampling_rate"])
    except FileNotFoundError as exc:
        raise _Drop("missing_audio", f"not found: {exc}") from None
    except Exception as exc:
        raise _Drop("unreadable_audio", f"{type(exc).__name__}: {exc}"[:300]) from None
    if array.size == 0:
        raise _Drop("empty_audio")
    if not np.isfinite(array).all():
        raise _Drop("non_finite_audio")
    duration = array.size / o["sampling_rate"]
    if duration < o["min_duration_s"]:
        raise _Drop("too_short", f"{duration:.2f} s")
    if o["max_duration_s"] is not None and duration > o["max_duration_s"]:
        raise _Drop("too_long", f"{duration:.2f} s")

    text = " ".join((text or "").split())
    if not text:
        raise _Drop("empty_transcript")
    bad = set(text) - o["allowed_chars"]
    if bad:
        if o["oov"] == "drop":
            raise _Drop("oov_characters", repr("".join(sorted(bad))))
        if o["oov"] == "remove":
            text = " ".join("".join(c for c in text if c not in bad).split())
            if not text:
                raise _Drop("empty_transcript", "empty after removing OOV characters")
    labels = list(o["tokenizer"](text, add_special_tokens=False)["input_ids"])

    fe = o["feature_extractor"]
    out = fe(array, sampling_rate=o["sampling_rate"], return_tensors="np", return_attention_mask=True)
    features = out["input_features"][0]
    num_frames = int(out["attention_mask"][0].sum()) if "attention_mask" in out else features.shape[0]
    features = np.ascontiguousarray(features[:num_frames], dtype=np.float32)

    needed = len(labels) + sum(a == b for a, b in zip(labels, labels[1:]))  # a blank between repeats
    available = int(ctc_output_length(num_frames, o["subsampling_factor"]))
    if needed > available:
        raise _Drop("ctc_infeasible", f"needs {needed} output frames, has {available}")
    return text, features, labels, duration


def _prepare_batch(batch: dict[str, list], **o) -> dict[str, list]:
    if os.getpid() != _IMPORT_PID and torch.get_num_threads() != 1:
        # A forked map worker: the parent's OpenMP pool does not survive fork(), and entering it deadlocks.
        torch.set_num_threads(1)
    audio_column, text_column, n_mels = o["audio_column"], o["text_column"], o["n_mels"]
    out: dict[str, list] = {k: [] for k in (text_column, "input_features", "labels", "input_length", "duration",
                                            "_drop_reason", "_drop_path", "_drop_detail")}
    for audio, text in zip(batch[audio_column], batch[text_column]):
        reason = detail = ""
        try:
            text, features, labels, duration = _prepare_one(audio, text, o)
        except _Drop as drop:
            reason, detail = drop.reason, drop.detail
            features, labels, duration = np.zeros((0, n_mels), np.float32), [], 0.0
        except Exception as exc:  # an odd row must not kill a long map; it is reported instead
            reason, detail = "processing_error", f"{type(exc).__name__}: {exc}"[:300]
            features, labels, duration = np.zeros((0, n_mels), np.float32), [], 0.0
        out[text_column].append(text if isinstance(text, str) else "")
        out["input_features"].append(features)
        out["labels"].append(labels)
        out["input_length"].append(features.shape[0])
        out["duration"].append(duration)
        out["_drop_reason"].append(reason)
        out["_drop_path"].append(_audio_path(audio))
        out["_drop_detail"].append(detail)
    return out


_HELPER_COLUMNS = ["_drop_reason", "_drop_path", "_drop_detail"]


def prepare_dataset(
    ds: Dataset | IterableDataset,
    feature_extractor,
    tokenizer,
    *,
    min_duration_s: float = 0.1,
    max_duration_s: float | None = 30.0,
    subsampling_factor: int = 4,
    oov: str = "drop",
    text_column: str = "text",
    audio_column: str = "audio",
    num_proc: int = 1,
    batch_size: int = 64,
    max_examples: int = 5,
) -> tuple[Dataset | IterableDataset, FilterReport]:
    """Decode, featurise and tokenise a speech dataset once, dropping (and counting) unusable rows.

    Adds ``input_features`` ([T, n_mels] float32 log-mel, only the T = samples // hop valid frames),
    ``labels`` (token ids), ``input_length`` (T) and ``duration`` (seconds); removes the audio column.
    Audio is decoded here (not by ``datasets``), downmixed to mono and resampled to the feature
    extractor's rate. Dropped, in this order of checks (see :data:`DROP_REASONS`): missing/unreadable
    audio, empty audio, non-finite samples, duration outside [min_duration_s, max_duration_s], empty
    transcripts, characters outside the tokenizer vocabulary (``oov="drop"``; ``"remove"`` deletes them,
    ``"unk"`` maps them to the unknown token), and CTC-infeasible rows (labels + repeats >
    ``ctc_output_length(T, subsampling_factor)``).

    Returns ``(prepared, report)``. For an ``IterableDataset`` the work is lazy and ``report`` fills up
    as the result is iterated in this process.
    """
    if oov not in ("drop", "remove", "unk"):
        raise ValueError(f"oov must be 'drop', 'remove' or 'unk', got {oov!r}")
    vocab = tokenizer.get_vocab()
    specials = set(getattr(tokenizer, "all_special_tokens", []))
    allowed = {tok for tok in vocab if len(tok) == 1 and tok not in specials}
    delimiter = getattr(tokenizer, "word_delimiter_token", None)
    if delimiter in vocab:
        allowed.add(" ")
    if oov == "unk" and getattr(tokenizer, "unk_token", None) not in vocab:
        raise ValueError("oov='unk' needs a tokenizer with an unk token")
    n_mels = int(getattr(feature_extractor, "feature_size", 80))
    options = dict(
        audio_column=audio_column, text_column=text_column, n_mels=n_mels,
        sampling_rate=int(getattr(feature_extractor, "sampling_rate", SAMPLING_RATE)),
        feature_extractor=feature_extractor, tokenizer=tokenizer, allowed_chars=frozenset(allowed), oov=oov,
        min_duration_s=float(min_duration_s or 0.0), max_duration_s=max_duration_s,
        subsampling_factor=subsampling_factor,
    )
    features = ds.features
    if features is not None and isinstance(features.get(audio_column), Audio):
        ds = ds.cast_column(audio_column, Audio(decode=False))
        features = ds.features
    out_features = None
    if features is not None:
        out_features = Features({k: v for k, v in features.items() if k != audio_column})
        out_features.update({
            text_column: Value("string"),
            "input_features": Array2D(shape=(None, n_mels), dtype="float32"),
            "labels": _ListFeature(Value("int32")),
            "input_length": Value("int32"),
            "duration": Value("float32"),
            **{c: Value("string") for c in _HELPER_COLUMNS},
        })
    report = FilterReport(max_examples=max_examples)
    map_kwargs = dict(batched=True, batch_size=batch_size, remove_columns=[audio_column], features=out_features,
                      fn_kwargs=options)

    if isinstance(ds, IterableDataset):
        report.streaming = True

        def account(reason, path, detail, duration):
            report.add(reason, path, detail, duration)
            return reason == ""

        mapped = ds.map(_prepare_batch, **map_kwargs)
        prepared = mapped.filter(account, input_columns=["_drop_reason", "_drop_path", "_drop_detail", "duration"])
        return prepared.remove_columns(_HELPER_COLUMNS), report

    mapped = ds.map(_prepare_batch, writer_batch_size=batch_size, num_proc=num_proc if num_proc > 1 else None,
                    desc="Preparing speech features", **map_kwargs)
    meta = mapped.select_columns(_HELPER_COLUMNS + ["duration"]).with_format(None)[:]
    kept = []
    for i, (reason, path, detail, duration) in enumerate(
        zip(meta["_drop_reason"], meta["_drop_path"], meta["_drop_detail"], meta["duration"])
    ):
        report.add(reason, path or f"<row {i}>", detail, duration)
        if not reason:
            kept.append(i)
    prepared = mapped.select(kept) if len(kept) < len(mapped) else mapped
    prepared = prepared.remove_columns(_HELPER_COLUMNS)
    logger.info("%s", report)
    return prepared, report


# ==========================================================================================================
# Batching
# ==========================================================================================================
class _EpochHook:
    """``batch_sampler.sampler``: accelerate's ``DataLoaderShard.set_epoch`` reaches a sharded batch sampler's
    epoch only through ``batch_sampler.batch_sampler.sampler.set_epoch``."""

    def __init__(self, owner: DurationBatchSampler):
        self._owner = owner

    def set_epoch(self, epoch: int) -> None:
        self._owner.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        return (i for batch in self._owner for i in batch)

    def __len__(self) -> int:
        return len(self._owner.lengths)


class DurationBatchSampler(torch.utils.data.Sampler):
    """Batches of indices bounded by audio seconds, grouping similar lengths.

    Each batch satisfies ``len(batch) * max(lengths[batch]) <= max_batch_seconds`` (the padded size, which
    also bounds the total audio); a single item longer than the budget forms its own batch. With
    ``shuffle=True`` the indices are permuted, cut into buckets of about ``bucket_size_multiplier``
    batches, sorted by length inside each bucket, packed, and the batch order is shuffled; all of it
    deterministic for ``(seed, epoch)``. With ``shuffle=False`` the whole set is sorted by length.

    Use as ``DataLoader(ds, batch_sampler=sampler, ...)``. Under ``accelerate.prepare`` each process gets
    every ``num_processes``-th batch (all processes must use the same seed); accelerate advances the epoch
    itself. ``drop_last`` is only read by accelerate's sharding (drop the uneven tail of batches instead of
    repeating early ones). ``len()`` is exact for the current epoch; the count can differ by a few batches
    between epochs.
    """

    batch_size = None  # batches have variable size (accelerate's BatchSamplerShard reads this)

    def __init__(
        self,
        lengths: Sequence[float],
        max_batch_seconds: float,
        *,
        shuffle: bool = True,
        seed: int = 0,
        bucket_size_multiplier: int = 100,
        max_batch_size: int | None = None,
        drop_last: bool = False,
    ):
        self.lengths = np.asarray(list(lengths), dtype=np.float64)
        if self.lengths.ndim != 1 or (self.lengths < 0).any() or not np.isfinite(self.lengths).all():
            raise ValueError("lengths must be a 1-D sequence of non-negative finite seconds")
        if max_batch_seconds <= 0:
            raise ValueError("max_batch_seconds must be > 0")
        self.max_batch_seconds = float(max_batch_seconds)
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), drop_last
        self.bucket_size_multiplier = max(1, int(bucket_size_multiplier))
        self.max_batch_size = max_batch_size
        self.epoch = 0
        self.sampler = _EpochHook(self)
        self._cache: tuple[int, list[list[int]]] | None = None
        too_long = int((self.lengths > self.max_batch_seconds).sum())
        if too_long:
            logger.warning("%d items are longer than max_batch_seconds=%s; each gets its own batch",
                           too_long, max_batch_seconds)

    @classmethod
    def from_dataset(cls, ds: Dataset, max_batch_seconds: float, *, column: str = "duration", **kwargs):
        return cls(ds.with_format(None)[column], max_batch_seconds, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _pack(self, order: np.ndarray) -> list[list[int]]:
        batches, batch, longest = [], [], 0.0
        for i in order.tolist():
            length = self.lengths[i]
            new_longest = max(longest, length)
            full = self.max_batch_size is not None and len(batch) >= self.max_batch_size
            if batch and (full or new_longest * (len(batch) + 1) > self.max_batch_seconds):
                batches.append(batch)
                batch, new_longest = [], length
            batch.append(i)
            longest = new_longest
        if batch:
            batches.append(batch)
        return batches

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """The batches of ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        n = len(self.lengths)
        if n == 0:
            result: list[list[int]] = []
        elif not self.shuffle:
            result = self._pack(np.argsort(self.lengths, kind="stable"))
        else:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(n)
            per_batch = max(1, int(self.max_batch_seconds // max(float(self.lengths.mean()), 1e-6)))
            bucket = per_batch * self.bucket_size_multiplier
            result = []
            for start in range(0, n, bucket):
                chunk = order[start:start + bucket]
                result += self._pack(chunk[np.argsort(self.lengths[chunk], kind="stable")])
            result = [result[i] for i in rng.permutation(len(result))]
        self._cache = (epoch, result)
        return result

    def __iter__(self) -> Iterator[list[int]]:
        yield from (list(b) for b in self.batches())

    def __len__(self) -> int:
        return len(self.batches())


# ==========================================================================================================
# Collation
# ==========================================================================================================
class DataCollatorCTCWithPadding:
    """Pad prepared rows into a CTC batch.

    Returns ``input_features`` float32 [B, T, F] (padded with the feature extractor's ``padding_value``, or
    the number given instead of an extractor), ``attention_mask`` [B, T] (1 = valid frame; dtype
    ``attention_mask_dtype``) and, when the rows have ``labels``, ``labels`` long [B, L] padded with
    ``label_pad_token_id`` (-100, ignored by the CTC loss). Other columns are ignored.
    """

    def __init__(
        self,
        feature_extractor: Any = 0.0,
        *,
        label_pad_token_id: int = -100,
        pad_to_multiple_of: int | None = None,
        attention_mask_dtype: torch.dtype = torch.long,
    ):
        if isinstance(feature_extractor, (int, float)):
            self.padding_value = float(feature_extractor)
        else:
            self.padding_value = float(getattr(feature_extractor, "padding_value", 0.0) or 0.0)
        self.label_pad_token_id = label_pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.attention_mask_dtype = attention_mask_dtype

    def _round(self, n: int) -> int:
        m = self.pad_to_multiple_of
        return n if not m else int(math.ceil(n / m) * m)

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        feats = [torch.as_tensor(np.asarray(r["input_features"], dtype=np.float32)) for r in rows]
        if any(f.ndim != 2 for f in feats):
            raise ValueError("input_features must be [T, F] per row")
        num_feats = feats[0].shape[1]
        max_t = self._round(max(f.shape[0] for f in feats))
        batch = {
            "input_features": torch.full((len(rows), max_t, num_feats), self.padding_value, dtype=torch.float32),
            "attention_mask": torch.zeros((len(rows), max_t), dtype=self.attention_mask_dtype),
        }
        for i, f in enumerate(feats):
            batch["input_features"][i, : f.shape[0]] = f
            batch["attention_mask"][i, : f.shape[0]] = 1
        if all("labels" in r for r in rows):
            labels = [torch.as_tensor(np.asarray(r["labels"], dtype=np.int64)).reshape(-1) for r in rows]
            max_l = self._round(max([len(l) for l in labels] + [1]))
            batch["labels"] = torch.full((len(rows), max_l), self.label_pad_token_id, dtype=torch.long)
            for i, l in enumerate(labels):
                batch["labels"][i, : len(l)] = l
        return batch
