"""Command lines of the evaluation package: `dynasr-evaluate` (= `python scripts/evaluate_model.py`) and
`dynasr-reproduce` (= `python scripts/reproduce.py`). Results go to stdout, errors to stderr."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

import torch
from transformers import AutoProcessor

from hf_dynasr.data import load_speech_dataset
from hf_dynasr.evaluation import (evaluate_checkpoint, latency_table, plot_pareto, plot_training_curve,
                                  results_markdown, samples_markdown)
from hf_dynasr.evaluation import reproduction, sets
from hf_dynasr.evaluation.checkpoint import MissingColumnError
from hf_dynasr.evaluation.reproduction_matrix import ABLATIONS, DERIVED
from hf_dynasr.json_io import write_json
from hf_dynasr.lm import load_lm_decoder

EVALUATE_USAGE = """Evaluate every size of an hf_dynasr checkpoint: WER, CER, parameters, FLOPs, latency, RTF.

    python scripts/evaluate_model.py --checkpoint ckpt --data audiofolder:data/synth --split test
    python scripts/evaluate_model.py --checkpoint ckpt --audio_dir data/synth/test --subnets small,full
    python scripts/evaluate_model.py --checkpoint ckpt --latency-table          # writes ckpt/latency_table.json
    python scripts/evaluate_model.py --checkpoint ckpt --data audiofolder:data/synth --lm lm   # + LM beam search WER
    python scripts/evaluate_model.py --checkpoint ckpt --data audiofolder:data/demo_corpus \
        audiofolder:data/demo_heldout/heldout_engine audiofolder:data/demo_heldout/telephone   # a column per set

Writes OUTPUT_DIR/results.json, results.md (a markdown table) and pareto.png (WER vs params and vs FLOPs;
--baselines JSON adds individually trained models: {name: {num_parameters, flops, wer}}; with --lm also the
LM's WER), and training_curve.png when the checkpoint is a run's final/ (loss, dev WER/CER and learning rate
vs step, from its training_results.json). OUTPUT_DIR defaults to eval/ beside a run's final/ (runs/demo/final
-> runs/demo/eval, where the export command of the README reads results.json), CHECKPOINT/eval for any other
local folder, and eval/NAME for a Hub id.
`dynasr-evaluate` is the same command.
"""


def evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=EVALUATE_USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="supernet or per-size checkpoint (directory or Hub id)")
    p.add_argument("--subnets", default="all", help="'all' (every size + full) or a comma list, e.g. small,full")
    p.add_argument("--data", nargs="+", help="dataset spec(s) for hf_dynasr.data.load_speech_dataset, e.g. "
                   "audiofolder:data/synth; several: one CER/WER table with a column per set (results_sets.*)")
    p.add_argument("--audio_dir", help="an audiofolder directory (audio + metadata.csv); alternative to --data")
    p.add_argument("--split", default="test", help="split / subdirectory to evaluate (default: test)")
    p.add_argument("--max_samples", type=int, default=None, help="evaluate only the first N utterances")
    p.add_argument("--group_by", default=None, metavar="COLUMN", help="also score each value of this column apart, "
                   "e.g. engine or voice of a synthesized corpus (a table per set in results.md / results_sets.md)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--num_threads", type=int, default=None, help="torch threads for latency (default: torch's)")
    p.add_argument("--latency_runs", type=int, default=5, help="timed runs per size (median); 0 = no latency")
    p.add_argument("--latency-table", "--latency_table", dest="latency_table", action="store_true",
                   help="measure batch-1 latency per size and write latency_table.json beside the checkpoint")
    p.add_argument("--no_normalize", action="store_true", help="score raw text (default: normalised)")
    p.add_argument("--baselines", help="JSON of individually trained baselines to draw on the Pareto plot")
    p.add_argument("--output_dir", default=None, help="where to write results (default: RUN/eval for a "
                   "checkpoint RUN/final, CHECKPOINT/eval for another local folder, eval/NAME for a Hub id)")
    p.add_argument("--lm", default=None, help="LM folder of scripts/build_lm.py: also report lexicon + n-gram LM "
                   "beam search WER per size (needs pip install flashlight-text)")
    p.add_argument("--lm_weight", type=float, default=None, help="LM weight (default: the LM folder's)")
    p.add_argument("--word_score", type=float, default=None, help="per-word score (default: the LM folder's)")
    p.add_argument("--beam_size", type=int, default=None, help="beam size (default: the LM folder's)")
    return p


def evaluate_main(argv: list[str] | None = None) -> int:
    """Evaluate the sizes of --checkpoint (and/or write its latency table); 2 on bad input."""
    args = evaluate_parser().parse_args(argv)
    logging.basicConfig(format="%(levelname)s: %(message)s")
    if not (args.data or args.audio_dir or args.latency_table):
        print("error: give --data or --audio_dir (or --latency-table alone)", file=sys.stderr)
        return 2
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    if args.latency_table:
        if not os.path.isdir(args.checkpoint):
            print("error: --latency-table needs a local checkpoint directory", file=sys.stderr)
            return 2
        _print_latency_table(args)
        if not (args.data or args.audio_dir):
            return 0
    decoder = None
    if args.lm:
        try:
            decoder = load_lm_decoder(args.lm, AutoProcessor.from_pretrained(args.checkpoint).tokenizer,
                                      lm_weight=args.lm_weight, word_score=args.word_score, beam_size=args.beam_size)
        except (ImportError, OSError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    def evaluate(spec: str, first: bool = True) -> dict:
        return evaluate_checkpoint(
            args.checkpoint, load_speech_dataset(spec, split=args.split), subnets=args.subnets,
            batch_size=args.batch_size, normalize=not args.no_normalize, latency=first and args.latency_runs > 0,
            latency_runs=args.latency_runs, num_threads=args.num_threads, dataset_name=spec, split=args.split,
            max_samples=args.max_samples, decoder=decoder, group_by=args.group_by)

    specs = args.data or [f"audiofolder:{args.audio_dir}"]
    try:
        if len(specs) > 1:
            _write_sets(args, sets.evaluate_sets(evaluate, specs))
        else:
            _write_results(args, evaluate(specs[0]), decoder)
    except MissingColumnError as err:  # a --group_by column the data lacks
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def default_output_dir(checkpoint: str) -> str:
    """Where evaluate writes without --output_dir: eval/ beside a run's final/ (RUN/final -> RUN/eval), eval/ inside
    any other local checkpoint folder, eval/NAME (NAME: the Hub id's last part) in the working folder."""
    if os.path.isdir(checkpoint):
        folder = os.path.normpath(checkpoint)
        if os.path.basename(folder) == "final":
            return os.path.join(os.path.dirname(folder), "eval")
        return os.path.join(folder, "eval")
    return os.path.join("eval", checkpoint.rstrip("/").split("/")[-1])


def _write_sets(args, results: dict) -> None:
    """results_sets.json and results_sets.md (CER and WER, a column per set) in --output_dir; also to stdout."""
    out = args.output_dir or default_output_dir(args.checkpoint)
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "results_sets.json"), results)
    table = sets.sets_markdown(results, "cer") + "\n" + sets.sets_markdown(results, "wer")
    table += "".join("\n" + sets.groups_markdown(r, title=f"{label}, CER % by {args.group_by}:")
                     for label, r in results["sets"].items() if args.group_by)
    with open(os.path.join(out, "results_sets.md.tmp"), "w", encoding="utf-8") as f:
        f.write(table)
    os.replace(os.path.join(out, "results_sets.md.tmp"), os.path.join(out, "results_sets.md"))
    print(table)
    print(f"wrote {os.path.join(out, 'results_sets.json')}, results_sets.md")


def _print_latency_table(args) -> None:
    table = latency_table(args.checkpoint, subnets=args.subnets, runs=max(1, args.latency_runs),
                          num_threads=args.num_threads)
    for name, row in table["sizes"].items():
        print(f"{name:>12}: {row['latency_ms']:8.1f} ms  (RTF {row['rtf']:.4f})")
    print(f"wrote {table['path']}")


def _write_results(args, results: dict, decoder) -> None:
    """results.json, results.md, pareto.png and (for a run's checkpoint) training_curve.png in --output_dir
    (default: `default_output_dir`); the tables also go to stdout."""
    out = args.output_dir or default_output_dir(args.checkpoint)
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "results.json"), results)
    table = results_markdown(results)
    if args.group_by:
        table += "\n" + sets.groups_markdown(results, title=f"CER % by {args.group_by}:")
    samples = samples_markdown(results)
    markdown = os.path.join(out, "results.md")
    with open(markdown + ".tmp", "w", encoding="utf-8") as f:
        f.write(table + ("\n" + samples if samples else ""))
    os.replace(markdown + ".tmp", markdown)
    plot_pareto(results, os.path.join(out, "pareto.png"), baselines=args.baselines)
    written = ["results.md", "pareto.png"]
    training = os.path.join(args.checkpoint, "training_results.json")
    if os.path.isfile(training):
        plot_training_curve(training, os.path.join(out, "training_curve.png"))
        written.append("training_curve.png")
    print(table)
    if samples:
        print(samples)
    if decoder is not None:
        print(f"LM beam search: {decoder.decode_seconds:.2f} s for {decoder.decoded_frames} output frames "
              f"(all sizes), lm_weight={decoder.options['lm_weight']}, word_score={decoder.options['word_score']}")
    print(f"wrote {os.path.join(out, 'results.json')}, {', '.join(written)}")


def reproduce_parser() -> argparse.ArgumentParser:
    defaults = reproduction.ReproduceOptions()
    p = argparse.ArgumentParser(description=reproduction.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=defaults.corpus, help="audiofolder corpus (synthesized if missing; "
                   "docs/reproduction.md used the demo corpus: 8,000 utterances, seed 0)")
    p.add_argument("--num_utterances", type=int, default=defaults.num_utterances,
                   help="corpus size when it has to be synthesized")
    p.add_argument("--output_dir", default=defaults.output_dir, help="one sub-folder per run")
    p.add_argument("--runs", default=defaults.runs, help="'all' or a comma list of run names (see --list)")
    p.add_argument("--max_steps", type=int, default=defaults.max_steps,
                   help="override every config's max_steps (smoke tests)")
    p.add_argument("--parallel", type=int, default=defaults.parallel, help="runs at a time")
    p.add_argument("--threads", type=int, default=defaults.threads, help="torch threads per run")
    p.add_argument("--force", action="store_true", help="re-run finished runs")
    p.add_argument("--report_only", action="store_true", help="train nothing: only rebuild the results JSON and "
                   "the report from finished and recorded runs (seconds)")
    p.add_argument("--report_dir", default=defaults.report_dir, help="where the report goes: reproduction.json, "
                   ".md and .png (default: %(default)s, not tracked)")
    p.add_argument("--write_docs", action="store_true", help=f"write the tracked {reproduction.TRACKED_RESULTS} and "
                   f"{reproduction.TRACKED_DOC} (+ .png) instead of --report_dir")
    p.add_argument("--list", action="store_true", help="print the run matrix and exit")
    p.add_argument("--results", default=None, help="results JSON to write (overrides --report_dir / --write_docs)")
    p.add_argument("--doc", default=None, help="markdown report to write, its plot beside it (overrides "
                   "--report_dir / --write_docs)")
    return p


def reproduce_main(argv: list[str] | None = None, command: str = "dynasr-reproduce") -> int:
    """Run the reproduction matrix (or list it, or only rebuild the report) in the current directory, which
    must be the repository root. `command` is how the report names this command; 1 when a run failed."""
    args = reproduce_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if args.list:
        for name, config, seed in reproduction.run_matrix():
            what = f"derived ({config})" if config in DERIVED else f"{config}.yaml"
            print(f"{name:32s} {what} seed {seed}{'  (only when named in --runs)' if config in ABLATIONS else ''}")
        return 0
    names = {f.name for f in dataclasses.fields(reproduction.ReproduceOptions)}
    opts = reproduction.ReproduceOptions(**{k: v for k, v in vars(args).items() if k in names})
    argv = sys.argv[1:] if argv is None else argv
    try:
        record, failed = reproduction.reproduce(opts, command=f"{command} {' '.join(argv)}")
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print("wrote {} and {} ({} runs)".format(*reproduction.output_paths(opts), len(record["runs"])))
    if failed:
        print(f"error: {len(failed)} run(s) failed: {', '.join(failed)}; logs in {opts.output_dir}/", file=sys.stderr)
        return 1
    return 0
