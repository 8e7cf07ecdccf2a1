"""The training run's data: the training and evaluation sets, prepared, and the loader that draws batches."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from accelerate import Accelerator
from torch.utils.data import DataLoader

from hf_dynasr.data import DataCollatorCTCWithPadding, DurationBatchSampler, load_speech_dataset, prepare_dataset
from hf_dynasr.data.processing import build_processor
from hf_dynasr.trainer.options import TrainArgs

logger = logging.getLogger("hf_dynasr.train")


@dataclass
class TrainData:
    """The prepared training and evaluation sets, and how batches are drawn from the training set."""

    processor: object
    train_ds: object
    eval_ds: object
    reports: dict  # {"train": FilterReport, "eval": FilterReport}
    sampler: DurationBatchSampler
    collator: DataCollatorCTCWithPadding
    loader: DataLoader  # accelerate-prepared after `prepare`


def build_data(args: TrainArgs, accelerator: Accelerator) -> TrainData:
    """Features and labels computed once (the main process first, the others read its cache)."""
    processor = build_processor()
    tokenizer, feature_extractor = processor.tokenizer, processor.feature_extractor
    with accelerator.main_process_first():
        train_raw = load_speech_dataset(args.train_data, split=args.train_split)
        train_ds, train_report = prepare_dataset(
            train_raw, feature_extractor, tokenizer, min_duration_s=args.min_duration_s,
            max_duration_s=args.max_duration_s, num_proc=args.preprocessing_num_workers)
        eval_raw = load_speech_dataset(args.eval_data or args.train_data, split=args.eval_split)
        if len(eval_raw) > args.max_eval_utterances:
            eval_raw = eval_raw.select(range(args.max_eval_utterances))
        eval_ds, eval_report = prepare_dataset(
            eval_raw, feature_extractor, tokenizer, min_duration_s=0.0, max_duration_s=None,
            num_proc=args.preprocessing_num_workers)
    logger.info("train data: %s", train_report)
    logger.info("eval data: %s", eval_report)
    if len(train_ds) == 0:
        raise SystemExit(f"error: no usable training utterance in {args.train_data}: {train_report}")
    sampler = DurationBatchSampler.from_dataset(train_ds, args.max_batch_seconds, seed=args.seed)
    collator = DataCollatorCTCWithPadding(feature_extractor)
    loader = DataLoader(train_ds.with_format("numpy"), batch_sampler=sampler, collate_fn=collator,
                        num_workers=args.dataloader_num_workers)
    return TrainData(processor, train_ds, eval_ds, {"train": train_report, "eval": eval_report}, sampler, collator,
                     loader)
