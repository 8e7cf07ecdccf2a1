"""Batching and collation of prepared hf_dynasr speech data: duration-bounded batches, CTC padding."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from datasets import Dataset

logger = logging.getLogger(__name__)

__all__ = ["DataCollatorCTCWithPadding", "DurationBatchSampler", "pack_by_duration"]


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


def pack_by_duration(lengths: np.ndarray, order: np.ndarray, max_batch_seconds: float,
                     max_batch_size: int | None = None) -> list[list[int]]:
    """Cut ``order`` (indices into ``lengths``, seconds) into consecutive batches whose padded size
    ``len(batch) * max(lengths[batch])`` stays within ``max_batch_seconds`` (an item longer than that alone)."""
    batches, batch, longest = [], [], 0.0
    for i in order.tolist():
        length = lengths[i]
        new_longest = max(longest, length)
        full = max_batch_size is not None and len(batch) >= max_batch_size
        if batch and (full or new_longest * (len(batch) + 1) > max_batch_seconds):
            batches.append(batch)
            batch, new_longest = [], length
        batch.append(i)
        longest = new_longest
    if batch:
        batches.append(batch)
    return batches


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
        return pack_by_duration(self.lengths, order, self.max_batch_seconds, self.max_batch_size)

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
