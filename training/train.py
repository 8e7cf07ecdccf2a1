"""Train a hf_dynasr CTC Conformer: a supernet with nested subnets, or one size (optionally with DMAO).

Usage (every option can sit in the YAML file and be overridden on the command line; --help lists them):

    # one process (plain python works too)
    python training/train.py --config training/configs/smoke.yaml
    accelerate launch training/train.py --config training/configs/demo_cpu.yaml

    # several processes on one CPU machine (DDP over gloo); --num_processes makes the script check it
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
        --mixed_precision no --dynamo_backend no training/train.py --config training/configs/demo_cpu.yaml \
        --num_processes 2

    # several GPUs on one machine, and several machines
    accelerate launch --num_processes 8 training/train.py --config training/configs/librispeech_960h.yaml
    accelerate launch --num_machines 2 --machine_rank 0 --main_process_ip HOST --main_process_port 29500 \
        --num_processes 16 training/train.py --config training/configs/librispeech_960h.yaml

    # resume after a stop or a kill
    python training/train.py --config ... --resume_from_checkpoint latest

Steps: 1 options, 2 accelerator, 3 data, 4 model + selector + DMAO, 5 optimiser and schedule,
6 resume, 7 the training loop (stage 1 / boundary / stage 2), 8 final model + processor.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import HfArgumentParser

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hf_dynasr import build_processor  # noqa: E402
from hf_dynasr.json_io import read_json, write_json  # noqa: E402
from hf_dynasr.trainer.checkpointing import resolve_checkpoint, save_checkpoint  # noqa: E402
from hf_dynasr.data import DataCollatorCTCWithPadding, DurationBatchSampler, load_speech_dataset, prepare_dataset  # noqa: E402
from hf_dynasr.trainer.schedule import build_scheduler  # noqa: E402
from hf_dynasr.trainer.supernet_step import plan_step  # noqa: E402
from hf_dynasr.trainer.steps import (  # noqa: E402  the step helpers main() calls, and the test hooks
    SUPERNET_KEYS,
    _test_hook,
    build_model,
    check_same_choice,
    dmao_reshape,
    freeze_masks,
    grads_finite,
    run_eval,
    supernet_loss,
    weight_checksums,
)

logger = logging.getLogger("hf_dynasr.train")


@dataclass
class TrainArgs:
    """All options. In YAML, give any of them as top-level keys."""

    output_dir: str = field(default="runs/default", metadata={"help": "Run folder: checkpoints/, final/, logs."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Allow an output_dir holding a previous run."})
    train_data: str = field(default="audiofolder:data/demo_corpus", metadata={"help": "Loader spec of the training data."})
    train_split: str = field(default="train", metadata={"help": "Split of train_data."})
    eval_data: str | None = field(default=None, metadata={"help": "Loader spec for evaluation (default: train_data)."})
    eval_split: str = field(default="dev", metadata={"help": "Split of eval_data."})
    max_eval_utterances: int = field(default=200, metadata={"help": "Evaluate on at most this many utterances."})
    min_duration_s: float = field(default=0.3, metadata={"help": "Drop shorter utterances (counted)."})
    max_duration_s: float = field(default=20.0, metadata={"help": "Drop longer utterances (counted)."})
    preprocessing_num_workers: int = field(default=1, metadata={"help": "Processes for feature extraction."})
    model: dict | str | None = field(default=None, metadata={"help": "DynaSRConfig arguments (dict or JSON)."})
    init_from: str | None = field(default=None, metadata={"help": "Start from this checkpoint's weights."})
    subnets: dict | str | None = field(default=None, metadata={"help": "Sizes: name -> fraction, target or {target, criterion}."})
    selection: dict | str | None = field(default=None, metadata={"help": "{method, criterion, stage1_fraction, loss_weight, layerdrop_stage1, layerdrop_stage2, ...}."})
    dmao: dict | str | None = field(default=None, metadata={"help": "DMAO options (hf_dynasr.dmao.DMAOConfig); null = off."})
    max_steps: int = field(default=100, metadata={"help": "Optimizer updates in total."})
    max_batch_seconds: float = field(default=40.0, metadata={"help": "Audio seconds per batch per process."})
    sortagrad: bool = field(default=False, metadata={"help": "First epoch in order of length, short first (SortaGrad, "
                                                             "Deep Speech 2): CTC leaves its blank plateau sooner."})
    learning_rate: float = field(default=4e-4, metadata={"help": "Peak learning rate."})
    weight_decay: float = field(default=1e-3, metadata={"help": "AdamW weight decay (papers: 1e-3)."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon (papers: 1e-16)."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2 (0.98 adapts faster in short runs)."})
    lr_scheduler: str = field(default="one_cycle", metadata={"help": "one_cycle (papers), warmup_stable_decay, or "
                                                                    "another transformers scheduler name."})
    warmup_fraction: float = field(default=0.45, metadata={"help": "Fraction of steps of the LR warm-up."})
    decay_fraction: float = field(default=0.45, metadata={"help": "one_cycle / warmup_stable_decay: fraction of "
                                                                 "steps of the decay."})
    max_grad_norm: float = field(default=5.0, metadata={"help": "Gradient clipping (0 = off)."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimizer update."})
    mixed_precision: str = field(default="no", metadata={"help": "no | fp16 | bf16."})
    spec_augment: bool = field(default=False, metadata={"help": "SpecAugment with the papers' values."})
    eval_steps: int = field(default=0, metadata={"help": "Evaluate every N steps (0 = only at the end)."})
    save_steps: int = field(default=0, metadata={"help": "Checkpoint every N steps (0 = off)."})
    save_total_limit: int = field(default=2, metadata={"help": "Keep the newest N checkpoints."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint folder."})
    report_to: str = field(default="none", metadata={"help": "none | tensorboard | trackio | all."})
    logging_steps: int = field(default=10, metadata={"help": "Log every N steps."})
    seed: int = field(default=0, metadata={"help": "Seed of init, data order and subnet choices."})
    num_processes: int | None = field(default=None, metadata={"help": "Fail unless exactly this many processes run."})
    max_nonfinite_steps: int = field(default=20, metadata={"help": "Stop after this many non-finite steps in a row."})
    detect_anomaly: bool = field(default=False, metadata={"help": "Log the first module whose output is non-finite "
                                                          "(forward hooks on every module; slower, for debugging)."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader workers."})


def parse_args(argv=None) -> TrainArgs:
    """YAML (--config) as defaults, command line on top; unknown YAML keys are an error."""
    parser = HfArgumentParser(TrainArgs)
    parser.add_argument("--config", default=None, help="YAML file with any of the options below.")
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = None
    if "--config" in argv:
        i = argv.index("--config")
        config_path = argv[i + 1]
        del argv[i : i + 2]
    if config_path:
        with open(config_path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
        known = {f.name for f in fields(TrainArgs)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SystemExit(f"error: unknown key(s) {unknown} in {config_path}; allowed keys: {', '.join(sorted(known))}")
        parser.set_defaults(**values)
    args = parser.parse_args_into_dataclasses(argv)[0]
    for name in ("model", "subnets", "selection", "dmao"):
        value = getattr(args, name)
        setattr(args, name, json.loads(value) if isinstance(value, str) else (value or {}))
    return args


def main(argv=None) -> None:
    # 1. options and output folder ----------------------------------------------------------------
    args = parse_args(argv)
    ckpt_dir = os.path.join(args.output_dir, "checkpoints")
    previous = os.path.isdir(args.output_dir) and bool(os.listdir(args.output_dir))
    if previous and not args.resume_from_checkpoint and not args.overwrite_output_dir:
        raise SystemExit(
            f"error: {args.output_dir} holds a previous run; pass --resume_from_checkpoint latest to continue it "
            "or --overwrite_output_dir to start over"
        )

    # 2. accelerator: CPU DDP needs cpu=True (methods: ecosystem.md 5); subnets skip nothing in DDP's
    #    eyes because every step runs the full net and unused heads are anchored (see anchor_unused_heads).
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != world or (args.num_processes and accelerator.num_processes != args.num_processes):
        raise SystemExit(
            f"error: {accelerator.num_processes} process(es) joined the run but {args.num_processes or world} were "
            "requested. On CPU use: ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ... "
            "(`--cpu --num_processes N` silently runs one process)"
        )
    if accelerator.is_main_process:
        if previous and args.overwrite_output_dir and not args.resume_from_checkpoint:
            shutil.rmtree(args.output_dir)
        os.makedirs(ckpt_dir, exist_ok=True)
    accelerator.wait_for_everyone()
    set_seed(args.seed)

    # 3. data: features and labels computed once (main process first, the others read the cache) --------
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
    train_loader = DataLoader(train_ds.with_format("numpy"), batch_sampler=sampler, collate_fn=collator,
                              num_workers=args.dataloader_num_workers)

    # 4. model (shape from the checkpoint when resuming), sizes, selector, DMAO -------------------------
    resume_dir = resolve_checkpoint(ckpt_dir, args.resume_from_checkpoint) if args.resume_from_checkpoint else None
    model, sizes, criterion = build_model(args, tokenizer, resume_dir)
    sel = args.selection
    selector = None
    stage1_steps = 0
    if sizes and sel.get("method", "ortho_softmax") != "fixed":
        from hf_dynasr.selection import build_selector

        selector_kwargs = {k: v for k, v in sel.items() if k not in SUPERNET_KEYS}
        selector = build_selector(sel.get("method", "ortho_softmax"), model.component_costs(), sizes,
                                  criterion=criterion, total_steps=args.max_steps,
                                  stage1_fraction=sel.get("stage1_fraction", 0.6), index=model.component_index,
                                  **selector_kwargs)
        stage1_steps = selector.stage1_steps()
        accelerator.register_for_checkpointing(selector)
    dmao = None
    if args.dmao:
        from hf_dynasr.dmao.grow_and_drop import DMAO, DMAOConfig

        dmao = DMAO(model, DMAOConfig(**args.dmao), total_steps=args.max_steps)
        accelerator.register_for_checkpointing(dmao)
    size_names = list(sizes)

    # 5. optimiser (model + selector scores) and the one-cycle schedule in fractions of max_steps ------
    # fused: one kernel over all tensors, 2 ms instead of 6.7 ms per step for the demo supernet on CPU
    optimizer = torch.optim.AdamW(
        [{"params": model.parameters()}, {"params": selector.parameters() if selector else [], "weight_decay": 0.0}],
        lr=args.learning_rate, weight_decay=args.weight_decay, eps=args.adam_epsilon, betas=(0.9, args.adam_beta2),
        fused=accelerator.device.type in ("cpu", "cuda"))
    scheduler = build_scheduler(optimizer, args.lr_scheduler, args.max_steps,
                                warmup_fraction=args.warmup_fraction, decay_fraction=args.decay_fraction)
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)

    # 6. resume: weights, optimiser, scheduler, RNG, selector, DMAO; then skip the consumed batches ----
    step, epoch, skip_batches, nonfinite, nonfinite_total = 0, 0, 0, 0, 0
    if resume_dir:
        accelerator.load_state(resume_dir)
        state = read_json(os.path.join(resume_dir, "trainer_state.json"))
        step, epoch, skip_batches = state["step"], state["epoch"], state["batches_in_epoch"]
        nonfinite_total = state.get("nonfinite_steps_skipped", 0)
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", resume_dir, step, epoch, skip_batches)
    if accelerator.is_main_process:
        accelerator.init_trackers("hf_dynasr", config={k: str(v) for k, v in asdict(args).items()})
        write_json(os.path.join(args.output_dir, "training_args.json"), asdict(args))
        write_json(os.path.join(args.output_dir, "data_report.json"),
                   {"train": train_report.to_dict(), "eval": eval_report.to_dict()})

    # 7. training loop -------------------------------------------------------------------------------
    unwrapped = accelerator.unwrap_model(model)
    anomaly = None
    if args.detect_anomaly:
        from hf_dynasr.trainer.anomaly import AnomalyDetector

        anomaly = AnomalyDetector(unwrapped)
    progress = tqdm(total=args.max_steps, initial=step, disable=not accelerator.is_local_main_process, desc="train")
    start_time, audio_seconds = time.time(), 0.0
    history, choices = [], []
    while step < args.max_steps:
        sampler.shuffle = not (args.sortagrad and epoch == 0)
        sampler.set_epoch(epoch)
        train_loader.set_epoch(epoch)
        loader = accelerator.skip_first_batches(train_loader, skip_batches) if skip_batches else train_loader
        batches_in_epoch = skip_batches
        skip_batches = 0
        for batch in loader:
            batches_in_epoch += 1
            if selector is not None and step == stage1_steps and not unwrapped.config.subnets[size_names[0]].get("components"):
                freeze_masks(unwrapped, selector, sizes, criterion, accelerator)
            # every random draw of a batch (dropout, SpecAugment) is a function of (seed, position in the data, process):
            # a resumed run draws exactly what the uninterrupted one drew, whatever the data loader consumed meanwhile
            micro_batch = epoch * 10_000_000 + batches_in_epoch
            torch.manual_seed((args.seed * 1_000_003 + micro_batch) * 1024 + accelerator.process_index)
            with accelerator.accumulate(model):
                runs = plan_step(step, size_names, stage1_steps=stage1_steps, seed=args.seed, selector=selector)
                choices.append(check_same_choice(accelerator, runs, size_names, step))
                if anomaly is not None:
                    anomaly.reset()
                loss, losses = supernet_loss(model, unwrapped, batch, runs, args, selector, step, size_names)
                if _test_hook("HF_DYNASR_TEST_NAN_AT", "loss", step):
                    loss = loss * float("nan")
                finite = bool(accelerator.reduce(torch.isfinite(loss.detach()).float(), "min") >= 1)
                accelerator.backward(loss if finite else loss * 0.0)  # keeps every rank's DDP in step
                what = "loss"
                if finite and selector is not None:
                    for p in selector.parameters():  # outside DDP: average the score gradients by hand
                        if p.grad is not None:
                            p.grad = accelerator.reduce(p.grad, "mean")
                if finite and accelerator.sync_gradients:
                    if _test_hook("HF_DYNASR_TEST_NAN_AT", "grad", step):
                        next(p for p in unwrapped.parameters() if p.grad is not None).grad.fill_(float("nan"))
                    finite, what = grads_finite(accelerator, model, selector, args.max_grad_norm), "gradient"
                if not finite:  # skipped on every rank alike, counted, and fatal after K in a row
                    nonfinite += 1
                    nonfinite_total += 1
                    optimizer.zero_grad(set_to_none=True)
                    where = anomaly.report() if anomaly is not None else None
                    logger.warning("step %d: non-finite %s (%s), update skipped (%d in a row)%s", step, what, losses,
                                   nonfinite, f"; {where}" if where else "")
                    if nonfinite >= args.max_nonfinite_steps:
                        raise SystemExit(f"error: {nonfinite} non-finite steps in a row (last: non-finite {what}"
                                         f"{'; ' + where if where else ''}); lower the learning rate or check the "
                                         "data (--detect_anomaly names the first module with a non-finite output)")
                    continue
                nonfinite = 0
                if dmao is not None and accelerator.sync_gradients:
                    dmao.observe(unwrapped, step)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            if selector is not None and step < stage1_steps:
                with torch.no_grad():
                    selector.end_of_step(step)
            step += 1
            audio_seconds += float(batch["attention_mask"].sum()) * 0.01 * accelerator.num_processes
            progress.update(1)
            progress.set_postfix(ctc_full=f"{losses['loss/full']:.3f}")
            if _test_hook("HF_DYNASR_TEST_KILL_AT", "step", step):
                os.kill(os.getpid(), signal.SIGKILL)
            if dmao is not None and dmao.reshape_due(step):
                model, optimizer = dmao_reshape(dmao, model, optimizer, accelerator, args, step)
                unwrapped = accelerator.unwrap_model(model)
                if anomaly is not None:
                    anomaly.attach(unwrapped)  # the reshape replaced modules
            if step % args.logging_steps == 0 or step == args.max_steps:
                record = {"step": step, "lr": scheduler.get_last_lr()[0], **losses,
                          "audio_s_per_s": audio_seconds / max(1e-9, time.time() - start_time)}
                if selector is not None:
                    record.update({f"selector/{k}": v for k, v in selector.describe(step).items()})
                accelerator.log(record, step=step)
                history.append(record)
            if args.eval_steps and step % args.eval_steps == 0 and step < args.max_steps:
                run_eval(accelerator, unwrapped, eval_ds, collator, tokenizer, step, args)
            if args.save_steps and step % args.save_steps == 0:
                state = {"step": step, "epoch": epoch, "batches_in_epoch": batches_in_epoch,
                         "nonfinite_steps_skipped": nonfinite_total}
                kill = _test_hook("HF_DYNASR_TEST_KILL_AT", "checkpoint", step)
                save_checkpoint(accelerator, ckpt_dir, step, state, unwrapped.config, args.save_total_limit,
                                before_rename=(lambda: os.kill(os.getpid(), signal.SIGKILL)) if kill else None)
            if step >= args.max_steps:
                break
        else:
            epoch += 1
    progress.close()

    # 8. masks frozen (a run shorter than stage 1), final evaluation, model + processor in final/ -------
    if selector is not None and not unwrapped.config.subnets[size_names[0]].get("components"):
        freeze_masks(unwrapped, selector, sizes, criterion, accelerator)
    results = run_eval(accelerator, unwrapped, eval_ds, collator, tokenizer, step, args)
    checksums = weight_checksums(accelerator, unwrapped)
    if accelerator.is_main_process:
        final = os.path.join(args.output_dir, "final")
        tmp = final + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        unwrapped.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if selector is not None:
            from safetensors.torch import save_file  # the selector's scores, never pickled

            save_file({k: v.contiguous() for k, v in selector.state_dict().items()}, os.path.join(tmp, "selector.safetensors"))
        write_json(os.path.join(tmp, "training_results.json"),
                   {"eval": results, "history": history, "steps": step, "train_data": args.train_data,
                    "method": args.selection.get("method") if sizes else None, "dmao": args.dmao or None,
                    "wall_time_s": time.time() - start_time, "num_processes": accelerator.num_processes,
                    "nonfinite_steps_skipped": nonfinite_total,
                    "rank_weight_checksums": checksums, "subnet_choices": choices})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        logger.info("final model and processor in %s", final)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if torch.distributed.is_initialized():  # explicit teardown: a gloo group left to interpreter exit can hang
        torch.distributed.destroy_process_group()



if __name__ == "__main__":
    main()
