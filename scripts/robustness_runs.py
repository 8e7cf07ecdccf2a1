"""Short training runs with and without each augmentation family, scored on the in-domain test split, a held-out
TTS engine and a telephone-band copy (docs/robustness_of_models.md). Each run trains the demo recipe
(training/configs/demo_cpu.yaml) for --max_steps on an existing corpus, timed, then evaluate_model.py scores
every size on the three sets. Results: benchmarks/results/robustness.json (merged with earlier runs).

    python -m hf_dynasr.data.heldout --corpus data/demo_corpus --output_dir data/demo_heldout --max_utterances 200
    python scripts/robustness_runs.py --recipes none,all --max_steps 1000 --seeds 0
    python scripts/robustness_runs.py --list

Run it alone on the machine (it times training).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

from hf_dynasr.data import build_processor, load_audio, load_speech_dataset
from hf_dynasr.data.augmentation import AugmentationConfig, Augmenter
from hf_dynasr.json_io import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The families' settings in the mix ("all"); each "no_<family>" recipe is the mix without it, each "only_<family>"
#: the family alone.
MIX = {
    "speed": {"speed_prob": 0.6},
    "silence": {"silence_prob": 0.5},
    "reverb": {"reverb_prob": 0.2},
    "noise": {"noise_prob": 0.4, "noise_snr_db": [5, 30]},
    "telephone": {"telephone_prob": 0.25},
    "gain": {"gain_prob": 0.3},
}


def recipes() -> dict[str, dict | None]:
    out: dict[str, dict | None] = {"none": None, "all": {k: v for f in MIX.values() for k, v in f.items()}}
    for family, values in MIX.items():
        out[f"only_{family}"] = dict(values)
        out[f"no_{family}"] = {k: v for f, values in MIX.items() if f != family for k, v in values.items()}
    return out


def train(name: str, augmentation: dict | None, args, seed: int) -> tuple[str, float]:
    out = os.path.join(args.output_dir, f"{name}_s{seed}")
    os.makedirs(args.output_dir, exist_ok=True)
    cmd = [sys.executable, os.path.join(ROOT, "training", "train.py"), "--config", args.config, "--output_dir", out,
           "--overwrite_output_dir", "--max_steps", str(args.max_steps), "--save_steps", "0", "--seed", str(seed),
           "--train_data", f"audiofolder:{args.corpus}", "--eval_data", f"audiofolder:{args.corpus}",
           "--max_eval_utterances", "20"]
    if augmentation:
        cmd += ["--augmentation", json.dumps(augmentation), "--data_pipeline", "on_the_fly",
                "--dataloader_num_workers", str(args.workers)]
    start = time.time()
    with open(out + ".log", "w", encoding="utf-8") as log:
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    return out, time.time() - start


def evaluate(run_dir: str, args) -> dict:
    sets = [f"audiofolder:{args.corpus}", f"audiofolder:{args.heldout}/heldout_engine",
            f"audiofolder:{args.heldout}/telephone"]
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "evaluate_model.py"), "--checkpoint",
                    os.path.join(run_dir, "final"), "--data", *sets, "--split", "test", "--max_samples",
                    str(args.max_samples), "--latency_runs", "0", "--output_dir", os.path.join(run_dir, "eval_sets")],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(run_dir, "eval_sets", "results_sets.json"), encoding="utf-8") as f:
        results = json.load(f)["sets"]
    return {label: {size: round(s["cer"], 4) for size, s in r["sizes"].items()} for label, r in results.items()}


def worker_cost(corpus: str, augmentation: dict, count: int = 100) -> dict:
    """Milliseconds per utterance, on one thread as in a DataLoader worker, of decoding + features, and of the
    augmentation on top (each utterance with the batch's neighbours as babble sources)."""
    torch.set_num_threads(1)
    rows = load_speech_dataset(f"audiofolder:{corpus}", split="train").select(range(count))
    arrays = [load_audio(row["audio"]) for row in rows]
    fe, augment = build_processor().feature_extractor, Augmenter(AugmentationConfig.from_dict(augmentation))
    start = time.perf_counter()
    for row in rows:
        fe(load_audio(row["audio"]), sampling_rate=16000, return_tensors="np")
    plain = (time.perf_counter() - start) / count
    start = time.perf_counter()
    for i, array in enumerate(arrays):
        augment(array, (0, i), arrays[max(0, i - 8):i])
    extra = (time.perf_counter() - start) / count
    seconds = float(np.mean([a.size for a in arrays])) / 16000
    return {"features_ms_per_utt": round(1000 * plain, 2), "augment_ms_per_utt": round(1000 * extra, 2),
            "mean_utt_s": round(seconds, 2), "utterances": count}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default="none,all", help="comma list (see --list)")
    p.add_argument("--seeds", default="0")
    p.add_argument("--max_steps", type=int, default=1000)
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers of the augmented runs")
    p.add_argument("--config", default=os.path.join(ROOT, "training", "configs", "demo_cpu.yaml"))
    p.add_argument("--corpus", default="data/demo_corpus")
    p.add_argument("--heldout", default="data/demo_heldout")
    p.add_argument("--max_samples", type=int, default=200)
    p.add_argument("--output_dir", default="runs/robustness")
    p.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "results", "robustness.json"))
    p.add_argument("--list", action="store_true")
    p.add_argument("--cost", action="store_true", help="only the worker cost per utterance of the 'all' mix")
    args = p.parse_args()
    table = recipes()
    if args.list:
        for name, augmentation in table.items():
            print(f"{name:16s} {json.dumps(augmentation)}")
        return 0
    record = {"runs": {}}
    if os.path.exists(args.results):
        with open(args.results, encoding="utf-8") as f:
            record = json.load(f)
    if args.cost:
        record["worker_cost"] = worker_cost(args.corpus, table["all"])
        print(json.dumps(record["worker_cost"]))
        write_json(args.results, record)
        return 0
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in args.recipes.split(","):
            run_dir, wall = train(name, table[name], args, seed)
            cer = evaluate(run_dir, args)
            record["runs"][f"{name}_s{seed}"] = {"recipe": name, "seed": seed, "augmentation": table[name],
                                                 "max_steps": args.max_steps, "train_wall_s": round(wall, 1),
                                                 "workers": args.workers if table[name] else 0, "cer": cer}
            print(f"{name} seed {seed}: {wall:.0f} s, CER {json.dumps(cer)}", flush=True)
            write_json(args.results, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
