"""Setting up a training run: the output folder, the accelerator, the data, the model with its sizes, selector
and DMAO, the optimizer and schedule, and accelerate's `prepare` (again after a DMAO reshape under DDP)."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed

from hf_dynasr.data.synthesis import MissingToolError, synthesize_corpus
from hf_dynasr.dmao import DMAO
from hf_dynasr.json_io import write_json
from hf_dynasr.models.dynasr import DynaSRConfig, DynaSRForCTC
from hf_dynasr.selection import SelectionConfig, SubnetSelector, build_selector
from hf_dynasr.trainer.checkpointing import any_rank_failed, resolve_checkpoint
from hf_dynasr.trainer.data import TrainData
from hf_dynasr.trainer.options import TrainArgs
from hf_dynasr.trainer.run_folder import acquire_lock, check_run_folder, clear_run_entries
from hf_dynasr.trainer.schedule import build_scheduler
from hf_dynasr.trainer.supernet_step import size_fractions

logger = logging.getLogger("hf_dynasr.train")


@dataclass
class Run:
    """Everything a training run works with. After `prepare`, `model`, `optimizer`, `scheduler` and
    `data.loader` are accelerate's wrappers; `unwrapped` is always the bare model."""

    args: TrainArgs
    accelerator: Accelerator
    data: TrainData
    model: torch.nn.Module
    unwrapped: DynaSRForCTC
    sizes: dict[str, float]  # size name -> fraction of the criterion's total, smallest first
    criterion: str
    selection: SelectionConfig
    selector: SubnetSelector | None
    dmao: DMAO | None
    resume_dir: str | None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: object | None = None

    @property
    def size_names(self) -> list[str]:
        return list(self.sizes)

    @property
    def checkpoint_dir(self) -> str:
        return checkpoint_dir(self.args)

    @property
    def stage1_steps(self) -> int:
        return self.selector.stage1_steps() if self.selector is not None else 0

    def masks_pending(self) -> bool:
        """Whether the selector's masks still have to be frozen into the config (stage boundary)."""
        return self.selector is not None and not self.unwrapped.config.subnets[self.size_names[0]].get("components")


def checkpoint_dir(args: TrainArgs) -> str:
    return os.path.join(args.output_dir, "checkpoints")


def check_output_dir(args: TrainArgs) -> bool:
    """Whether output_dir holds a previous run; a SystemExit naming the problem when the folder cannot be used
    (`run_folder.check_run_folder`)."""
    return check_run_folder(args.output_dir, resume=bool(args.resume_from_checkpoint),
                            overwrite=args.overwrite_output_dir)


def build_accelerator(args: TrainArgs) -> Accelerator:
    """One process or DDP; logging set up; a SystemExit unless the requested number of processes joined."""
    # CPU DDP (gloo) needs cpu=True. find_unused_parameters stays off: every step runs the whole network and
    # unused heads are anchored (supernet_step.anchor_unused_heads), so DDP never waits for a gradient.
    # mixed_precision None: accelerate reads the launcher's choice (accelerate launch / accelerate config).
    # step_scheduler_with_optimizer=False: accelerate's scheduler wrapper would otherwise step the schedule
    # num_processes times per update; the loop steps it once per optimizer update (TrainingLoop.update).
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=args.mixed_precision,
        step_scheduler_with_optimizer=False,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == ["none"] else args.report_to,
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
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        # accelerate has no fp16 autocast or loss scaler on the CPU: it would silently train in fp32
        raise SystemExit(
            "error: mixed precision fp16 needs a GPU; on the CPU it would silently train in fp32. Use "
            "--mixed_precision bf16 (CPU autocast) or --mixed_precision no (or launch with accelerate launch "
            "--mixed_precision bf16)"
        )
    return accelerator


def make_output_dir(args: TrainArgs, accelerator: Accelerator, previous: bool) -> str | None:
    """The main process takes the folder's lock (a second run into it is refused, on every rank), removes a
    previous run's entries when overwriting it (nothing else), creates checkpoints/; then every RNG is seeded.
    -> the lock's path on the main process (release it with `run_folder.release_lock`), else None."""
    lock, refusal = None, None
    if accelerator.is_main_process:
        try:
            lock = acquire_lock(args.output_dir)
        except SystemExit as err:
            refusal = str(err.code)
    if any_rank_failed(accelerator, refusal is not None):
        raise SystemExit(refusal or "error: the main process could not lock the output folder (see its message)")
    if accelerator.is_main_process:
        if previous and args.overwrite_output_dir and not args.resume_from_checkpoint:
            clear_run_entries(args.output_dir)
        os.makedirs(checkpoint_dir(args), exist_ok=True)
    accelerator.wait_for_everyone()
    set_seed(args.seed)
    return lock


def synthesize_missing_corpus(args: TrainArgs, accelerator: Accelerator) -> None:
    """--synthesize_missing_corpus N: when --train_data is `audiofolder:DIR` and DIR has neither metadata.csv nor
    train/metadata.csv, the main process synthesizes an N-utterance espeak-ng / flite corpus there (seed --seed; a
    partial one is completed) and says so in the log; the other processes wait. A SystemExit names a missing
    speech tool."""
    kind, _, folder = args.train_data.partition(":")
    if not args.synthesize_missing_corpus or kind != "audiofolder":
        return
    if any(os.path.isfile(os.path.join(folder, *sub, "metadata.csv")) for sub in ((), (args.train_split,))):
        return  # a corpus is there, flat or with split folders: never synthesize into a user's data
    refusal = None
    if accelerator.is_main_process:
        logger.warning("--train_data %s: %s holds no corpus; synthesizing %d utterances there "
                       "(--synthesize_missing_corpus; the same as python scripts/synthesize_corpus.py --output_dir %s "
                       "--num_utterances %d --seed %d)", args.train_data, folder, args.synthesize_missing_corpus,
                       folder, args.synthesize_missing_corpus, args.seed)
        try:
            summary = synthesize_corpus(folder, args.synthesize_missing_corpus, seed=args.seed)
            logger.info("synthesized %s in %.0f s: %s", folder, summary["wall_s"],
                        ", ".join(f"{split} {row['utterances']}" for split, row in summary["splits"].items()))
        except (MissingToolError, ValueError) as err:
            refusal = f"error: --synthesize_missing_corpus: {err}"
    if any_rank_failed(accelerator, refusal is not None):
        raise SystemExit(refusal or "error: the main process could not synthesize the corpus (see its message)")


def build_run(args: TrainArgs, accelerator: Accelerator, data: TrainData, resume_dir: str | None = None) -> Run:
    """The model (its shape from the checkpoint `resume_dir` when resuming: by default the one
    --resume_from_checkpoint names), its sizes, the selector and DMAO."""
    if resume_dir is None and args.resume_from_checkpoint:
        resume_dir = resolve_checkpoint(checkpoint_dir(args), args.resume_from_checkpoint)
    selection = args.selection_config()
    model, sizes, criterion = build_model(args, data.processor.tokenizer, resume_dir, selection.criterion)
    selector = None
    if sizes and selection.learns_masks:
        selector = build_selector(selection.method, model.component_costs(), sizes, criterion=criterion,
                                  total_steps=args.max_steps, stage1_fraction=selection.stage1_fraction,
                                  index=model.component_index, **selection.method_options)
        selector.to(accelerator.device)  # not prepared (its scores are outside DDP): moved here, before the optimizer
    # selector and DMAO are saved by hf_dynasr.trainer.checkpointing as safetensors + JSON, never registered with
    # accelerate, whose save_state pickles registered objects
    dmao_config = args.dmao_config()
    dmao = DMAO(model, dmao_config, total_steps=args.max_steps) if dmao_config else None
    return Run(args, accelerator, data, model, model, sizes, criterion, selection, selector, dmao, resume_dir)


def build_model(args: TrainArgs, tokenizer, resume_dir: str | None, criterion: str):
    """The model, its sizes (name -> fraction, smallest first) and the cost criterion of the sizes."""
    if resume_dir:
        model = DynaSRForCTC(DynaSRConfig.from_json_file(os.path.join(resume_dir, "config.json")))
    elif args.init_from:
        model = DynaSRForCTC.from_pretrained(args.init_from)
    else:
        model_kwargs = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, **args.model}
        model = DynaSRForCTC(DynaSRConfig(**model_kwargs))
    model.config.apply_spec_augment = args.spec_augment
    if args.gradient_checkpointing:
        if args.subnets and args.selection_config().adaptive_ffn_dropout:
            raise SystemExit("error: selection.adaptive_ffn_dropout does not work with --gradient_checkpointing (the "
                             "recomputed forward would use other dropout rates); turn one of them off")
        model.activation_checkpointing_enable()  # transformers 5's name of gradient_checkpointing_enable
    if len(tokenizer) != model.config.vocab_size:
        raise SystemExit(f"error: the tokenizer has {len(tokenizer)} labels but the model's vocab_size is "
                         f"{model.config.vocab_size}")
    sizes, criterion = size_fractions(args.subnets, model.component_costs(), criterion,
                                      args.selection_config().paper_rest_share) if args.subnets else ({}, criterion)
    for name, fraction in sizes.items():
        if name not in model.config.subnets:
            model.add_subnet(name, components=None, criterion=criterion, target=fraction)
    return model, sizes, criterion


def prepare(run: Run) -> None:
    """The optimizer (model + selector scores) and the schedule in fractions of max_steps; accelerate's prepare."""
    args = run.args
    selector_params = list(run.selector.parameters()) if run.selector is not None else []
    # fused: one kernel over all parameter tensors instead of a loop over them
    optimizer = torch.optim.AdamW(
        [{"params": run.model.parameters()}, {"params": selector_params, "weight_decay": 0.0}],
        lr=args.learning_rate, weight_decay=args.weight_decay, eps=args.adam_epsilon, betas=(0.9, args.adam_beta2),
        fused=run.accelerator.device.type in ("cpu", "cuda"))
    scheduler = build_scheduler(optimizer, args.lr_scheduler_type, args.max_steps,
                                warmup_fraction=args.warmup_ratio, decay_fraction=args.decay_fraction,
                                floor_factor=args.lr_floor)
    if run.data.prepared_by_accelerate:
        run.model, run.optimizer, run.data.loader, run.scheduler = run.accelerator.prepare(
            run.model, optimizer, run.data.loader, scheduler)
    else:  # the stream: each process reads its own shard (StreamingSpeechBatches)
        run.model, run.optimizer, run.scheduler = run.accelerator.prepare(run.model, optimizer, scheduler)


def prepare_again(run: Run) -> None:
    """Wrap the reshaped model in a new DDP (DDP's buckets hold the old parameters) after a DMAO reshape.

    accelerate keeps one entry per prepared object and `save_state` writes one file per entry, so its lists
    are emptied (`free_memory`) and the same objects prepared again in the order of `prepare`: checkpoints
    keep their layout (one model, one optimizer, one scheduler). The optimizer and the loader come back as
    they are; the scheduler gets a new wrapper around the same schedule. `free_memory` also zeroes the
    gradient-accumulation counter, which is put back."""
    accelerator = run.accelerator
    micro_steps = accelerator.step
    accelerator.free_memory()
    if run.data.prepared_by_accelerate:
        run.model, run.optimizer, run.data.loader, run.scheduler = accelerator.prepare(
            run.unwrapped, run.optimizer, run.data.loader, run.scheduler.scheduler)
    else:
        run.model, run.optimizer, run.scheduler = accelerator.prepare(
            run.unwrapped, run.optimizer, run.scheduler.scheduler)
    accelerator.step = micro_steps


def start_tracking(run: Run) -> None:
    """Main process: the trackers (--report_to), training_args.json and data_report.json in output_dir."""
    if run.accelerator.is_main_process:
        args = run.args
        run.accelerator.init_trackers("hf_dynasr", config={k: str(v) for k, v in asdict(args).items()})
        write_json(os.path.join(args.output_dir, "training_args.json"), asdict(args))
        write_json(os.path.join(args.output_dir, "data_report.json"),
                   {name: report.to_dict() for name, report in run.data.reports.items()})
