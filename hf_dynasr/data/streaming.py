"""Speech data computed on the fly: features in DataLoader workers, never a whole-corpus feature cache.

Two ways to feed training from raw audio (rows with ``audio`` and ``text``, as ``load_speech_dataset`` gives):

* :class:`OnTheFlySpeechDataset` (map-style): an index of every usable row with its duration read from the
  audio header (:func:`index_corpus`: no decoding; an Arrow file in the ``datasets`` cache, so the other ranks
  and later runs reuse it), batches drawn by :class:`~hf_dynasr.data.batching.DurationBatchSampler` and sharded
  across processes by accelerate, every row decoded, featurised and tokenised in a DataLoader worker. Resuming
  skips batches as lists of indices, without reading audio.
* :class:`StreamingSpeechBatches` (iterable): a ``datasets.IterableDataset`` (a Hub dataset with
  ``streaming=True``, or a local corpus) read as a shuffled stream; every process and every worker reads its own
  shard (``split_dataset_by_node``), rows are bucketed by header duration in a buffer and packed into
  duration-bounded batches, and only the rows of batches that are trained on are decoded. The stream repeats
  (pass e reshuffled with ``seed`` and e), so every process yields a batch per step whatever the size of its
  shard; resuming replays the stream reading headers only.

Nothing is silently lost: rows the header and the transcript rule out are counted when the index is built or
the row is read (:class:`~hf_dynasr.data.prepare.FilterReport` reasons), rows only decoding rules out are
counted in the worker; either way the counts travel with the next batch (``batch["data_report"]``, see
:func:`pop_data_report`) for the training loop to add up.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import soundfile as sf
import torch
from datasets import Audio, Dataset, Value
from datasets import IterableDataset as HFIterableDataset
from datasets import config as datasets_config
from datasets.distributed import split_dataset_by_node

from hf_dynasr.data.audio import AudioDecodeError, load_audio
from hf_dynasr.data.augmentation import Augmenter
from hf_dynasr.data.batching import DataCollatorCTCWithPadding, pack_by_duration
from hf_dynasr.data.prepare import (
    DROP_COLUMNS,
    DroppedExample,
    FilterReport,
    audio_path,
    augmented_audio,
    check_ctc_feasible,
    check_duration,
    keep_usable,
    prepare_example,
    prepare_transcript,
)
from hf_dynasr.data.processing import HOP_LENGTH, SAMPLING_RATE

logger = logging.getLogger(__name__)

__all__ = ["OnTheFlySpeechDataset", "StreamingSpeechBatches", "header_duration", "index_corpus", "is_placeholder",
           "pop_data_report", "prepare_rows", "worker_init"]

PLACEHOLDER = "stream_placeholder"  # a batch a resumed stream yields only to keep the DataLoader's turns in step
INDEX_VERSION = "2"  # bump when the index's columns or checks change (the cache file name includes it)


# ==========================================================================================================
# The index: durations from headers, rows checked without decoding
# ==========================================================================================================
def header_duration(audio: Any) -> float:
    """Seconds of ``audio`` (a path, or an undecoded ``{"path", "bytes"}`` row) read from its header.

    Formats soundfile cannot read are decoded in full (exact, slower). Raises ``FileNotFoundError`` for a
    missing file and ``AudioDecodeError`` for anything else that cannot be read, including a path that is not
    a regular file (a FIFO would block a header read forever)."""
    data, path = (audio.get("bytes"), audio.get("path")) if isinstance(audio, Mapping) else (None, os.fspath(audio))
    if data is None:
        if not path or not os.path.exists(path):
            raise FileNotFoundError(path or "no audio bytes and no path")
        if not os.path.isfile(path):
            raise AudioDecodeError(f"{path} is not a regular file")
    try:
        info = sf.info(io.BytesIO(data) if data is not None else path)
        if info.frames > 0 and info.samplerate > 0:
            return info.frames / info.samplerate
    except Exception:  # noqa: BLE001 - another container: decode it below
        pass
    return load_audio(audio, SAMPLING_RATE).size / SAMPLING_RATE


def _index_batch(batch: dict[str, list], **o) -> dict[str, list]:
    """Header duration and transcript checks of a batch of rows (the map function of :func:`index_corpus`)."""
    out: dict[str, list] = {"text": [], "duration": [], **{c: [] for c in DROP_COLUMNS}}
    for audio, text in zip(batch["audio"], batch["text"]):
        reason = detail = ""
        duration = 0.0
        try:
            duration, text = _check_row(audio, text, o)
        except DroppedExample as drop:
            reason, detail = drop.reason, drop.detail
        out["text"].append(text if isinstance(text, str) else "")
        out["duration"].append(duration)
        for column, value in zip(DROP_COLUMNS, (reason, audio_path(audio), detail)):
            out[column].append(value)
    return out


def _check_row(audio, text, o) -> tuple[float, str]:
    """-> (seconds, cleaned transcript) of a row that passes every check a header and a transcript allow."""
    try:
        duration = header_duration(audio)
    except FileNotFoundError as exc:
        raise DroppedExample("missing_audio", f"not found: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable header is a counted drop
        raise DroppedExample("unreadable_audio", f"{type(exc).__name__}: {exc}"[:300]) from None
    if duration <= 0:
        raise DroppedExample("empty_audio")
    check_duration(duration, o)
    text, labels = prepare_transcript(text, o)
    # the frames the worker's features will have (samples // hop at the model's rate); it checks again exactly
    check_ctc_feasible(labels, int(duration * o["sampling_rate"]) // HOP_LENGTH, o)
    return duration, text


def index_corpus(ds: Dataset, options: dict, *, cache_dir: str | None = None,
                 num_proc: int = 1) -> tuple[Dataset, FilterReport]:
    """The usable rows of ``ds`` (columns ``audio`` undecoded, ``text`` cleaned, ``duration`` in seconds, plus
    the source's other columns) and the count of those ruled out, reading only audio headers.

    ``options``: :func:`~hf_dynasr.data.prepare.preparation_options`. The result is an Arrow file: a dataset
    backed by files is cached by ``datasets`` itself; an in-memory one (local corpora) under
    ``cache_dir`` (default: the ``datasets`` cache) named by a hash of its paths, file sizes and modification
    times, transcripts and the options, so a changed corpus is indexed again."""
    ds = ds.cast_column("audio", Audio(decode=False))
    map_kwargs = dict(batched=True, batch_size=256, fn_kwargs=options, num_proc=num_proc if num_proc > 1 else None,
                      features=_index_features(ds), desc="Indexing speech (audio headers)")
    if not ds.cache_files:
        folder = os.path.join(cache_dir or datasets_config.HF_DATASETS_CACHE, "hf_dynasr_index")
        os.makedirs(folder, exist_ok=True)
        map_kwargs["cache_file_name"] = os.path.join(folder, f"index-{_corpus_fingerprint(ds, options)}.arrow")
    mapped = ds.map(_index_batch, **map_kwargs)
    report = FilterReport()
    return keep_usable(mapped, report), report


def _index_features(ds: Dataset):
    features = ds.features.copy()
    features.update({"text": Value("string"), "duration": Value("float32"), **{c: Value("string")
                                                                              for c in DROP_COLUMNS}})
    return features


def _corpus_fingerprint(ds: Dataset, options: dict) -> str:
    """A hash of what decides the index: each row's audio path, size and mtime (or bytes), its transcript,
    and the checks' options."""
    digest = hashlib.sha256(INDEX_VERSION.encode())
    keys = ("min_duration_s", "max_duration_s", "oov", "sampling_rate", "subsampling_factor")
    digest.update(repr([options[k] for k in keys] + sorted(options["allowed_chars"])).encode())
    rows = ds.select_columns(["audio", "text"]).with_format(None)
    for start in range(0, len(rows), 4096):
        chunk = rows[start:start + 4096]
        for audio, text in zip(chunk["audio"], chunk["text"]):
            path, data = audio.get("path") or "", audio.get("bytes")
            try:
                stat = os.stat(path) if data is None and path else None
            except OSError:
                stat = None
            mark = hashlib.sha256(data).hexdigest() if data is not None else \
                (stat.st_size, stat.st_mtime_ns) if stat else None
            digest.update(repr((path, mark, text)).encode())
    return digest.hexdigest()[:24]


# ==========================================================================================================
# Map-style: the sampler picks rows, the workers decode them
# ==========================================================================================================
class OnTheFlySpeechDataset(torch.utils.data.Dataset):
    """Rows of an :func:`index_corpus` index, decoded, featurised and tokenised when they are read.

    ``dataset[i]`` is ``{"input_features": [T, n_mels] float32, "labels": [int]}``, or ``{"dropped": (reason,
    path, detail)}`` for a row only decoding rules out (:class:`OnTheFlyCollator` counts it). With an
    ``augmenter`` the DataLoader reads a batch at once (``__getitems__``): each row is perturbed with a generator
    seeded by the epoch (``epoch_source.epoch``, the batch sampler's, which workers copy when they start) and its
    index, the batch's other rows being its babble sources; a resumed run perturbs every row alike."""

    def __init__(self, index: Dataset, options: dict, augmenter: Augmenter | None = None, epoch_source=None):
        self.index = index.with_format(None)
        self.options = options
        self.augmenter = augmenter if augmenter is not None and augmenter.enabled else None
        self.epoch_source = epoch_source

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[dict]:
        rows = [self.index[int(i)] for i in indices]
        epoch = int(getattr(self.epoch_source, "epoch", 0))
        return prepare_rows([(row["audio"], row["text"]) for row in rows], self.options, self.augmenter,
                            [(epoch, int(i)) for i in indices])


def prepare_row(audio, text, options: dict) -> dict:
    """One row -> its training item or a ``{"dropped": ...}`` marker (decode-time drops: corrupt data past the
    header, non-finite samples, an exact frame count that turns out too short)."""
    try:
        text, features, labels, duration = prepare_example(audio, text, options)
    except DroppedExample as drop:
        return {"dropped": (drop.reason, audio_path(audio), drop.detail)}
    except Exception as exc:  # noqa: BLE001 - an odd row must not kill a long run; it is counted
        return {"dropped": ("processing_error", audio_path(audio), f"{type(exc).__name__}: {exc}"[:300])}
    return {"input_features": features, "labels": labels, "duration": duration}


def prepare_rows(rows: list[tuple], options: dict, augmenter: Augmenter | None = None,
                 keys: list[tuple[int, ...]] | None = None) -> list[dict]:
    """:func:`prepare_row` of each ``(audio, text)``; with an ``augmenter`` the decoded audio is perturbed first
    (``keys``: each row's place in the data stream, the generator's seed with the augmenter's). A row that does
    not decode to finite samples is left to :func:`prepare_row`, which counts it."""
    if augmenter is None:
        return [prepare_row(audio, text, options) for audio, text in rows]
    audios = augmented_audio([audio for audio, _ in rows], augmenter, keys, options["sampling_rate"])
    return [prepare_row(audio, text, options) for audio, (_, text) in zip(audios, rows)]


class OnTheFlyCollator:
    """Pads the kept items of a batch (:class:`DataCollatorCTCWithPadding`) and reports what was kept and
    dropped as ``batch["data_report"]``. A batch whose items were all dropped has zero rows."""

    def __init__(self, feature_extractor, n_mels: int):
        self.pad = DataCollatorCTCWithPadding(feature_extractor)
        self.n_mels = n_mels

    def __call__(self, items: list[dict], extra_drops: list | None = None) -> dict:
        kept = [item for item in items if "dropped" not in item]
        report = {"kept": len(kept), "kept_seconds": float(sum(item["duration"] for item in kept)),
                  "dropped": list(extra_drops or []) + [item["dropped"] for item in items if "dropped" in item]}
        if kept:
            batch = self.pad(kept)
        else:
            empty = torch.zeros(0, 1, dtype=torch.long)
            batch = {"input_features": torch.zeros(0, 1, self.n_mels), "attention_mask": empty, "labels": empty}
        batch["data_report"] = report
        return batch


def is_placeholder(batch: dict) -> bool:
    """Whether ``batch`` is a resumed stream's placeholder (no data: skip it)."""
    return PLACEHOLDER in batch


def pop_data_report(batch: dict, report: FilterReport) -> None:
    """Move the counts a batch carries (``batch["data_report"]``) into ``report``."""
    carried = batch.pop("data_report", None)
    if not carried:
        return
    report.total_kept += int(carried["kept"])
    report.kept_seconds += float(carried["kept_seconds"])
    for reason, path, detail in carried["dropped"]:
        report.add(reason, path, detail)


def worker_init(_worker_id: int) -> None:
    """DataLoader workers compute features with one thread each (the training process keeps its cores)."""
    torch.set_num_threads(1)


# ==========================================================================================================
# Iterable: a shuffled stream, bucketed by duration, one shard per process and worker
# ==========================================================================================================
class StreamingSpeechBatches(torch.utils.data.IterableDataset):
    """Duration-bounded batches from a shuffled ``datasets.IterableDataset`` of raw rows (``audio``, ``text``).

    The stream is shuffled (its shards' order, and rows in a buffer of ``shuffle_buffer``, seeded with ``seed``
    and the pass), then process ``rank`` of ``world_size`` reads its shard (``split_dataset_by_node``: whole
    files when the stream has enough of them, else every n-th row; in DataLoader workers ``datasets`` deals the
    shard's files out to the workers). Each share is read ``bucket_size`` rows
    at a time, sorted by header duration, packed into batches of at most ``max_batch_seconds`` of padded audio
    and yielded in a shuffled order; the stream starts over (next pass) when the shard ends, so it never ends.
    A DataLoader over it (``batch_size=None``) takes the workers' batches in turn, so ``skip_batches`` (the
    batches a resumed run already consumed) are dropped by each worker before decoding anything. An
    ``augmenter`` perturbs each row with a generator seeded by its place among its worker's batches."""

    def __init__(self, stream: HFIterableDataset, options: dict, collator: OnTheFlyCollator, *,
                 max_batch_seconds: float, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle_buffer: int = 1000, bucket_size: int = 500, skip_batches: int = 0,
                 augmenter: Augmenter | None = None):
        if max_batch_seconds <= 0:
            raise ValueError(f"max_batch_seconds must be > 0, got {max_batch_seconds}")
        self.stream = stream.cast_column("audio", Audio(decode=False))
        self.options, self.collator = options, collator
        self.max_batch_seconds, self.seed = float(max_batch_seconds), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.shuffle_buffer, self.bucket_size = int(shuffle_buffer), int(bucket_size)
        self.skip_batches = int(skip_batches)
        self.augmenter = augmenter if augmenter is not None and augmenter.enabled else None

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # The DataLoader takes batch g from worker g % W (datasets gives each worker its share of the shard).
        # After skip_batches = N each worker skips its own turns among the first N; the uninterrupted run's next
        # batch comes from worker N % W, so the workers before it first yield a placeholder (dropped by the
        # consumer, see is_placeholder) and the DataLoader's turns line up again.
        to_skip = max(0, -(-(self.skip_batches - worker) // workers))
        if worker < self.skip_batches % workers:
            yield {PLACEHOLDER: True}
        for number, (batch_rows, drops, _) in enumerate(self.batch_plan(worker)):
            if to_skip:  # consumed before the run was interrupted (and counted then): not decoded again
                to_skip -= 1
                continue
            # augmentation keys: the row's place in this worker's batches (the same after a resume)
            keys = [(self.rank, worker, number, position) for position in range(len(batch_rows))]
            items = prepare_rows([(audio, text) for audio, text, _ in batch_rows], self.options, self.augmenter, keys)
            yield self.collator(items, extra_drops=drops)

    def batch_plan(self, worker: int = 0) -> Iterator[tuple[list[tuple], list[tuple], int]]:
        """The endless sequence of this process's batches (in a DataLoader worker: of its share), undecoded:
        ``(rows, drops, pass)`` with rows ``(audio, text, seconds)``, the ``(reason, path, detail)`` of rows ruled
        out since the last batch, and the pass over the stream it belongs to."""
        # shuffled before the split, with one seed on every process: each pass deals the shards out afresh, and
        # within a pass the processes' shards are disjoint and together the whole stream
        stream = self.stream.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer) if self.shuffle_buffer > 1 \
            else self.stream
        rows = split_dataset_by_node(stream, rank=self.rank, world_size=self.world_size)
        stream_pass = 0
        drops: list = []  # carried to the next batch, across passes too
        while True:
            rows.set_epoch(stream_pass)
            produced = False
            for batch_rows in self._batches(rows, (self.seed, self.rank, worker, stream_pass), drops):
                produced = True
                yield batch_rows, list(drops), stream_pass
                drops.clear()
            if not produced:
                raise RuntimeError(
                    f"process {self.rank} (DataLoader worker {worker}) found no usable utterance in its share of "
                    f"the stream; {len(drops)} dropped, e.g. {drops[:3]}. Check the data, or use fewer "
                    "processes/workers than the stream has shards")
            stream_pass += 1

    def _batches(self, rows, seed_parts: tuple, drops: list) -> Iterator[list[tuple]]:
        """Buckets of ``bucket_size`` checked rows -> batches, shuffled within each bucket."""
        bucket: list[tuple] = []
        for number, row in enumerate(rows):
            try:
                duration, text = _check_row(row["audio"], row["text"], self.options)
            except DroppedExample as drop:
                drops.append((drop.reason, audio_path(row["audio"]), drop.detail))
                continue
            bucket.append((row["audio"], text, duration))
            if len(bucket) >= self.bucket_size:
                yield from self._pack(bucket, (*seed_parts, number))
                bucket = []
        if bucket:
            yield from self._pack(bucket, (*seed_parts, -1))

    def _pack(self, bucket: list[tuple], seed_parts: tuple) -> Iterator[list[tuple]]:
        lengths = np.array([duration for _, _, duration in bucket])
        batches = pack_by_duration(lengths, np.argsort(lengths, kind="stable"), self.max_batch_seconds)
        rng = np.random.default_rng([_seed_part(p) for p in seed_parts])
        for i in rng.permutation(len(batches)):
            yield [bucket[j] for j in batches[i]]


def _seed_part(value: int) -> int:
    """A non-negative seed part for ``numpy.random.default_rng`` (which refuses negative entries)."""
    return value if value >= 0 else (1 << 32) + value
