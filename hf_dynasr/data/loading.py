"""Loading speech corpora: dataset specs (Hub, LibriSpeech folders, audiofolder, CSV) -> a `datasets.Dataset`
with `audio` and `text` columns, transcripts normalised by `hf_dynasr.data.text.normalize_text`."""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from datasets import Audio, Dataset, IterableDataset, Value, load_dataset

from hf_dynasr.data.processing import SAMPLING_RATE
from hf_dynasr.data.text import normalize_text

__all__ = ["AUDIO_COLUMN_CANDIDATES", "SPEC_FORMS", "TEXT_COLUMN_CANDIDATES", "load_speech_dataset", "parse_spec",
           "read_table"]

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
    kind, path, name, spec_split, extra = parse_spec(spec)
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
        columns = _table_columns(read_table(path), os.path.dirname(os.path.abspath(path)), path,
                                 audio_column, text_column)
    ds = _standardize(Dataset.from_dict(columns), "text", "audio", sampling_rate, normalize, path)
    return ds.to_iterable_dataset() if streaming else ds


def parse_spec(spec: str | Mapping[str, Any]) -> tuple[str, str, str | None, str | None, dict]:
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


def read_table(path) -> list[dict]:
    """The rows of a metadata table: `.jsonl` (one JSON object a line), `.tsv`, or else CSV with a header."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"metadata file not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        if path.lower().endswith(".jsonl"):
            return [json.loads(line) for line in f if line.strip()]
        return list(csv.DictReader(f, delimiter="\t" if path.lower().endswith(".tsv") else ","))


def _audiofolder_columns(folder: str, audio_column: str | None, text_column: str | None) -> dict[str, list]:
    for name in ("metadata.csv", "metadata.jsonl"):
        if os.path.isfile(os.path.join(folder, name)):
            table = os.path.join(folder, name)
            return _table_columns(read_table(table), os.path.abspath(folder), table,
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
