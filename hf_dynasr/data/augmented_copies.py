"""Augmentation with precomputed features: K augmented copies of every training utterance, prepared once.

On-the-fly augmentation (``hf_dynasr.data.streaming.OnTheFlySpeechDataset``) decodes, perturbs and featurises
every utterance each time it is read, in DataLoader workers. On a machine without a core to spare for the
workers (the demo's 2-core CPU) that work slows every training step (by 28 % in docs/robustness_of_models.md).
The alternative of the Kaldi recipes (speed-perturbed and reverberated copies of the data made once before
training, Ko et al. 2015) keeps the step as fast as with precomputed features:

* :func:`prepare_augmented_copies` prepares ``copies`` versions of each row, copy ``k`` perturbed by the
  :class:`~hf_dynasr.data.augmentation.Augmenter` with the key ``(k, row)`` (on the fly the key is
  ``(epoch, row)``), its babble sources being the rows of its preparation batch. The features are cached by
  ``datasets`` like any prepared set. A row is kept only when every copy of it is usable (a speed or silence
  copy can fall outside the duration limits), and counted once in the report.
* :class:`AugmentedCopiesDataset` serves row ``i`` in epoch ``e`` from copy ``rng(seed, e, i) mod copies``, so
  each epoch mixes the copies differently and a resumed run reads what the uninterrupted one read.

The price: ``copies`` times the preparation time and the feature cache, and a fixed set of perturbations (with
``copies`` = 1 an utterance meets the same perturbation in every epoch). Batches are packed by the first copy's
durations.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from datasets import Dataset

from hf_dynasr.data.augmentation import Augmenter
from hf_dynasr.data.prepare import FilterReport, keep_usable_in_all, map_features, preparation_options

logger = logging.getLogger(__name__)

__all__ = ["AugmentedCopiesDataset", "prepare_augmented_copies"]


def prepare_augmented_copies(ds: Dataset, feature_extractor, tokenizer, augmenter: Augmenter, copies: int, *,
                             min_duration_s: float = 0.1, max_duration_s: float | None = 30.0,
                             text_column: str = "text", audio_column: str = "audio", num_proc: int = 1,
                             batch_size: int = 64) -> tuple[list[Dataset], FilterReport]:
    """``copies`` prepared versions of ``ds`` (the columns of :func:`hf_dynasr.data.prepare_dataset`), row ``i``
    being the same utterance in each, and the report of the rows dropped. ValueError for ``copies`` < 1 or an
    augmenter with every family off."""
    if copies < 1:
        raise ValueError(f"copies must be at least 1, got {copies}")
    if not augmenter.enabled:
        raise ValueError("augmented copies need an augmentation with at least one family on (a <family>_prob > 0)")
    options = preparation_options(feature_extractor, tokenizer, min_duration_s=min_duration_s,
                                  max_duration_s=max_duration_s)
    options.update(audio_column=audio_column, text_column=text_column, augmenter=augmenter)
    mapped = [map_features(ds, {**options, "copy": k}, num_proc=num_proc, batch_size=batch_size)
              for k in range(copies)]
    report = FilterReport()
    prepared = keep_usable_in_all(mapped, report)
    logger.info("%d augmented copies: %s", copies, report)
    return prepared, report


class AugmentedCopiesDataset(torch.utils.data.Dataset):
    """Rows of :func:`prepare_augmented_copies`: ``dataset[i]`` is row ``i`` of one copy (numpy format), drawn
    from ``(seed, epoch, i)``; the epoch is ``epoch_source.epoch`` (the batch sampler's, which DataLoader workers
    copy when an epoch's iterator starts)."""

    def __init__(self, copies: list[Dataset], seed: int = 0, epoch_source=None):
        if not copies or len({len(c) for c in copies}) != 1:
            raise ValueError("copies must be one or more prepared datasets of equal length (the same rows)")
        self.copies = [c.with_format("numpy") for c in copies]
        self.seed, self.epoch_source = int(seed), epoch_source

    def __len__(self) -> int:
        return len(self.copies[0])

    def copy_of(self, i: int, epoch: int | None = None) -> int:
        """Which copy serves row ``i`` in ``epoch`` (default: the current one)."""
        epoch = int(getattr(self.epoch_source, "epoch", 0)) if epoch is None else int(epoch)
        return int(np.random.default_rng([self.seed, epoch, int(i)]).integers(len(self.copies)))

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[dict]:
        chosen = [self.copy_of(i) for i in indices]
        rows: list[dict | None] = [None] * len(indices)
        for k in set(chosen):  # one read per copy for the batch's rows it serves
            places = [p for p, c in enumerate(chosen) if c == k]
            for place, row in zip(places, self.copies[k].__getitems__([int(indices[p]) for p in places])):
                rows[place] = row
        return rows
