"""Robust preparation of speech datasets for hf_dynasr: features, labels, filtering with a report.

``prepare_dataset`` decodes (``hf_dynasr.data.audio.load_audio``), featurises and tokenises every row once
and drops unusable rows, counting them per reason (:data:`DROP_REASONS`) in a :class:`FilterReport`;
``ctc_output_length`` is the encoder frame count the CTC feasibility check uses.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from datasets import Array2D, Audio, Dataset, Features, IterableDataset, Value

try:  # datasets >= 4
    from datasets import List as _ListFeature
except ImportError:  # pragma: no cover
    from datasets import Sequence as _ListFeature

from hf_dynasr.data.audio import TruncatedAudioError, load_audio
from hf_dynasr.data.processing import SAMPLING_RATE

logger = logging.getLogger(__name__)
_IMPORT_PID = os.getpid()  # a different pid in _prepare_batch means a forked datasets.map worker

__all__ = ["DROP_REASONS", "DroppedExample", "FilterReport", "ctc_output_length", "prepare_dataset", "prepare_example",
           "preparation_options", "prepare_transcript", "check_duration", "check_ctc_feasible",
           "keep_usable", "keep_usable_in_all", "map_features", "augmented_audio", "decoded_or_none", "DROP_COLUMNS"]


DROP_REASONS = ("missing_audio", "unreadable_audio", "truncated_audio", "empty_audio", "non_finite_audio", "too_short",
                "too_long", "empty_transcript", "oov_characters", "ctc_infeasible", "processing_error")


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


class DroppedExample(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def audio_path(audio: Any) -> str:
    if isinstance(audio, Mapping):
        return audio.get("path") or ""
    if isinstance(audio, (str, os.PathLike)):
        return os.fspath(audio)
    return ""


def check_duration(duration: float, o) -> None:
    """Raise :class:`DroppedExample` (too_short / too_long) for a duration outside the options' range."""
    if duration < o["min_duration_s"]:
        raise DroppedExample("too_short", f"{duration:.2f} s")
    if o["max_duration_s"] is not None and duration > o["max_duration_s"]:
        raise DroppedExample("too_long", f"{duration:.2f} s")


def prepare_transcript(text, o) -> tuple[str, list[int]]:
    """A transcript -> (text, label ids), or raise :class:`DroppedExample` (empty / out-of-vocabulary)."""
    text = " ".join((text or "").split())
    if not text:
        raise DroppedExample("empty_transcript")
    bad = set(text) - o["allowed_chars"]
    if bad:
        if o["oov"] == "drop":
            # digits reach this check (the loader keeps them): how a number is read is not a character rule's guess
            spell = ": spell numbers out (3 -> three)" if any(c.isdigit() for c in bad) else ""
            raise DroppedExample("oov_characters", repr("".join(sorted(bad))) + spell)
        if o["oov"] == "remove":
            text = " ".join("".join(c for c in text if c not in bad).split())
            if not text:
                raise DroppedExample("empty_transcript", "empty after removing OOV characters")
    return text, list(o["tokenizer"](text, add_special_tokens=False)["input_ids"])


def check_ctc_feasible(labels: list[int], num_frames: int, o) -> None:
    """Raise :class:`DroppedExample` (ctc_infeasible) when the labels need more encoder frames than there are."""
    needed = len(labels) + sum(a == b for a, b in zip(labels, labels[1:]))  # a blank between repeats
    available = int(ctc_output_length(num_frames, o["subsampling_factor"]))
    if needed > available:
        raise DroppedExample("ctc_infeasible", f"needs {needed} output frames, has {available}")


def prepare_example(audio, text, o) -> tuple[str, np.ndarray, list[int], float]:
    """One utterance -> (text, features [T, n_mels], labels, duration), or raise :class:`DroppedExample`.

    ``o``: the options of :func:`preparation_options`."""
    try:
        array = load_audio(audio, o["sampling_rate"])
    except FileNotFoundError as exc:
        raise DroppedExample("missing_audio", f"not found: {exc}") from None
    except TruncatedAudioError as exc:
        raise DroppedExample("truncated_audio", str(exc)) from None
    except Exception as exc:
        raise DroppedExample("unreadable_audio", f"{type(exc).__name__}: {exc}"[:300]) from None
    if array.size == 0:
        raise DroppedExample("empty_audio")
    if not np.isfinite(array).all():
        raise DroppedExample("non_finite_audio")
    duration = array.size / o["sampling_rate"]
    check_duration(duration, o)
    text, labels = prepare_transcript(text, o)

    fe = o["feature_extractor"]
    out = fe(array, sampling_rate=o["sampling_rate"], return_tensors="np", return_attention_mask=True)
    features = out["input_features"][0]
    num_frames = int(out["attention_mask"][0].sum()) if "attention_mask" in out else features.shape[0]
    features = np.ascontiguousarray(features[:num_frames], dtype=np.float32)
    if not np.isfinite(features).all():  # finite samples far outside [-1, 1] overflow the mel power
        raise DroppedExample("non_finite_audio", f"non-finite features (peak sample {np.abs(array).max():.3g})")

    check_ctc_feasible(labels, num_frames, o)
    return text, features, labels, duration


def decoded_or_none(audio, sampling_rate: int) -> np.ndarray | None:
    """The decoded waveform, or None when it does not decode to finite samples (:func:`prepare_example` decodes
    it again and counts the reason)."""
    try:
        array = load_audio(audio, sampling_rate)
    except Exception:  # noqa: BLE001
        return None
    return array if array.size and np.isfinite(array).all() else None


def augmented_audio(audios: list, augmenter, keys: list[tuple[int, ...]], sampling_rate: int) -> list:
    """Each of ``audios`` decoded and perturbed by ``augmenter`` (a :class:`hf_dynasr.data.augmentation.
    Augmenter`) with its generator seeded by its key, the others being its babble sources; an audio that does not
    decode is returned as it is, for :func:`prepare_example` to count."""
    arrays = [decoded_or_none(audio, sampling_rate) for audio in audios]
    usable = [array for array in arrays if array is not None]
    out = []
    for audio, array, key in zip(audios, arrays, keys):
        if array is not None:
            others = [other for other in usable if other is not array]
            audio = {"array": augmenter(array, key, others), "sampling_rate": sampling_rate, "path": audio_path(audio)}
        out.append(audio)
    return out


def _prepare_batch(batch: dict[str, list], indices: list[int], **o) -> dict[str, list]:
    if os.getpid() != _IMPORT_PID and torch.get_num_threads() != 1:
        # A forked map worker: the parent's OpenMP pool does not survive fork(), and entering it deadlocks.
        torch.set_num_threads(1)
    audio_column, text_column, n_mels = o["audio_column"], o["text_column"], o["n_mels"]
    out: dict[str, list] = {k: [] for k in (text_column, "input_features", "labels", "input_length", "duration",
                                            "_drop_reason", "_drop_path", "_drop_detail")}
    audios = batch[audio_column]
    if o.get("augmenter") is not None:  # an augmented copy: key (copy, row), as on the fly it is (epoch, row)
        audios = augmented_audio(audios, o["augmenter"], [(o["copy"], i) for i in indices], o["sampling_rate"])
    for audio, text in zip(audios, batch[text_column]):
        reason = detail = ""
        try:
            text, features, labels, duration = prepare_example(audio, text, o)
        except DroppedExample as drop:
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
        out["_drop_path"].append(audio_path(audio))
        out["_drop_detail"].append(detail)
    return out


DROP_COLUMNS = ["_drop_reason", "_drop_path", "_drop_detail"]


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
    options = preparation_options(feature_extractor, tokenizer, min_duration_s=min_duration_s,
                                  max_duration_s=max_duration_s, subsampling_factor=subsampling_factor, oov=oov)
    options.update(audio_column=audio_column, text_column=text_column)
    report = FilterReport(max_examples=max_examples)
    if isinstance(ds, IterableDataset):
        return _prepare_streaming(_undecoded(ds, audio_column), _map_kwargs(ds, options, batch_size), report), report
    prepared = keep_usable(map_features(ds, options, num_proc=num_proc, batch_size=batch_size), report)
    logger.info("%s", report)
    return prepared, report


def _undecoded(ds, audio_column: str):
    """`ds` with its audio column left undecoded (this module decodes it, see :func:`prepare_dataset`)."""
    if ds.features is not None and isinstance(ds.features.get(audio_column), Audio):
        return ds.cast_column(audio_column, Audio(decode=False))
    return ds


def _map_kwargs(ds, options: dict, batch_size: int) -> dict:
    audio_column, text_column = options["audio_column"], options["text_column"]
    features = _output_features(_undecoded(ds, audio_column).features, audio_column, text_column, options["n_mels"])
    return dict(batched=True, batch_size=batch_size, with_indices=True, remove_columns=[audio_column],
                features=features, fn_kwargs=options)


def map_features(ds: Dataset, options: dict, *, num_proc: int = 1, batch_size: int = 64) -> Dataset:
    """``ds`` prepared row by row with the options of :func:`preparation_options` plus ``audio_column`` and
    ``text_column`` (and, for an augmented copy, ``augmenter`` and ``copy``: its audio is perturbed with the key
    ``(copy, row index)``), unusable rows kept with their drop reason: :func:`keep_usable` removes and counts
    them. Cached by ``datasets`` under a fingerprint of the options."""
    return _undecoded(ds, options["audio_column"]).map(
        _prepare_batch, writer_batch_size=batch_size, num_proc=num_proc if num_proc > 1 else None,
        desc="Preparing speech features" + (f" (augmented copy {options['copy']})" if "copy" in options else ""),
        **_map_kwargs(ds, options, batch_size))


def preparation_options(feature_extractor, tokenizer, *, min_duration_s: float = 0.1,
                        max_duration_s: float | None = 30.0, subsampling_factor: int = 4, oov: str = "drop") -> dict:
    """The options :func:`prepare_example` reads (see :func:`prepare_dataset` for their meaning)."""
    if oov not in ("drop", "remove", "unk"):
        raise ValueError(f"oov must be 'drop', 'remove' or 'unk', got {oov!r}")
    if oov == "unk" and getattr(tokenizer, "unk_token", None) not in tokenizer.get_vocab():
        raise ValueError("oov='unk' needs a tokenizer with an unk token")
    return dict(
        n_mels=int(getattr(feature_extractor, "feature_size", 80)),
        sampling_rate=int(getattr(feature_extractor, "sampling_rate", SAMPLING_RATE)),
        feature_extractor=feature_extractor, tokenizer=tokenizer, allowed_chars=_allowed_characters(tokenizer),
        oov=oov, min_duration_s=float(min_duration_s or 0.0), max_duration_s=max_duration_s,
        subsampling_factor=subsampling_factor,
    )


def _allowed_characters(tokenizer) -> frozenset[str]:
    """The transcript characters the tokenizer spells: its one-character tokens, and space for the word
    delimiter."""
    vocab = tokenizer.get_vocab()
    specials = set(getattr(tokenizer, "all_special_tokens", []))
    allowed = {tok for tok in vocab if len(tok) == 1 and tok not in specials}
    if getattr(tokenizer, "word_delimiter_token", None) in vocab:
        allowed.add(" ")
    return frozenset(allowed)


def _output_features(features, audio_column: str, text_column: str, n_mels: int) -> Features | None:
    """The features of the mapped dataset (None when the input's are unknown)."""
    if features is None:
        return None
    out = Features({k: v for k, v in features.items() if k != audio_column})
    out.update({
        text_column: Value("string"),
        "input_features": Array2D(shape=(None, n_mels), dtype="float32"),
        "labels": _ListFeature(Value("int32")),
        "input_length": Value("int32"),
        "duration": Value("float32"),
        **{c: Value("string") for c in DROP_COLUMNS},
    })
    return out


def _prepare_streaming(ds: IterableDataset, map_kwargs: dict, report: FilterReport) -> IterableDataset:
    """Lazy preparation: rows are counted into `report` as the result is iterated."""
    report.streaming = True

    def account(reason, path, detail, duration):
        report.add(reason, path, detail, duration)
        return reason == ""

    mapped = ds.map(_prepare_batch, **map_kwargs)
    prepared = mapped.filter(account, input_columns=["_drop_reason", "_drop_path", "_drop_detail", "duration"])
    return prepared.remove_columns(DROP_COLUMNS)


def keep_usable(mapped: Dataset, report: FilterReport) -> Dataset:
    """The rows of `mapped` with no drop reason; every row counted into `report`."""
    return keep_usable_in_all([mapped], report)[0]


def keep_usable_in_all(copies: list[Dataset], report: FilterReport) -> list[Dataset]:
    """The rows usable in every one of ``copies`` (the same rows prepared several ways), so that row ``i`` is
    the same utterance in each; a row is counted into `report` once, with the first copy's drop reason."""
    metas = [c.select_columns(DROP_COLUMNS + ["duration"]).with_format(None)[:] for c in copies]
    kept = []
    for i in range(len(copies[0])):
        dropped = next((m for m in metas if m["_drop_reason"][i]), None)
        meta = dropped or metas[0]
        report.add(meta["_drop_reason"][i], meta["_drop_path"][i] or f"<row {i}>", meta["_drop_detail"][i],
                   meta["duration"][i])
        if dropped is None:
            kept.append(i)
    return [(c.select(kept) if len(kept) < len(c) else c).remove_columns(DROP_COLUMNS) for c in copies]
