"""Reproduce the papers' comparisons at CPU scale: one supernet vs individually trained models, per method.

Every run trains on the same synthesized corpus with the same number of updates, batch size and schedule
(the configs in training/configs/repro/), is evaluated on the test split's unseen sentences, and lands in
a results JSON from which the report (markdown + plot) is rebuilt. The report goes to --report_dir
(runs/repro/report/: reproduction.json, reproduction.md, reproduction.png); only --write_docs updates the tracked
benchmarks/results/reproduction.json, docs/reproduction.md and docs/reproduction.png. Runs recorded in the tracked
results whose folders are gone are kept as recorded, with the corpus they were trained on.
Paths are relative to the repository root (`python scripts/reproduce.py` runs there; `dynasr-reproduce` runs
in the current directory).

    python scripts/reproduce.py                        # every run (2 at a time, 1 thread each), then the report
    python scripts/reproduce.py --runs baseline_full_s0,stk_module_s0   # only these (others keep their results)
    python scripts/reproduce.py --report_only          # rebuild the report (runs/repro/report/) from finished runs
    python scripts/reproduce.py --report_only --write_docs   # ... into docs/ and benchmarks/results/ (tracked)
    python scripts/reproduce.py --list                 # the run matrix

Finished runs (runs/repro/NAME/eval/results.json) are skipped unless --force; runs recorded in the results
file whose folder is gone are kept as recorded (each entry names the commit, date and machine it ran on).
The second seed of the best supernet method is chosen after every seed-0 supernet has finished (lowest mean
CER over its sizes).

Duration on a 2-core CPU: the 20 runs of the matrix (paper 2's ablation aside) took 70 minutes of wall time 2 runs at
a time on 2026-12-04, evaluation included, on the existing demo corpus (docs/reproduction.md gives each run's
training time); --report_only takes seconds.
"""

from __future__ import annotations

import csv
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from hf_dynasr.evaluation import machine_info
from hf_dynasr.evaluation.reproduction_matrix import (CONFIG_DIR, finished, resolve, run_matrix, selected_runs,
                                                      write_derived_config)
from hf_dynasr.evaluation.reproduction_report import write_report
from hf_dynasr.json_io import read_json, write_json

logger = logging.getLogger(__name__)

TRACKED_RESULTS = os.path.join("benchmarks", "results", "reproduction.json")  # what --write_docs updates
TRACKED_DOC = os.path.join("docs", "reproduction.md")
REPORT_DIR = os.path.join("runs", "repro", "report")  # the default output: not tracked


@dataclass
class ReproduceOptions:
    """What `reproduce` runs and where it writes; the command line options of the same names."""

    corpus: str = "data/demo_corpus"  # the demo's corpus (scripts/demo.sh: 8,000 utterances, seed 0)
    num_utterances: int = 8000
    output_dir: str = "runs/repro"
    runs: str = "all"
    max_steps: int | None = None
    parallel: int = 2
    threads: int = 1
    force: bool = False
    report_only: bool = False
    report_dir: str = REPORT_DIR
    write_docs: bool = False
    results: str | None = None  # the results JSON written (default: report_dir's, or the tracked one with write_docs)
    doc: str | None = None  # the markdown report written (its plot beside it, .png)


def output_paths(opts: ReproduceOptions) -> tuple[str, str]:
    """(results JSON, markdown report) that `reproduce` writes: --results / --doc, else the tracked files with
    --write_docs, else reproduction.json / reproduction.md in --report_dir."""
    if opts.write_docs:
        return opts.results or TRACKED_RESULTS, opts.doc or TRACKED_DOC
    return (opts.results or os.path.join(opts.report_dir, "reproduction.json"),
            opts.doc or os.path.join(opts.report_dir, "reproduction.md"))


def previous_record(opts: ReproduceOptions) -> dict | None:
    """The recorded runs to keep: the results file written, else (when --results is not given) the tracked one."""
    results, _ = output_paths(opts)
    for path in (results, *([TRACKED_RESULTS] if opts.results is None else [])):
        if os.path.exists(path):
            return read_json(path)
    return None


def reproduce(opts: ReproduceOptions, command: str) -> tuple[dict, list[str]]:
    """Run what is missing of the selected runs (unless `report_only`), then write the results JSON and the
    report. `command` is how the report names the command line. Returns the record and the failed runs."""
    wanted = selected_runs(opts.runs)
    failed = []
    if not opts.report_only:
        if not os.path.isdir(CONFIG_DIR):
            raise FileNotFoundError(f"{CONFIG_DIR}/ not found: run this from the repository root")
        if not os.path.exists(os.path.join(opts.corpus, "train", "metadata.csv")):
            subprocess.run([sys.executable, "scripts/synthesize_corpus.py", "--output_dir", opts.corpus,
                            "--num_utterances", str(opts.num_utterances), "--seed", "0"], check=True)
        selected = [r for r in run_matrix()
                    if r[0] in wanted and (opts.force or not finished(opts.output_dir, r[0]))]
        failed = run_all(opts, selected)
    previous = previous_record(opts)
    # a report of recorded runs keeps their corpus: --corpus (or its default) names it only when runs trained now
    corpus = opts.corpus if (previous is None or not opts.report_only) else previous.get("corpus", opts.corpus)
    record = {
        "command": command,
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "date": _now(),
        "machine": _machine(),
        "corpus": corpus, "corpus_hours": corpus_hours(corpus, previous),
        "parallel": opts.parallel, "threads_per_run": opts.threads,
        "runs": collect(opts, previous),
    }
    results, doc = output_paths(opts)
    for path in (results, doc):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_json(results, record)
    write_report(record, doc)
    return record, failed


def commands(opts: ReproduceOptions, name: str, spec: dict, seed: int) -> list[list[str]]:
    """Train (`spec` from `resolve`: config file and extra arguments), then evaluate every size on the test split."""
    out = os.path.join(opts.output_dir, name)
    data = f"audiofolder:{opts.corpus}"
    train = [sys.executable, "training/train.py", "--config", spec["path"],
             "--seed", str(seed), "--output_dir", out, "--overwrite_output_dir",
             "--train_data", data, "--eval_data", data]
    if opts.max_steps and "--max_steps" not in spec["train_args"]:
        train += ["--max_steps", str(opts.max_steps)]
    train += spec["train_args"]
    evaluate = [sys.executable, "scripts/evaluate_model.py", "--checkpoint", os.path.join(out, "final"),
                "--data", data, "--split", "test", "--output_dir", os.path.join(out, "eval"), "--latency_runs", "0"]
    return [train, evaluate]


def launch(opts: ReproduceOptions, name: str, spec: dict, seed: int) -> subprocess.Popen:
    """Train then evaluate, in one shell child so that the pool only tracks one process per run."""
    os.makedirs(opts.output_dir, exist_ok=True)
    write_derived_config(spec)
    write_json(os.path.join(opts.output_dir, f"{name}.json"),
               {k: v for k, v in spec.items() if k != "config_values"} | {"seed": seed})
    env = dict(os.environ, OMP_NUM_THREADS=str(opts.threads), MKL_NUM_THREADS=str(opts.threads),
               TOKENIZERS_PARALLELISM="false")
    script = " && ".join(shlex.join(cmd) for cmd in commands(opts, name, spec, seed))
    log = open(os.path.join(opts.output_dir, f"{name}.log"), "w", encoding="utf-8")
    logger.info("[%s] start %s (%s, seed %d)", time.strftime("%H:%M:%S"), name,
                spec["config"] + (f", {spec['variant']}" if spec["variant"] else ""), seed)
    return subprocess.Popen(["bash", "-c", script], stdout=log, stderr=subprocess.STDOUT, env=env)


def run_all(opts: ReproduceOptions, selected: list[tuple[str, str, int]]) -> list[str]:
    """A small pool: at most `opts.parallel` runs; the first run prepares the feature cache alone. Returns the
    names of the runs that failed."""
    pending, running, failed = list(selected), {}, []
    cache_ready = False
    while pending or running:
        failed += _reap(running)
        cache_ready = cache_ready or any(
            os.path.exists(os.path.join(opts.output_dir, n, "data_report.json")) for n, _, _ in selected)
        limit = opts.parallel if cache_ready else 1
        for job in list(pending):
            if len(running) >= limit:
                break
            name, config, seed = job
            spec = resolve(opts.output_dir, name, config)
            if spec is None:  # a derived run whose inputs are not finished: wait, unless nothing can finish them
                if not running and all(resolve(opts.output_dir, n, c) is None for n, c, _ in pending):
                    logger.info("skip %s: the runs it derives from did not finish", name)
                    pending.remove(job)
                continue
            pending.remove(job)
            running[name] = launch(opts, name, spec, seed)
        time.sleep(5)
    return failed


def _reap(running: dict[str, subprocess.Popen]) -> list[str]:
    """Drop the finished runs from `running`, logging each; returns the names of those that failed."""
    failed = []
    for name, proc in list(running.items()):
        if proc.poll() is not None:
            del running[name]
            status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}, see {name}.log)"
            logger.info("[%s] %s: %s", time.strftime("%H:%M:%S"), status, name)
            if proc.returncode:
                failed.append(name)
    return failed


def collect(opts: ReproduceOptions, previous: dict | None) -> list[dict]:
    """Every finished run's per-size results, with its config, seed and wall times.

    A run whose folder is gone (a new machine, a cleaned runs/) keeps the entry the previous results file
    recorded for it, so rebuilding the report never drops measured runs.
    """
    kept = {r["name"]: r for r in (previous or {}).get("runs", [])}
    for r in kept.values():  # entries from before runs carried their own provenance
        r.setdefault("recorded", {"commit": previous.get("commit"), "date": previous.get("date"),
                                  "machine": previous.get("machine"), "parallel": previous.get("parallel"),
                                  "threads_per_run": previous.get("threads_per_run")})
    stamp = {"commit": git("rev-parse", "--short", "HEAD"), "date": _now(), "machine": _machine(),
             "parallel": opts.parallel, "threads_per_run": opts.threads}
    runs = []
    for name, config, seed in run_matrix():
        if not finished(opts.output_dir, name):
            if name in kept:
                runs.append(kept[name])
            continue
        entry = _run_entry(opts, name, config, seed)
        same = name in kept and kept[name]["sizes"] == entry["sizes"]
        runs.append({**entry, "recorded": kept[name]["recorded"] if same else stamp})
    matrix = {name for name, _, _ in run_matrix()}
    return runs + [r for name, r in kept.items() if name not in matrix]  # runs of an older matrix stay on record


def _run_entry(opts: ReproduceOptions, name: str, config: str, seed: int) -> dict:
    """One finished run's record: config, seed, method, steps, wall time and per-size results."""
    out = os.path.join(opts.output_dir, name)
    results = read_json(os.path.join(out, "eval", "results.json"))
    training = read_json(os.path.join(out, "final", "training_results.json"))
    launched = os.path.join(opts.output_dir, f"{name}.json")
    variant = None
    if os.path.exists(launched):  # the config actually trained (a derived run's is chosen at launch)
        spec = read_json(launched)
        config, variant = spec["config"], spec.get("variant")
    return {
        "name": name, "config": config, "variant": variant, "seed": seed, "method": training.get("method"),
        "steps": training.get("steps"),
        "train_wall_time_s": training.get("wall_time_s"), "num_processes": training.get("num_processes"),
        "dmao": training.get("dmao") is not None,
        "sizes": _sizes(results),
        "test_utterances": results["num_utterances"],
    }


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


def git(*cmd) -> str:
    """Output of a git command in the current directory ("unknown" outside a repository)."""
    try:
        return subprocess.run(["git", *cmd], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _machine() -> dict:
    return {"cpu": machine_info()["cpu"], "cores": os.cpu_count(), "python": platform.python_version()}
