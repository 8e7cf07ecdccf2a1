#!/usr/bin/env python
"""Short training runs with and without each augmentation family, scored on the in-domain test split, a held-out
TTS engine and a telephone-band copy (docs/robustness_of_models.md; hf_dynasr/evaluation/robustness.py).

    python -m hf_dynasr.data.heldout --corpus data/demo_corpus --output_dir data/demo_heldout --max_utterances 200
    python scripts/robustness_runs.py --recipes none,all --max_steps 800 --seeds 0      # -> runs/robustness/
    python scripts/robustness_runs.py --recipes only_speed --write_docs   # -> benchmarks/results/ + docs table
    python scripts/robustness_runs.py --existing demo=runs/demo           # score a finished run, train nothing
    python scripts/robustness_runs.py --report_only --write_docs          # the docs table from the tracked JSON
    python scripts/robustness_runs.py --list

Without --write_docs the results go to runs/robustness/robustness.json (and robustness.md), untracked; with it to
benchmarks/results/robustness.json and the run table of docs/robustness_of_models.md. Run it alone on the
machine: it times training.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from hf_dynasr.evaluation import robustness
from hf_dynasr.json_io import read_json, write_json

TRACKED = os.path.join("benchmarks", "results", "robustness.json")
DOC = os.path.join("docs", "robustness_of_models.md")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default="none,all", help="comma list of recipes (see --list)")
    p.add_argument("--seeds", default="0", help="comma list of seeds")
    p.add_argument("--max_steps", type=int, default=800)
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers of the augmented runs")
    p.add_argument("--copies", type=int, default=0, help="augmented runs: 0 augments every read in the workers, K > 0 "
                   "precomputes K augmented copies (--augmentation_copies)")
    p.add_argument("--config", default=os.path.join("training", "configs", "demo_cpu.yaml"))
    p.add_argument("--corpus", default="data/demo_corpus")
    p.add_argument("--heldout", default="data/demo_heldout", help="folder from python -m hf_dynasr.data.heldout")
    p.add_argument("--max_samples", type=int, default=200, help="utterances per test set")
    p.add_argument("--output_dir", default=os.path.join("runs", "robustness"), help="one folder per run")
    p.add_argument("--tag", default="", help="suffix of the run names (RECIPE + TAG + _sSEED), e.g. _2400")
    p.add_argument("--existing", nargs="*", default=[], metavar="NAME=RUN_DIR",
                   help="score finished runs (RUN_DIR/final) under NAME instead of training")
    p.add_argument("--write_docs", action="store_true", help=f"record into {TRACKED} and the table of {DOC}")
    p.add_argument("--list", action="store_true", help="print the recipes and exit")
    p.add_argument("--cost", action="store_true", help="only the worker cost per utterance of the 'all' mix")
    p.add_argument("--report_only", action="store_true", help="train nothing: only rewrite the table from the JSON")
    return p.parse_args(argv)


def record_run(record: dict, name: str, run_dir: str, args, **fields) -> None:
    cer = robustness.evaluate(run_dir, corpus=args.corpus, heldout=args.heldout, max_samples=args.max_samples)
    record["runs"][name] = {**fields, "cer": cer}
    print(f"{name}: {json.dumps(record['runs'][name])}", flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # paths are repo-relative
    table = robustness.recipes()
    if args.list:
        for name, augmentation in table.items():
            print(f"{name:16s} {json.dumps(augmentation)}")
        return 0
    unknown = sorted(set(args.recipes.split(",")) - set(table))
    if unknown:
        print(f"error: unknown recipe(s) {unknown}; see --list", file=sys.stderr)
        return 2
    results = TRACKED if args.write_docs else os.path.join(args.output_dir, "robustness.json")
    record = read_json(results) if os.path.exists(results) else read_json(TRACKED) if os.path.exists(TRACKED) else {}
    record.setdefault("runs", {})
    os.makedirs(os.path.dirname(results), exist_ok=True)
    if args.report_only:
        pass
    elif args.cost:
        record["worker_cost"] = robustness.worker_cost(args.corpus, table["all"])
        print(json.dumps(record["worker_cost"]))
    elif args.existing:
        for item in args.existing:
            name, _, run_dir = item.partition("=")
            train = read_json(os.path.join(run_dir, "final", "training_results.json"))
            options = read_json(os.path.join(run_dir, "training_args.json"))
            record_run(record, name, run_dir, args, recipe="existing run " + run_dir, seed=options.get("seed"),
                       augmentation=options.get("augmentation") or None, copies=options.get("augmentation_copies", 0),
                       max_steps=train.get("steps"), train_wall_s=round(train["wall_time_s"], 1))
    else:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for name in args.recipes.split(","):
                run_name = f"{name}{args.tag}_s{seed}"
                run_dir = os.path.join(args.output_dir, run_name)
                wall = robustness.train(run_dir, table[name], seed, config=args.config, corpus=args.corpus,
                                        max_steps=args.max_steps, workers=args.workers, copies=args.copies)
                loop = read_json(os.path.join(run_dir, "final", "training_results.json"))["wall_time_s"]
                record_run(record, run_name, run_dir, args, recipe=name, seed=seed, augmentation=table[name],
                           max_steps=args.max_steps, train_wall_s=round(loop, 1), process_wall_s=round(wall, 1),
                           workers=args.workers if table[name] and not args.copies else 0,
                           copies=args.copies if table[name] else 0)
                write_json(results, record)  # after every run: a later failure keeps what finished
    write_json(results, record)
    lines = robustness.results_table(record)
    if args.write_docs:
        robustness.replace_table(DOC, lines)
    else:
        with open(os.path.join(args.output_dir, "robustness.md"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    print(f"wrote {results} and {DOC if args.write_docs else os.path.join(args.output_dir, 'robustness.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
