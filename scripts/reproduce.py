#!/usr/bin/env python
"""Reproduce the papers' comparisons at CPU scale: one supernet vs individually trained models, per method.

Every run trains on the same synthesized corpus with the same number of updates, batch size and schedule
(the configs in training/configs/repro/), is evaluated on the test split's unseen sentences, and lands in
benchmarks/results/reproduction.json; docs/reproduction.md and docs/reproduction.png are rebuilt from it.

    python scripts/reproduce.py                        # every run (2 at a time, 1 thread each), then the report
    python scripts/reproduce.py --runs baseline_full_s0,stk_module_s0   # only these (others keep their results)
    python scripts/reproduce.py --report_only          # rebuild the JSON and the docs from finished runs
    python scripts/reproduce.py --list                 # the run matrix

Finished runs (runs/repro/NAME/eval/results.json) are skipped unless --force; runs recorded in the results
file whose folder is gone are kept as recorded (each entry names the commit, date and machine it ran on).
The second seed of the best supernet method is chosen after every seed-0 supernet has finished (lowest mean
CER over its sizes).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reproduce_report import write_report  # noqa: E402

CONFIG_DIR = os.path.join("training", "configs", "repro")
BASELINES = ["baseline_small", "baseline_medium", "baseline_full"]
SUPERNETS = ["stk_module", "izo_module", "ortho_params_module", "ortho_params_component",
             "ortho_flops_module", "ortho_flops_component"]
BEST = "best_supernet"  # placeholder run: the best seed-0 supernet method, trained again with seed 1


def run_matrix() -> list[tuple[str, str, int]]:
    """(run name, config stem, seed) in launch order: long supernet runs first, so two workers stay busy."""
    runs = [(f"{c}_s0", c, 0) for c in SUPERNETS]
    runs += [(f"{c}_s{s}", c, s) for s in (0, 1) for c in BASELINES]
    runs += [("dmao_full_s0", "dmao_full", 0), (f"{BEST}_s1", BEST, 1)]
    return runs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default="data/reproduce_corpus",
                   help="audiofolder corpus (synthesized if missing; docs/reproduction.md used 4,000 utterances, seed 0)")
    p.add_argument("--num_utterances", type=int, default=4000, help="corpus size when it has to be synthesized")
    p.add_argument("--output_dir", default="runs/repro", help="one sub-folder per run")
    p.add_argument("--runs", default="all", help="'all' or a comma list of run names (see --list)")
    p.add_argument("--max_steps", type=int, default=None, help="override every config's max_steps (smoke tests)")
    p.add_argument("--parallel", type=int, default=2, help="runs at a time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--force", action="store_true", help="re-run finished runs")
    p.add_argument("--report_only", action="store_true", help="only rebuild the JSON and the docs")
    p.add_argument("--list", action="store_true", help="print the run matrix and exit")
    p.add_argument("--results", default="benchmarks/results/reproduction.json")
    p.add_argument("--doc", default="docs/reproduction.md")
    return p.parse_args(argv)


def done(out: str) -> bool:
    return os.path.exists(os.path.join(out, "eval", "results.json"))


def best_method(args) -> str | None:
    """The seed-0 supernet with the lowest mean CER over its sizes, once all of them have finished."""
    scores = {}
    for c in SUPERNETS:
        path = os.path.join(args.output_dir, f"{c}_s0", "eval", "results.json")
        if not os.path.exists(path):
            return None
        sizes = json.load(open(path, encoding="utf-8"))["sizes"]
        scores[c] = sum(s["cer"] for s in sizes.values()) / len(sizes)
    return min(scores, key=scores.get)


def commands(args, name: str, config: str, seed: int) -> list[list[str]]:
    out = os.path.join(args.output_dir, name)
    data = f"audiofolder:{args.corpus}"
    train = [sys.executable, "training/train.py", "--config", os.path.join(CONFIG_DIR, f"{config}.yaml"),
             "--seed", str(seed), "--output_dir", out, "--overwrite_output_dir",
             "--train_data", data, "--eval_data", data]
    if args.max_steps:
        train += ["--max_steps", str(args.max_steps)]
    evaluate = [sys.executable, "scripts/evaluate.py", "--checkpoint", os.path.join(out, "final"), "--data", data,
                "--split", "test", "--output_dir", os.path.join(out, "eval"), "--latency_runs", "0"]
    return [train, evaluate]


def launch(args, name: str, config: str, seed: int) -> subprocess.Popen:
    """Train then evaluate, in one shell child so that the pool only tracks one process per run."""
    os.makedirs(args.output_dir, exist_ok=True)
    _write_atomic(os.path.join(args.output_dir, f"{name}.json"), json.dumps({"config": config, "seed": seed}))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               TOKENIZERS_PARALLELISM="false")
    script = " && ".join(" ".join(_quote(a) for a in cmd) for cmd in commands(args, name, config, seed))
    log = open(os.path.join(args.output_dir, f"{name}.log"), "w", encoding="utf-8")
    print(f"[{time.strftime('%H:%M:%S')}] start {name} ({config}, seed {seed})", flush=True)
    return subprocess.Popen(["bash", "-c", script], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"


def run_all(args, selected: list[tuple[str, str, int]]) -> list[str]:
    """A small pool: at most --parallel runs; the first run prepares the feature cache alone."""
    pending, running, failed = list(selected), {}, []
    cache_ready = False
    while pending or running:
        for name, proc in list(running.items()):
            if proc.poll() is not None:
                del running[name]
                status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}, see {name}.log)"
                print(f"[{time.strftime('%H:%M:%S')}] {status}: {name}", flush=True)
                if proc.returncode:
                    failed.append(name)
        cache_ready = cache_ready or any(
            os.path.exists(os.path.join(args.output_dir, n, "data_report.json")) for n, _, _ in selected)
        limit = args.parallel if cache_ready else 1
        for job in list(pending):
            if len(running) >= limit:
                break
            name, config, seed = job
            if config == BEST:
                config = best_method(args)
                if config is None:
                    if not any(c in SUPERNETS for _, c, _ in pending) and not running:
                        print(f"skip {name}: not every seed-0 supernet run finished", flush=True)
                        pending.remove(job)
                    continue
            pending.remove(job)
            running[name] = launch(args, name, config, seed)
        time.sleep(5)
    return failed


def collect(args, previous: dict | None) -> list[dict]:
    """Every finished run's per-size results, with its config, seed and wall times.

    A run whose folder is gone (a new machine, a cleaned runs/) keeps the entry the previous results file
    recorded for it, so rebuilding the report never drops measured runs.
    """
    kept = {r["name"]: r for r in (previous or {}).get("runs", [])}
    for r in kept.values():  # entries from before runs carried their own provenance
        r.setdefault("recorded", {"commit": previous.get("commit"), "date": previous.get("date"),
                                  "machine": previous.get("machine"), "parallel": previous.get("parallel"),
                                  "threads_per_run": previous.get("threads_per_run")})
    stamp = {"commit": _git("rev-parse", "--short", "HEAD"), "date": _now(), "machine": _machine(),
             "parallel": args.parallel, "threads_per_run": args.threads}
    runs = []
    for name, config, seed in run_matrix():
        out = os.path.join(args.output_dir, name)
        if not done(out):
            if name in kept:
                runs.append(kept[name])
            continue
        results = json.load(open(os.path.join(out, "eval", "results.json"), encoding="utf-8"))
        training = json.load(open(os.path.join(out, "final", "training_results.json"), encoding="utf-8"))
        launched = os.path.join(args.output_dir, f"{name}.json")
        if os.path.exists(launched):  # the config actually trained (best_supernet_s1 is chosen at launch)
            config = json.load(open(launched, encoding="utf-8"))["config"]
        runs.append({
            "name": name, "config": config, "seed": seed, "method": training.get("method"), "steps": training.get("steps"),
            "train_wall_time_s": training.get("wall_time_s"), "num_processes": training.get("num_processes"),
            "dmao": training.get("dmao") is not None,
            "sizes": _sizes(results),
            "test_utterances": results["num_utterances"],
            "recorded": kept[name]["recorded"] if name in kept and kept[name]["sizes"] == _sizes(results) else stamp,
        })
    matrix = {name for name, _, _ in run_matrix()}
    return runs + [r for name, r in kept.items() if name not in matrix]  # runs of an older matrix stay on record


def _sizes(results: dict) -> dict:
    return {s: {k: v[k] for k in ("num_parameters", "flops", "wer", "cer")} for s, v in results["sizes"].items()}


def corpus_hours(corpus: str, previous: dict | None) -> dict | None:
    """Hours of audio per split, from the audiofolder metadata (or as previously recorded if the corpus is gone)."""
    hours = {}
    for split in ("train", "dev", "test"):
        path = os.path.join(corpus, split, "metadata.csv")
        if not os.path.exists(path):
            return (previous or {}).get("corpus_hours")
        with open(path, encoding="utf-8", newline="") as f:
            hours[split] = round(sum(float(row["duration"]) for row in csv.DictReader(f)) / 3600, 2)
    return hours


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def main(argv=None) -> int:
    args = parse_args(argv)
    os.chdir(ROOT)
    matrix = run_matrix()
    if args.list:
        for name, config, seed in matrix:
            print(f"{name:28s} {config}.yaml seed {seed}")
        return 0
    names = {n for n, _, _ in matrix}
    wanted = names if args.runs == "all" else set(args.runs.split(","))
    unknown = sorted(wanted - names)
    if unknown:
        raise SystemExit(f"error: unknown run(s) {unknown}; available: {', '.join(n for n, _, _ in matrix)}")
    failed = []
    if not args.report_only:
        if not os.path.exists(os.path.join(args.corpus, "train", "metadata.csv")):
            subprocess.run([sys.executable, "scripts/synthesize_corpus.py", "--output_dir", args.corpus,
                            "--num_utterances", str(args.num_utterances), "--seed", "0"], check=True)
        selected = [r for r in matrix if r[0] in wanted and (args.force or not done(os.path.join(args.output_dir, r[0])))]
        failed = run_all(args, selected)
    previous = json.load(open(args.results, encoding="utf-8")) if os.path.exists(args.results) else None
    record = {
        "command": "python scripts/reproduce.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": _git("rev-parse", "--short", "HEAD"), "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "date": _now(),
        "machine": _machine(),
        "corpus": args.corpus, "corpus_hours": corpus_hours(args.corpus, previous),
        "parallel": args.parallel, "threads_per_run": args.threads,
        "runs": collect(args, previous),
    }
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    _write_atomic(args.results, json.dumps(record, indent=1))
    write_report(record, args.doc)
    print(f"wrote {args.results} and {args.doc} ({len(record['runs'])} runs)")
    if failed:
        print(f"error: {len(failed)} run(s) failed: {', '.join(failed)}; logs in {args.output_dir}/", file=sys.stderr)
        return 1
    return 0


def _git(*cmd) -> str:
    try:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine() -> dict:
    from hf_dynasr.evaluation.metrics import machine_info  # imported late: --list and --help stay instant

    return {"cpu": machine_info()["cpu"], "cores": os.cpu_count(), "python": platform.python_version()}


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
