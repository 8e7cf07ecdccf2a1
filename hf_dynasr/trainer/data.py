"""The training run's data: the training and evaluation sets and the loader that draws batches, by one of
three pipelines (``--data_pipeline``): features precomputed once (with ``--augmentation_copies``: of K augmented
copies, ``hf_dynasr.data.augmented_copies``), computed on the fly in DataLoader workers from an index of the
corpus, or read from a shuffled stream (``hf_dynasr.data.streaming``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device
from torch.utils.data import DataLoader

from hf_dynasr.data import DataCollatorCTCWithPadding, DurationBatchSampler, load_speech_dataset, prepare_dataset
from hf_dynasr.data.augmentation import Augmenter
from hf_dynasr.data.augmented_copies import AugmentedCopiesDataset, prepare_augmented_copies
from hf_dynasr.data.loading import check_distinct_splits, parse_spec
from hf_dynasr.data.prepare import DROP_REASONS, FilterReport, preparation_options
from hf_dynasr.data.processing import build_processor
from hf_dynasr.data.streaming import (
    OnTheFlyCollator,
    OnTheFlySpeechDataset,
    StreamingSpeechBatches,
    index_corpus,
    is_placeholder,
    pop_data_report,
    worker_init,
)
from hf_dynasr.json_io import write_json
from hf_dynasr.trainer.options import TrainArgs

logger = logging.getLogger("hf_dynasr.train")

DATA_PIPELINES = ("auto", "precomputed", "on_the_fly", "streaming")


@dataclass
class TrainData:
    """The prepared training and evaluation sets, and how batches are drawn from the training set."""

    processor: object
    train_ds: object  # precomputed: the features; on_the_fly: the index; streaming: the raw stream
    eval_ds: object
    reports: dict  # {"train": FilterReport, "eval": FilterReport}
    sampler: DurationBatchSampler | None  # None for the stream
    collator: DataCollatorCTCWithPadding  # pads evaluation batches
    loader: DataLoader  # accelerate-prepared after `prepare` (not the stream: each process reads its own shard)
    pipeline: str = "precomputed"
    worker_report: FilterReport = field(default_factory=FilterReport)  # what the workers counted on this process

    @property
    def prepared_by_accelerate(self) -> bool:
        """Whether `accelerator.prepare` shards the loader (the stream is sharded by `StreamingSpeechBatches`)."""
        return self.pipeline != "streaming"

    def batches(self, loader, accelerator: Accelerator, on_empty) -> Iterator[dict]:
        """The loader's batches with the counts they carry moved into `worker_report`. A batch whose utterances
        were all dropped in the workers is skipped on every process alike (`on_empty()` is called for it)."""
        for batch in loader:
            if is_placeholder(batch):
                continue
            pop_data_report(batch, self.worker_report)
            if not self.prepared_by_accelerate:
                batch = send_to_device(batch, accelerator.device)
            empty = batch["input_features"].shape[0] == 0
            if self.pipeline != "precomputed" and accelerator.num_processes > 1:
                flag = torch.tensor([float(empty)], device=accelerator.device)
                empty = bool(accelerator.reduce(flag, "sum").item() > 0)
            if empty:
                logger.warning("a batch with no usable utterance (all dropped while decoding) was skipped")
                on_empty()
                continue
            yield batch

    def write_report(self, accelerator: Accelerator, output_dir: str) -> None:
        """data_report.json: the sets' reports and, summed over the processes, what the workers dropped while
        decoding (on_the_fly) or reading the stream (streaming). Call on every process."""
        counts = torch.tensor([self.worker_report.counts.get(r, 0) for r in DROP_REASONS]
                              + [self.worker_report.total_kept, self.worker_report.kept_seconds],
                              dtype=torch.float64, device=accelerator.device)
        if accelerator.num_processes > 1:
            counts = accelerator.reduce(counts, "sum")
        if accelerator.is_main_process:
            reports = {name: report.to_dict() for name, report in self.reports.items()}
            if self.pipeline != "precomputed":
                values = counts.tolist()
                reports["train_workers"] = {
                    "pipeline": self.pipeline, "counts": dict(zip(DROP_REASONS, map(int, values))),
                    "total_dropped": int(sum(values[:len(DROP_REASONS)])), "kept_reads": int(values[-2]),
                    "kept_hours": values[-1] / 3600, "examples": self.worker_report.to_dict()["examples"],
                    "note": "counted per read: a row read in several epochs (or passes of the stream) counts again"}
            write_json(os.path.join(output_dir, "data_report.json"), reports)


def build_data(args: TrainArgs, accelerator: Accelerator) -> TrainData:
    """The evaluation set (features precomputed: it is small) and the training set by `args.data_pipeline`;
    the main process first (it writes the caches the others read)."""
    if args.data_pipeline not in DATA_PIPELINES:
        raise SystemExit(f"error: --data_pipeline {args.data_pipeline!r}; allowed: {', '.join(DATA_PIPELINES)}")
    processor = build_processor()
    feature_extractor = processor.feature_extractor
    options = preparation_options(feature_extractor, processor.tokenizer, min_duration_s=args.min_duration_s,
                                  max_duration_s=args.max_duration_s)
    try:  # on every process, before any waits for another: a corpus without the eval split's folder must not
        # be evaluated on its training rows
        check_distinct_splits(args.train_data, args.train_split, args.eval_data or args.train_data, args.eval_split)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    augmenter = Augmenter(args.augmentation_config(), seed=args.seed)  # training data only, never evaluation
    _check_augmentation(args, augmenter)
    with accelerator.main_process_first():
        eval_ds, eval_report = _eval_set(args, processor)
        if args.data_pipeline == "streaming":
            data = _streaming(args, accelerator, processor, options, augmenter)
        else:
            data = _indexed(args, processor, options, augmenter)
    data.eval_ds, data.reports["eval"] = eval_ds, eval_report
    logger.info("train data (%s): %s", data.pipeline, data.reports["train"])
    logger.info("eval data: %s", eval_report)
    return data


def _check_augmentation(args: TrainArgs, augmenter: Augmenter) -> None:
    """SystemExit for an augmentation the chosen pipeline cannot apply."""
    copies, pipeline = args.augmentation_copies, args.data_pipeline
    if copies and not augmenter.enabled:
        raise SystemExit("error: --augmentation_copies needs --augmentation with at least one family on "
                         "(a <family>_prob > 0); set --augmentation_copies 0 to train without augmentation")
    if copies and pipeline in ("on_the_fly", "streaming"):
        raise SystemExit(f"error: --augmentation_copies {copies} precomputes augmented features, which "
                         f"--data_pipeline {pipeline} does not read; use --data_pipeline precomputed or auto, or "
                         "--augmentation_copies 0 to augment every read in the workers")
    if augmenter.enabled and not copies and pipeline == "precomputed":
        raise SystemExit("error: --augmentation perturbs the audio every time an utterance is read, which "
                         "precomputed features cannot; use --data_pipeline on_the_fly, streaming or auto, or "
                         "--augmentation_copies K to precompute K augmented copies of every utterance")


def _eval_set(args: TrainArgs, processor):
    eval_raw = load_speech_dataset(args.eval_data or args.train_data, split=args.eval_split)
    if len(eval_raw) > args.max_eval_utterances:
        eval_raw = eval_raw.select(range(args.max_eval_utterances))
    return prepare_dataset(eval_raw, processor.feature_extractor, processor.tokenizer, min_duration_s=0.0,
                           max_duration_s=None, num_proc=args.preprocessing_num_workers)


def _indexed(args: TrainArgs, processor, options: dict, augmenter: Augmenter) -> TrainData:
    """precomputed or on_the_fly (auto: on_the_fly with augmentation, else by the hours the header index
    finds)."""
    raw = load_speech_dataset(args.train_data, split=args.train_split, duplicates="drop")
    pipeline = "precomputed" if args.augmentation_copies else args.data_pipeline
    index = report = None
    if pipeline != "precomputed":
        index, report = index_corpus(raw, options, num_proc=args.preprocessing_num_workers)
        if pipeline == "auto" and augmenter.enabled:
            pipeline = "on_the_fly"
            logger.info("--data_pipeline auto: on_the_fly, since --augmentation perturbs the audio every time an "
                        "utterance is read (precomputed features cannot be augmented)")
        elif pipeline == "auto":
            hours = report.kept_seconds / 3600
            pipeline = "precomputed" if hours <= args.precompute_max_hours else "on_the_fly"
            logger.info("--data_pipeline auto: %.2f h of training audio -> %s (--precompute_max_hours %s)",
                        hours, pipeline, args.precompute_max_hours)
    fe = processor.feature_extractor
    workers = args.dataloader_num_workers
    copies = None
    limits = dict(min_duration_s=args.min_duration_s, max_duration_s=args.max_duration_s,
                  num_proc=args.preprocessing_num_workers)
    if pipeline == "precomputed" and args.augmentation_copies:
        copies, report = prepare_augmented_copies(raw, fe, processor.tokenizer, augmenter, args.augmentation_copies,
                                                  **limits)
        train_ds = copies[0]
    elif pipeline == "precomputed":
        train_ds, report = prepare_dataset(raw, fe, processor.tokenizer, **limits)
    else:
        train_ds = index
    if len(train_ds) == 0:
        raise SystemExit(f"error: no usable training utterance in {args.train_data}: {report}")
    sampler = DurationBatchSampler.from_dataset(train_ds, args.max_batch_seconds, seed=args.seed)
    if copies:  # the sampler's epoch draws each row's copy (workers copy it when an epoch's iterator starts)
        dataset = AugmentedCopiesDataset(copies, args.seed, epoch_source=sampler)
        collate = DataCollatorCTCWithPadding(fe)
    elif pipeline == "precomputed":
        dataset, collate = train_ds.with_format("numpy"), DataCollatorCTCWithPadding(fe)
    else:  # the sampler's epoch seeds the augmentation (workers copy it when an epoch's iterator starts)
        dataset = OnTheFlySpeechDataset(index, options, augmenter, epoch_source=sampler)
        collate = OnTheFlyCollator(fe, options["n_mels"])
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                        worker_init_fn=worker_init if workers else None)
    return TrainData(processor, train_ds, None, {"train": report}, sampler, DataCollatorCTCWithPadding(fe), loader,
                     pipeline)


def _streaming(args: TrainArgs, accelerator: Accelerator, processor, options: dict,
               augmenter: Augmenter) -> TrainData:
    """A shuffled stream; a local corpus is cut into shards (files for the processes and workers to share)."""
    kind = parse_spec(args.train_data)[0]
    if kind == "hub":
        stream = load_speech_dataset(args.train_data, split=args.train_split, streaming=True)
    else:
        raw = load_speech_dataset(args.train_data, split=args.train_split, duplicates="drop")
        shards = accelerator.num_processes * max(1, args.dataloader_num_workers)
        stream = raw.to_iterable_dataset(num_shards=max(1, min(len(raw), max(64, shards))))
    fe = processor.feature_extractor
    batches = StreamingSpeechBatches(
        stream, options, OnTheFlyCollator(fe, options["n_mels"]), max_batch_seconds=args.max_batch_seconds,
        seed=args.seed, rank=accelerator.process_index, world_size=accelerator.num_processes,
        shuffle_buffer=args.streaming_shuffle_buffer, augmenter=augmenter)
    workers = args.dataloader_num_workers
    loader = DataLoader(batches, batch_size=None, num_workers=workers, worker_init_fn=worker_init if workers else None)
    report = FilterReport(streaming=True)  # the stream's counts arrive with its batches (worker_report)
    return TrainData(processor, stream, None, {"train": report}, None, DataCollatorCTCWithPadding(fe), loader,
                     "streaming")
