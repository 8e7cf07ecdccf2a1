"""Scale benchmarks; results go to runs/benchmarks/<suite>.json (untracked), or with --write_docs to the tracked
benchmarks/results/<suite>.json and a section each of docs/benchmarks.md.

Usage:
    python scripts/benchmark_scale.py --write_docs           # all three, about 15 minutes on 2 cores
    python scripts/benchmark_scale.py --suite paper_step     # a paper-size supernet update (d=512, 12 blocks, 150 s
                                                             # batch) with and without gradient checkpointing
    python scripts/benchmark_scale.py --suite data_path      # on-the-fly features per DataLoader worker vs the
                                                             # demo step's consumption; workers per GPU (projected)
    python scripts/benchmark_scale.py --suite memory_scaling # peak memory of training over 1x/4x/16x the demo corpus

They need data/demo_corpus (bash scripts/demo.sh, or python scripts/synthesize_corpus.py --output_dir
data/demo_corpus --num_utterances 8000); data_path reads paper_step.json for its projection.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from hf_dynasr import DynaSRConfig, DynaSRForCTC, build_processor
from hf_dynasr.data import DurationBatchSampler, load_speech_dataset, read_table
from hf_dynasr.data.prepare import preparation_options
from hf_dynasr.data.streaming import OnTheFlyCollator, OnTheFlySpeechDataset, index_corpus, prepare_row, worker_init
from hf_dynasr.evaluation.benchmark_report import add_output_options, benchmark_machine, output_paths, write_docs
from hf_dynasr.evaluation.timing import timeit
from hf_dynasr.json_io import write_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(REPO, "data", "demo_corpus")
DEMO_CONFIG = os.path.join(REPO, "training", "configs", "demo_cpu.yaml")
PAPER_CONFIG = os.path.join(REPO, "training", "configs", "librispeech_960h.yaml")
DEMO_BATCH_SECONDS = 25.0  # demo_cpu.yaml's max_batch_seconds
# Projection inputs (assumptions, not measurements): one H100 SXM's dense bf16 tensor-core peak, and two shares of
# it a step of this model might reach: 0.30 for large fused matmuls, 0.10 where a 4-utterance batch of a 74M-parameter
# model leaves kernels small (attention, depthwise convolutions, normalisations and launch overhead)
GPU_PEAK_FLOPS = 989e12
GPU_UTILISATIONS = (0.10, 0.30)


def _need_corpus() -> None:
    if not os.path.isfile(os.path.join(CORPUS, "train", "metadata.csv")):
        raise SystemExit(f"the scale suites need the demo corpus in {CORPUS}: run bash scripts/demo.sh, or python "
                         "scripts/synthesize_corpus.py --output_dir data/demo_corpus --num_utterances 8000")


def _demo_step_ms(repeats: int) -> float:
    """A demo training step (the demo model, a 25 s batch of 2.5 s utterances) with the training threads."""
    cfg = DynaSRConfig(vocab_size=30, hidden_size=144, num_hidden_layers=4, num_attention_heads=4,
                       intermediate_size=576, conv_kernel_size=15, frontend_type="conv2d4x", frontend_channels=64,
                       hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0, granularity="module")
    model = DynaSRForCTC(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    feats, mask = torch.randn(10, 250, 80), torch.ones(10, 250, dtype=torch.long)
    labels = torch.randint(1, 30, (10, 30))

    def step():
        model(input_features=feats, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return timeit(step, repeats, warmup=2)


def suite_data_path(repeats: int) -> dict:
    """Utterances per second one DataLoader worker computes (decode, log-mel, labels) against the utterances a
    demo training step consumes per second; and the workers the paper model would need on one GPU."""
    _need_corpus()
    proc = build_processor()
    options = preparation_options(proc.feature_extractor, proc.tokenizer, min_duration_s=0.3, max_duration_s=20.0)
    raw = load_speech_dataset(f"audiofolder:{CORPUS}", split="train").select(range(400))
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        index, _ = index_corpus(raw, options, cache_dir=cache)
        index_ms_per_utt = (time.perf_counter() - start) * 1000 / len(raw)
        rows = index.with_format(None)
        durations = np.array(rows["duration"])
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in a worker (worker_init)
        start = time.perf_counter()
        for row in rows:
            prepare_row(row["audio"], row["text"], options)
        one_thread_s = time.perf_counter() - start
        torch.set_num_threads(threads)
        sampler = DurationBatchSampler.from_dataset(index, DEMO_BATCH_SECONDS, seed=0)
        loader = DataLoader(OnTheFlySpeechDataset(index, options), batch_sampler=sampler, num_workers=1,
                            collate_fn=OnTheFlyCollator(proc.feature_extractor, 80), worker_init_fn=worker_init)
        start = time.perf_counter()
        utterances = sum(int(batch["input_features"].shape[0]) for batch in loader)
        worker_s = time.perf_counter() - start
    step_ms = _demo_step_ms(repeats)
    utts_per_step = len(index) / len(sampler)
    worker_utt_per_s = utterances / worker_s
    consumed_utt_per_s = utts_per_step / (step_ms / 1000)
    ms_per_audio_s = one_thread_s * 1000 / float(durations.sum())
    result = {
        "utterances": len(index), "mean_utterance_s": round(float(durations.mean()), 2),
        "index_ms_per_utterance": round(index_ms_per_utt, 3),
        "one_thread_utt_per_s": round(len(index) / one_thread_s, 1),
        "one_thread_ms_per_audio_s": round(ms_per_audio_s, 3),
        "one_worker_utt_per_s": round(worker_utt_per_s, 1),
        "demo_step_ms": round(step_ms, 1), "demo_utterances_per_step": round(utts_per_step, 2),
        "demo_consumed_utt_per_s": round(consumed_utt_per_s, 1),
        "one_worker_vs_demo_step_rate": round(worker_utt_per_s / consumed_utt_per_s, 2),
    }
    result.update(_paper_workers(ms_per_audio_s))
    print("data_path", json.dumps(result), flush=True)
    return result


def _paper_workers(ms_per_audio_s: float) -> dict:
    """Projection: the paper model's update on one GPU from its FLOPs (paper_step.json when measured) at an
    assumed utilisation, and the DataLoader workers that feed its 150 s of audio in that time."""
    path = os.path.join(REPO, "benchmarks", "results", "paper_step.json")
    flops = None
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            flops = json.load(f)["results"].get("stage2_tflop_per_update")
    if flops is None:
        return {"paper_workers_per_gpu_projected": "run --suite paper_step first"}
    cpu_s = 150.0 * ms_per_audio_s / 1000
    result = {"paper_update_tflop": flops, "paper_batch_feature_cpu_s": round(cpu_s, 3)}
    for share in GPU_UTILISATIONS:
        gpu_s = flops * 1e12 / (GPU_PEAK_FLOPS * share)
        result[f"paper_update_gpu_s_projected_at_{share:.2f}_of_peak"] = round(gpu_s, 3)
        result[f"paper_workers_per_gpu_projected_at_{share:.2f}_of_peak"] = int(np.ceil(cpu_s / gpu_s))
    return result


def suite_memory_scaling(repeats: int) -> dict:
    """Peak memory (proportional set size of the training process and its DataLoader worker) of 40-update demo-model
    runs whose training set is 1x, 4x and 16x the demo corpus (hard links to the same audio)."""
    _need_corpus()
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for factor in (1, 4, 16):
            corpus = _scaled_corpus(tmp, factor)
            for pipeline in ("on_the_fly", "streaming"):
                peak = _train_peak_pss(corpus, os.path.join(tmp, f"run_{pipeline}_{factor}"), pipeline)
                result[f"{pipeline}_{factor}x_peak_pss_mib"] = round(peak / 2**20, 1)
        for pipeline in ("on_the_fly", "streaming"):
            small, big = result[f"{pipeline}_1x_peak_pss_mib"], result[f"{pipeline}_16x_peak_pss_mib"]
            result[f"{pipeline}_16x_vs_1x"] = round(big / small, 3)
    print("memory_scaling", json.dumps(result), flush=True)
    return result


def _scaled_corpus(tmp: str, factor: int) -> str:
    """A corpus whose train split lists every demo train utterance `factor` times (hard-linked copies, so each
    row is its own file)."""
    folder = os.path.join(tmp, f"corpus_{factor}x")
    train = os.path.join(folder, "train")
    os.makedirs(train)
    rows = read_table(os.path.join(CORPUS, "train", "metadata.csv"))
    with open(os.path.join(train, "metadata.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "transcription"])
        for copy in range(factor):
            for row in rows:
                name = f"{copy}-{row['file_name']}"
                os.link(os.path.join(CORPUS, "train", row["file_name"]), os.path.join(train, name))
                writer.writerow([name, row["transcription"]])
    return folder


def _train_peak_pss(corpus: str, out: str, pipeline: str) -> int:
    cmd = [sys.executable, os.path.join(REPO, "training", "train.py"), "--config", DEMO_CONFIG, "--output_dir", out,
           "--train_data", f"audiofolder:{corpus}", "--eval_data", f"audiofolder:{CORPUS}", "--max_steps", "40",
           "--save_steps", "0", "--max_eval_utterances", "8", "--data_pipeline", pipeline,
           "--dataloader_num_workers", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def poll():
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_pss(proc.pid))
            time.sleep(0.1)
    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    _, err = proc.communicate()
    watcher.join()
    if proc.returncode:
        raise SystemExit(f"training for the memory benchmark failed:\n{err[-3000:]}")
    return peak[0]


def _tree_pss(pid: int) -> int:
    """Proportional set size of `pid` and all its descendants (from /proc): memory a forked DataLoader worker shares
    with its parent is counted once, where summing RSS would count it twice."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup", encoding="utf-8") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children", encoding="utf-8") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            continue
    return total


def suite_paper_step(repeats: int) -> dict:
    """`train.py --config librispeech_960h.yaml --dry_run` (d=512, 12 blocks, 150 s batches, the OrthoSoftmax
    supernet) with and without gradient checkpointing, each in its own process (peak RSS is per process)."""
    result = {}
    for name, extra in (("no_checkpointing", []), ("checkpointing", ["--gradient_checkpointing"])):
        code = ("import json, sys; from hf_dynasr.trainer.dry_run import dry_run; "
                "from hf_dynasr.trainer.options import parse_args; "
                "print('REPORT' + json.dumps(dry_run(parse_args(sys.argv[1:])).to_dict()))")
        cmd = [sys.executable, "-c", code, "--config", PAPER_CONFIG, *extra]
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS":
                                                                                  str(torch.get_num_threads())})
        if done.returncode:
            raise SystemExit(f"dry run failed:\n{done.stderr[-3000:]}")
        report = json.loads(next(line[6:] for line in done.stdout.splitlines() if line.startswith("REPORT")))
        for update in report["updates"]:
            key = f"stage{update['stage']}"
            result[f"{name}_{key}_update_s"] = round(update["seconds"], 1)
            result[f"{key}_tflop_per_update"] = round(update["flops"] / 1e12, 3)
            result[f"{key}_nets"] = "+".join(update["nets"])
        result[f"{name}_peak_rss_gib"] = round(report["peak_memory_bytes"] / 2**30, 2)
        result["batch"] = f"{report['batch']['utterances']} x {report['batch']['seconds_per_utterance']} s"
        result["parameters_trainable"] = report["parameters"]["trainable"]
    result["checkpointing_vs_not_peak_rss"] = round(result["checkpointing_peak_rss_gib"]
                                                    / result["no_checkpointing_peak_rss_gib"], 3)
    print("paper_step", json.dumps(result), flush=True)
    return result


SCALE_SUITES = {"paper_step": suite_paper_step, "data_path": suite_data_path, "memory_scaling": suite_memory_scaling}
RESULTS = os.path.join(REPO, "benchmarks", "results")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="all", help=f"all, or one of {list(SCALE_SUITES)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    add_output_options(parser)
    args = parser.parse_args()
    results, page = output_paths(args, RESULTS)
    names = list(SCALE_SUITES) if args.suite == "all" else [args.suite]
    unknown = [n for n in names if n not in SCALE_SUITES]
    if unknown:
        raise SystemExit(f"unknown suite {unknown[0]!r}; choose from {list(SCALE_SUITES)} or all")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for name in names:
        os.makedirs(results, exist_ok=True)
        path = os.path.join(results, f"{name}.json")
        result = SCALE_SUITES[name](args.repeats)
        write_json(path, {"suite": name, "machine": benchmark_machine(REPO), "results": result})
        print(f"wrote {path}", flush=True)
    suites = [f[:-5] for f in os.listdir(results) if f.endswith(".json") and f[:-5] not in ("speed", "reproduction")]
    print(f"wrote {write_docs(results, suites, page)}")


if __name__ == "__main__":
    main()
