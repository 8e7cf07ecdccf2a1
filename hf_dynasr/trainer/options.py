"""The options of a training run (`TrainArgs`) and how they are read: a YAML file (`--config`) gives the
defaults, the command line overrides them (`parse_args`). `python training/train.py --help` lists them all."""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import dataclass, field, fields

import yaml
from transformers import HfArgumentParser

from hf_dynasr.data.augmentation import AugmentationConfig
from hf_dynasr.dmao import DMAOConfig
from hf_dynasr.selection import SelectionConfig
from hf_dynasr.trainer.run_folder import LOCK, RUN_ENTRIES

logger = logging.getLogger("hf_dynasr.train")


#: Options a resumed run must share with its checkpoint: each one shapes the trajectory (data and its order,
#: model, sizes, selection, DMAO, batch, schedule, seed, numerics), and a checkpoint holds the state they made,
#: so a new value could be neither honoured from the start nor ignored without lying in training_args.json.
#: Every other option (logging, evaluation, checkpoint cadence, workers, limits, --gradient_checkpointing, which
#: computes the same gradients) is honoured on resume. The check: `hf_dynasr.trainer.resume_check`.
TRAJECTORY_OPTIONS = (
    "train_data", "train_split", "min_duration_s", "max_duration_s", "data_pipeline", "precompute_max_hours",
    "streaming_shuffle_buffer", "model", "init_from", "subnets", "selection", "dmao", "max_steps",
    "max_batch_seconds", "sortagrad", "learning_rate", "weight_decay", "adam_epsilon", "adam_beta2",
    "lr_scheduler_type", "warmup_ratio", "decay_fraction", "lr_floor", "max_grad_norm", "gradient_accumulation_steps",
    "mixed_precision", "spec_augment", "augmentation", "augmentation_copies", "seed")

#: Allowed ranges of the numeric options, checked at parse time: option -> (lowest, highest, inclusive low).
RANGES = {
    "max_steps": (1, None, True), "logging_steps": (1, None, True), "gradient_accumulation_steps": (1, None, True),
    "max_eval_utterances": (0, None, True), "per_device_eval_batch_size": (1, None, True),
    "preprocessing_num_workers": (1, None, True), "dataloader_num_workers": (0, None, True),
    "eval_steps": (0, None, True), "save_steps": (0, None, True), "save_total_limit": (0, None, True),
    "max_nonfinite_steps": (1, None, True), "num_processes": (1, None, True),
    "streaming_shuffle_buffer": (1, None, True), "synthesize_missing_corpus": (0, None, True),
    "precompute_max_hours": (0, None, True), "augmentation_copies": (0, None, True),
    "max_batch_seconds": (0, None, False), "min_duration_s": (0, None, True), "max_duration_s": (0, None, False),
    "learning_rate": (0, None, False), "weight_decay": (0, None, True), "adam_epsilon": (0, None, False),
    "adam_beta2": (0, 1, False), "warmup_ratio": (0, 1, True), "decay_fraction": (0, 1, True),
    "max_grad_norm": (0, None, True), "lr_floor": (0, 1, False),
}


#: --report_to values: accelerate's trackers (transformers' report_to names), plus all and none.
REPORT_TO = ("tensorboard", "wandb", "trackio", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab")
#: --eval_strategy / --save_strategy values (transformers' names; "epoch" has no meaning in a run counted in steps).
STRATEGIES = ("no", "steps")
#: Old option name -> its transformers.TrainingArguments name; the old names are read (with a deprecation
#: warning) in YAML files and on the command line until the next release.
RENAMED_OPTIONS = {"lr_scheduler": "lr_scheduler_type", "warmup_fraction": "warmup_ratio"}


@dataclass
class TrainArgs:
    """All options. In YAML, give any of them as top-level keys. Counts and rates outside their range (`RANGES`)
    are refused at parse time; on resume, `TRAJECTORY_OPTIONS` must equal the checkpoint's."""

    output_dir: str = field(default="runs/default", metadata={"help": "Run folder: checkpoints/, final/, logs."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": (
        "Start over in an output_dir holding a previous run: only the run's own entries ("
        + ", ".join(name + "/" * is_dir for name, is_dir in RUN_ENTRIES.items() if name != LOCK)
        + ") are removed. A folder holding anything else is refused, naming it.")})
    train_data: str = field(default="audiofolder:data/demo_corpus", metadata={"help": "Loader spec of the training data."})
    train_split: str = field(default="train", metadata={"help": "Split of train_data."})
    synthesize_missing_corpus: int = field(default=0, metadata={"help": (
        "With --train_data audiofolder:DIR: when DIR holds no corpus, synthesize one of this many utterances there "
        "first (espeak-ng and flite, seed --seed, logged; as scripts/synthesize_corpus.py does). 0 = off: a "
        "missing folder is an error. The smoke config sets 40.")})
    eval_data: str | None = field(default=None, metadata={"help": "Loader spec for evaluation (default: train_data)."})
    eval_split: str = field(default="dev", metadata={"help": "Split of eval_data."})
    max_eval_utterances: int = field(default=200, metadata={"help": "Evaluate on at most this many utterances."})
    per_device_eval_batch_size: int = field(default=16, metadata={"help": "Utterances per evaluation batch; each "
                                                                       "process scores its share of the batches."})
    min_duration_s: float = field(default=0.3, metadata={"help": "Drop shorter utterances (counted)."})
    max_duration_s: float = field(default=20.0, metadata={"help": "Drop longer utterances (counted)."})
    preprocessing_num_workers: int = field(default=1, metadata={"help": "Processes for feature extraction."})
    data_pipeline: str = field(default="auto", metadata={"help": (
        "precomputed: features of the whole training set computed once and cached (no DataLoader workers needed); "
        "on_the_fly: an index of audio-header durations, features computed in the DataLoader workers every time "
        "(flat memory and disk at any corpus size); streaming: a shuffled stream (a Hub dataset read with "
        "streaming=True, or a local corpus), each process and worker its own shard, batches bucketed by duration; "
        "auto: precomputed up to --precompute_max_hours of training audio, else on_the_fly.")})
    precompute_max_hours: float = field(default=10.0, metadata={"help": "auto: the largest training set (hours) "
                                                                        "whose features are precomputed."})
    streaming_shuffle_buffer: int = field(default=1000, metadata={"help": "streaming: rows in the shuffle buffer "
                                                                          "of each shard."})
    model: dict | str | None = field(default=None, metadata={"help": (
        "DynaSRConfig arguments (a YAML mapping, or JSON on the command line). Example: --model "
        "'{\"hidden_size\": 144, \"num_hidden_layers\": 8, \"num_attention_heads\": 4}'")})
    init_from: str | None = field(default=None, metadata={"help": "Start from this checkpoint's weights."})
    subnets: dict | str | None = field(default=None, metadata={"help": (
        "Sizes: name -> fraction of the full network, or {target, criterion} (params or flops). Example: --subnets "
        "'{\"small\": 0.5, \"medium\": 0.75}'")})
    selection: dict | str | None = field(default=None, metadata={"help": "Supernet options (hf_dynasr.selection."
                                                                  "SelectionConfig): {method, criterion, stage1_fraction, "
                                                                  "loss_weight, layerdrop_stage1, layerdrop_stage2, "
                                                                  "the method's own options}. Example: --selection "
                                                                  "'{\"method\": \"ortho_softmax\", \"criterion\":"
                                                                  " \"flops\", \"stage1_fraction\": 0.5}'"})
    dmao: dict | str | None = field(default=None, metadata={"help": (
        "DMAO options (hf_dynasr.dmao.DMAOConfig); null = off. Example: --dmao '{\"events\": [0.15], \"rho\": "
        "0.15}'")})
    max_steps: int = field(default=100, metadata={"help": "Optimizer updates in total."})
    max_batch_seconds: float = field(default=40.0, metadata={"help": "Audio seconds per batch per process."})
    sortagrad: bool = field(default=False, metadata={"help": "First epoch in order of length, short first (SortaGrad, "
                                                             "Deep Speech 2): CTC leaves its blank plateau sooner."})
    learning_rate: float = field(default=4e-4, metadata={"help": "Peak learning rate."})
    weight_decay: float = field(default=1e-3, metadata={"help": "AdamW weight decay (papers: 1e-3)."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon (papers: 1e-16)."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2 (0.98 adapts faster in short runs)."})
    lr_scheduler_type: str = field(default="one_cycle", metadata={"aliases": ["--lr_scheduler"], "help": (
        "one_cycle (papers), warmup_stable_decay, or another transformers scheduler name (linear, cosine, ...). "
        "Old name --lr_scheduler: still read (with a deprecation warning) until the next release.")})
    warmup_ratio: float = field(default=0.45, metadata={"aliases": ["--warmup_fraction"], "help": (
        "Fraction of steps of the LR warm-up. Old name --warmup_fraction: still read (with a deprecation "
        "warning) until the next release.")})
    decay_fraction: float = field(default=0.45, metadata={"help": "one_cycle / warmup_stable_decay: fraction of "
                                                                 "steps of the decay."})
    lr_floor: float = field(default=0.01, metadata={"help": "one_cycle: the LR at the start of the warm-up and at "
                                                        "the end of the decay, as a fraction of the peak, before the "
                                                        "final ramp to 1e-8: 0.01 (papers 1 and 3 on LibriSpeech) or "
                                                        "0.1 (the published TED-LIUM configs of papers 2 and 3)."})
    max_grad_norm: float = field(default=5.0, metadata={"help": "Gradient clipping (0 = off)."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimizer update."})
    mixed_precision: str | None = field(default=None, metadata={"help": "no | fp16 (GPU) | bf16; default: what "
                                                                      "accelerate launch / accelerate config set, "
                                                                      "else no."})
    spec_augment: bool = field(default=False, metadata={"help": "SpecAugment with the papers' values."})
    augmentation: dict | str | None = field(default=None, metadata={"help": (
        "Waveform augmentation of the training audio in the data workers (hf_dynasr.data.augmentation."
        "AugmentationConfig; needs --data_pipeline on_the_fly or streaming, which auto then picks, or "
        "--augmentation_copies): each family "
        "on with its probability - speed_prob (speed_factors), silence_prob (silence_edge_s, silence_max_pauses, "
        "silence_pause_s, silence_level_db), reverb_prob (reverb_rt60_s, reverb_drr_db), noise_prob "
        "(noise_snr_db, noise_kinds: white, pink, brown, babble), telephone_prob (telephone_mu_law), gain_prob "
        "(gain_db); null = off. Evaluation audio is never augmented.")})
    augmentation_copies: int = field(default=0, metadata={"help": (
        "0: --augmentation perturbs every read in the DataLoader workers (on_the_fly or streaming). K > 0: K "
        "augmented copies of every training utterance are featurised once before training (K times the "
        "preparation time and feature cache; --data_pipeline precomputed, which auto then picks) and each read "
        "takes one, drawn per epoch (hf_dynasr.data.augmented_copies): the steps run as fast as without "
        "augmentation where the workers have no core of their own.")})
    eval_strategy: str | None = field(default=None, metadata={"help": (
        "no: evaluate only at the end; steps: also every --eval_steps updates. Default: steps when --eval_steps "
        "> 0, else no.")})
    eval_steps: int = field(default=0, metadata={"help": "Evaluate every N steps (0 = only at the end)."})
    save_strategy: str | None = field(default=None, metadata={"help": (
        "no: no checkpoint before final/; steps: checkpoints/step_N every --save_steps updates. Default: "
        "steps when --save_steps > 0, else no.")})
    save_steps: int = field(default=0, metadata={"help": "Checkpoint every N steps (0 = off)."})
    save_total_limit: int = field(default=2, metadata={"help": "Keep the newest N checkpoints."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": (
        "'latest' or a checkpoint folder. The options that shape the training trajectory must equal the "
        "checkpoint's (else the resume is refused naming the option): " + ", ".join(TRAJECTORY_OPTIONS) + "; and "
        "the same number of processes and mixed precision. Every other option takes its new value.")})
    report_to: list[str] = field(default_factory=lambda: ["none"], metadata={"help": (
        "Experiment trackers, one or several (a list, as in transformers): " + ", ".join(REPORT_TO) + "; all = "
        "every installed one; none = off. Example: --report_to tensorboard wandb.")})
    logging_steps: int = field(default=10, metadata={"help": "Log every N steps."})
    seed: int = field(default=0, metadata={"help": "Seed of init, data order and subnet choices."})
    num_processes: int | None = field(default=None, metadata={"help": "Fail unless exactly this many processes run."})
    max_nonfinite_steps: int = field(default=20, metadata={"help": "Stop after this many non-finite micro-batches in "
                                                                  "a row (with gradient accumulation a non-finite "
                                                                  "loss drops only its micro-batch)."})
    detect_anomaly: bool = field(default=False, metadata={"help": "Log the first module whose output is non-finite "
                                                          "(forward hooks on every module; slower, for debugging)."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader workers."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute each encoder block's "
                                                                  "activations in the backward pass: less memory "
                                                                  "per batch, about one more forward per step."})
    dry_run: bool = field(default=False, metadata={"help": "Build the recipe's model, sizes, selector, DMAO, "
                                                   "optimizer and schedule, run two supernet steps on synthetic "
                                                   "batches of its shapes (no data read, no run folder) and print "
                                                   "parameters, FLOPs, peak memory and step time."})

    def selection_config(self) -> SelectionConfig:
        """The typed `selection` options (defaults filled in; used only when `subnets` names sizes)."""
        return SelectionConfig.from_dict(self.selection)

    def augmentation_config(self) -> AugmentationConfig:
        """The typed `augmentation` options (all families off when unset)."""
        return AugmentationConfig.from_dict(self.augmentation)

    def dmao_config(self) -> DMAOConfig | None:
        """The typed `dmao` options, or None when DMAO is off."""
        return DMAOConfig(**self.dmao) if self.dmao else None


def parse_args(argv=None) -> TrainArgs:
    """YAML (--config) as defaults, command line on top (`argv`, default `sys.argv[1:]`); unknown YAML keys
    and invalid `selection` / `dmao` options are an error (SystemExit with the message)."""
    parser = HfArgumentParser(TrainArgs)
    parser.add_argument("--config", default=None, help="YAML file with any of the options below.")
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        i = argv.index("--config")
        parser.set_defaults(**read_config(argv[i + 1]))
        del argv[i : i + 2]
    for old, new in RENAMED_OPTIONS.items():
        if any(a == f"--{old}" or a.startswith(f"--{old}=") for a in argv):
            logger.warning("--%s is deprecated: use --%s (the transformers.TrainingArguments name); the old name "
                           "goes in the next release", old, new)
    args = parser.parse_args_into_dataclasses(argv)[0]
    check_choices(args)
    for name in ("model", "subnets", "selection", "dmao", "augmentation"):
        value = getattr(args, name)
        setattr(args, name, json.loads(value) if isinstance(value, str) else (value or {}))
    check_ranges(args)
    for name, check in (("selection", args.selection_config), ("dmao", args.dmao_config),
                        ("augmentation", args.augmentation_config)):
        try:
            check()
        except (TypeError, ValueError) as err:
            raise SystemExit(f"error: {name}: {err}") from err
    check_dmao_after_stage1(args)
    return args


def check_choices(args: TrainArgs) -> None:
    """--report_to as a list of known trackers; --eval_strategy / --save_strategy resolved against the step
    counts (a SystemExit naming the allowed values or the missing count)."""
    report_to = [args.report_to] if isinstance(args.report_to, str) else list(args.report_to or ["none"])
    unknown = [name for name in report_to if name not in (*REPORT_TO, "all", "none")]
    if unknown:
        raise SystemExit(f"error: --report_to {' '.join(unknown)}: unknown; allowed: {', '.join(REPORT_TO)}, all, none")
    if "none" in report_to and len(report_to) > 1:
        raise SystemExit(f"error: --report_to {' '.join(report_to)}: none cannot be combined with trackers")
    args.report_to = report_to
    for kind in ("eval", "save"):
        strategy, steps = getattr(args, f"{kind}_strategy"), getattr(args, f"{kind}_steps")
        if strategy is None:
            strategy = "steps" if steps else "no"
        if strategy not in STRATEGIES:
            raise SystemExit(f"error: --{kind}_strategy {strategy}: allowed: {', '.join(STRATEGIES)}")
        if strategy == "steps" and not steps:
            raise SystemExit(f"error: --{kind}_strategy steps needs --{kind}_steps N (N > 0)")
        setattr(args, f"{kind}_strategy", strategy)
        if strategy == "no":
            setattr(args, f"{kind}_steps", 0)


def check_dmao_after_stage1(args: TrainArgs) -> None:
    """A DMAO event reshapes the model's components; a selector still learning masks over the old components
    cannot follow it (the supernet's stage 1), so events must come after stage 1 (a SystemExit otherwise)."""
    dmao, selection = args.dmao_config(), args.selection_config()
    if not (dmao and args.subnets and selection.learns_masks):
        return
    early = [e for e in dmao.events if e <= selection.stage1_fraction]
    if early:
        raise SystemExit(
            f"error: dmao event(s) at {early} of training fall in the supernet's stage 1 (stage1_fraction "
            f"{selection.stage1_fraction}), where the {selection.method} selector learns masks over the components "
            "a DMAO event reshapes; place the events after stage 1 (dmao.events > selection.stage1_fraction) or "
            "train DMAO without sizes")


def check_ranges(args: TrainArgs) -> None:
    """A SystemExit naming the first option outside its range (`RANGES`) and the range allowed."""
    for name, (low, high, low_inclusive) in RANGES.items():
        value = getattr(args, name)
        if value is None:
            continue
        too_low = value < low if low_inclusive else value <= low
        if too_low or (high is not None and value >= high) or math.isnan(value):
            allowed = (f">= {low}" if low_inclusive else f"> {low}") + (f" and < {high}" if high is not None else "")
            raise SystemExit(f"error: --{name} is {value} but must be {allowed}" + _ZERO_MEANS.get(name, ""))
    if args.lr_scheduler_type in ("one_cycle", "warmup_stable_decay") and args.warmup_ratio + args.decay_fraction > 1:
        raise SystemExit(f"error: --warmup_ratio {args.warmup_ratio} + --decay_fraction {args.decay_fraction} "
                         "is more than 1; lower one of them")
    if args.max_duration_s <= args.min_duration_s:
        raise SystemExit(f"error: --max_duration_s {args.max_duration_s} must be more than --min_duration_s "
                         f"{args.min_duration_s}")


_ZERO_MEANS = {"eval_steps": " (0 = evaluate only at the end)", "save_steps": " (0 = no periodic checkpoint)",
               "save_total_limit": " (0 = keep every checkpoint)", "max_grad_norm": " (0 = no clipping)"}


def read_config(path: str) -> dict:
    """The options of a YAML file; unknown keys are an error."""
    with open(path, encoding="utf-8") as f:
        values = yaml.safe_load(f) or {}
    for old, new in RENAMED_OPTIONS.items():
        if old in values:
            if new in values:
                raise SystemExit(f"error: {path} sets both {old} and {new}; keep {new} (the new name of {old})")
            logger.warning("%s: %s is deprecated: use %s (the transformers.TrainingArguments name); the old name "
                           "goes in the next release", path, old, new)
            values[new] = values.pop(old)
    known = {f.name for f in fields(TrainArgs)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SystemExit(f"error: unknown key(s) {unknown} in {path}; allowed keys: {', '.join(sorted(known))}")
    return values
