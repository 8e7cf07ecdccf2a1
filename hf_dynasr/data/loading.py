"""Loading speech corpora: dataset specs (Hub, LibriSpeech folders, audiofolder, CSV) -> a `datasets.Dataset`
with `audio` and `text` columns, transcripts normalised by `hf_dynasr.data.text.normalize_text`."""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from datasets import Audio, Dataset, IterableDataset, Value, load_dataset

from hf_dynasr.data.processing import SAMPLING_RATE
from hf_dynasr.data.text import TRANSCRIPT_CHARACTERS, normalize_text

logger = logging.getLogger(__name__)

__all__ = ["AUDIO_COLUMN_CANDIDATES", "SPEC_FORMS", "TEXT_COLUMN_CANDIDATES", "load_speech_dataset", "parse_spec",
           "read_table", "resolve_split", "check_distinct_splits"]

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
    duplicates: str = "keep",
) -> Dataset | IterableDataset:
    """Load a speech corpus as a ``Dataset`` (or ``IterableDataset`` with ``streaming=True``).

    ``spec`` is one of the forms in :data:`SPEC_FORMS`. The result has the columns ``audio`` (cast to
    ``Audio(sampling_rate, num_channels=1)``: rows decode to mono float32 at ``sampling_rate``), ``text``
    (``normalize_text`` of the transcription; ``normalize=False`` keeps it raw, a dict passes keyword
    arguments to ``normalize_text``) and ``path`` where the audio path is known, plus the source's other
    columns. ``split`` selects a subdirectory of a local corpus when it exists (``"audiofolder:data/synth",
    split="dev"`` reads ``data/synth/dev``); a corpus with split folders but not that one is refused; a folder
    without split folders is read whole (see :func:`resolve_split`). For the Hub it is the split passed to
    ``load_dataset`` (default ``"train"``). ``text_column``/``audio_column`` override the detection (text:
    first of ``TEXT_COLUMN_CANDIDATES``; audio: the first ``Audio`` column or first of
    ``AUDIO_COLUMN_CANDIDATES``). Transcripts keep their digits (``TRANSCRIPT_CHARACTERS``): preparation drops
    and counts them (``oov_characters``) instead of training on a transcript missing its spoken numbers.

    An audio file a local corpus lists more than once is logged as a warning with the count. ``duplicates=
    "drop"`` (what training uses) also reads each file once: repeats with one transcript (after normalisation)
    keep their first row, a file listed with different transcripts loses every row, as which one is right
    cannot be told; ``"keep"`` leaves the rows as listed.

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
        columns = _librispeech_columns(_split_dir(path, split, _MARKERS[kind])[0])
    elif kind == "audiofolder":
        columns = _audiofolder_columns(_split_dir(path, split, _MARKERS[kind])[0], audio_column, text_column)
    else:  # csv
        columns = _table_columns(read_table(path), os.path.dirname(os.path.abspath(path)), path,
                                 audio_column, text_column)
    columns = _repeated_listings(columns, normalize, path, duplicates)
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


def _split_dir(path: str, split: str | None, marker) -> tuple[str, bool]:
    """(the directory to read, whether it is the folder of the split asked for): ``path/split`` if it exists,
    ``path/train`` for a corpus root without a split, else ``path`` itself when it holds no split folders."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"dataset directory not found: {path}")
    if split and os.path.isdir(os.path.join(path, split)):
        return os.path.join(path, split), True
    if split:
        splits = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))
                        and marker(os.path.join(path, d)))
        if splits or not marker(path):
            raise FileNotFoundError(
                f"no split {split!r} under {path}" + (f" (its splits: {', '.join(splits)})" if splits else "")
                + f": there is no folder {os.path.join(path, split)}. Name a split that exists, or point the "
                "dataset spec at the folder that holds this split's data")
    if split is None and not marker(path) and os.path.isdir(os.path.join(path, "train")):
        return os.path.join(path, "train"), False
    return path, False


_MARKERS = {"librispeech": lambda d: bool(_trans_files(d)), "audiofolder": lambda d: _has_metadata(d)}


def resolve_split(spec: str | Mapping[str, Any], split: str | None = None) -> tuple[str, bool]:
    """(what ``load_speech_dataset(spec, split=split)`` reads, whether that is a folder named after the split).

    The first is a real path for local corpora (a folder, or the CSV file) and ``hub:<id>:<config>:<split>``
    for the Hub. The flag is False when a local corpus without split folders is read whole: two splits of
    such a folder are the same rows, which is how a training run would silently evaluate on its training data.
    """
    kind, path, name, spec_split, _ = parse_spec(spec)
    split = split if split is not None else spec_split
    if kind == "hub":
        return f"hub:{path}:{name or ''}:{split or 'train'}", True
    if kind == "csv":
        return os.path.realpath(path), False
    folder, named = _split_dir(path, split, _MARKERS[kind])
    return os.path.realpath(folder), named


def check_distinct_splits(train_spec, train_split: str | None, eval_spec, eval_split: str | None) -> None:
    """Raise ``ValueError`` when the evaluation set would silently be the training rows: a local corpus with no
    folder for ``eval_split`` is read whole, as its training split is. Asking for the training split itself
    (``eval_split == train_split``) is taken to mean it; a missing split of a corpus with split folders raises
    ``FileNotFoundError`` (see :func:`resolve_split`)."""
    train_source, _ = resolve_split(train_spec, train_split)
    try:
        eval_source, named = resolve_split(eval_spec, eval_split)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"evaluation data (--eval_data / --eval_split): {err}") from None
    if eval_source == train_source and not named and eval_split != train_split:
        raise ValueError(
            f"the evaluation split {eval_split!r} of {eval_spec} has no folder of its own, so it would be the "
            f"training rows ({eval_source} is read whole for both). Name an evaluation set: --eval_data <spec of "
            f"held-out data> or --eval_split <a split folder it has>; to evaluate on the training rows on purpose, "
            f"pass --eval_split {train_split} (the training split)."
        )


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
            rows = read_table(table)
            if not rows:
                raise ValueError(f"{table} lists no utterance (it is empty or has only a header); add one line per "
                                 "audio file: file_name,transcription (e.g. clip1.wav,hello world)")
            return _table_columns(rows, os.path.abspath(folder), table, audio_column or "file_name", text_column)
    raise FileNotFoundError(f"no metadata.csv or metadata.jsonl in {folder}")


def _table_columns(rows: list[dict], root: str, source: str, audio_column: str | None,
                   text_column: str | None) -> dict[str, list]:
    """Rows with a relative audio path and a transcription -> columns audio, text, path, <others>."""
    if not rows:
        raise ValueError(f"{source} lists no utterance (it is empty or has only a header); add one line per audio "
                         "file: an audio path column and a transcription column")
    header = list(rows[0])
    audio_column = audio_column or _first_present(AUDIO_COLUMN_CANDIDATES, header, "audio", source)
    text_column = text_column or _first_present(TEXT_COLUMN_CANDIDATES, header, "text", source)
    for column in (audio_column, text_column):
        if rows and column not in header:
            raise ValueError(f"column {column!r} not in {source} (columns {header})")
    extra = [c for c in header if c not in (audio_column, text_column, "audio", "text", "path")]
    cols: dict[str, list] = {"audio": [], "text": [], "path": [], **{c: [] for c in extra}}
    real_root = os.path.realpath(root)
    for row in rows:
        rel = str(row.get(audio_column) or "").strip()
        full = os.path.normpath(os.path.join(root, rel)) if rel else ""
        if rel and os.path.commonpath([root, full]) != root:
            raise ValueError(f"audio path {rel!r} in {source} escapes its folder {root}")
        if rel and os.path.commonpath([real_root, os.path.realpath(full)]) != real_root:
            raise ValueError(f"audio path {rel!r} in {source} escapes its folder {root} through a symbolic link "
                             f"(it resolves to {os.path.realpath(full)}); copy the file into the folder")
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
    raise ValueError(f"no {what} column in {source} (columns {list(columns)}); rename its {what} column to one "
                     f"of {list(candidates)} (in Python, load_speech_dataset(..., {what}_column=...) also works)")


def _repeated_listings(cols: dict[str, list], normalize, source: str, duplicates: str) -> dict[str, list]:
    """Warn about audio files listed more than once; with ``duplicates="drop"`` keep the first of identical
    listings and no listing of a file with different transcripts."""
    if duplicates not in ("keep", "drop"):
        raise ValueError(f"duplicates must be 'keep' or 'drop', got {duplicates!r}")
    kwargs = {"keep": TRANSCRIPT_CHARACTERS, **(dict(normalize) if isinstance(normalize, Mapping) else {})}
    listings: dict[str, list[int]] = {}
    for i, path in enumerate(cols["audio"]):
        if path:
            listings.setdefault(path, []).append(i)  # absolute and normalised by the column builders
    drop, conflicts, repeats = set(), [], 0
    for rows in (rows for rows in listings.values() if len(rows) > 1):
        texts = {normalize_text(cols["text"][i], **kwargs) if normalize else cols["text"][i] for i in rows}
        if len(texts) > 1:
            drop.update(rows)
            conflicts.append(f"{cols['audio'][rows[0]]} ({' / '.join(sorted(map(repr, texts)))})")
        else:
            drop.update(rows[1:])
            repeats += len(rows) - 1
    if conflicts:
        logger.warning("%s: %d audio file(s) listed with different transcripts (%d rows), %s; e.g. %s", source,
                       len(conflicts), len(drop) - repeats, "all dropped (which transcript is right cannot be told)"
                       if duplicates == "drop" else "kept as listed", "; ".join(conflicts[:3]))
    if repeats:
        logger.warning("%s: %d repeated listing(s) of an audio file with the same transcript %s", source, repeats,
                       "dropped" if duplicates == "drop" else "kept")
    if duplicates == "keep" or not drop:
        return cols
    return {name: [v for i, v in enumerate(values) if i not in drop] for name, values in cols.items()}


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
    norm_kwargs = {"keep": TRANSCRIPT_CHARACTERS, **(dict(normalize) if isinstance(normalize, Mapping) else {})}
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
