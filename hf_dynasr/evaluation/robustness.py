"""Short training runs with and without each augmentation family, scored on the in-domain test split, a held-out
TTS engine and a telephone-band copy (`python scripts/robustness_runs.py`; docs/robustness_of_models.md).

Each run trains the demo recipe (training/configs/demo_cpu.yaml) for `max_steps` on an existing corpus, timed,
then `evaluate_model.py --data A B C` scores every size on the three sets. The results JSON keeps every run it
has recorded (a run of the same name and seed replaces its entry); `results_table` renders it as markdown, the
table between the `<!-- robustness-runs -->` markers of docs/robustness_of_models.md. Paths are relative to the
repository root (the script runs there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

from hf_dynasr.data import build_processor, load_audio, load_speech_dataset
from hf_dynasr.data.augmentation import AugmentationConfig, Augmenter

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
SETS = ("demo_corpus", "heldout_engine", "telephone")  # the labels evaluate_model.py gives the three sets
MARKER = "<!-- robustness-runs -->"


def recipes() -> dict[str, dict | None]:
    """Recipe name -> augmentation options (None: no augmentation)."""
    out: dict[str, dict | None] = {"none": None, "all": {k: v for f in MIX.values() for k, v in f.items()}}
    for family, values in MIX.items():
        out[f"only_{family}"] = dict(values)
        out[f"no_{family}"] = {k: v for f, values in MIX.items() if f != family for k, v in values.items()}
    out["telephone_speed"] = {**MIX["telephone"], **MIX["speed"]}  # the demo's telephone with speed perturbation
    return out


def train(run_dir: str, augmentation: dict | None, seed: int, *, config: str, corpus: str, max_steps: int,
          workers: int, copies: int = 0) -> float:
    """Train one recipe into `run_dir` (its log beside it, RUN_DIR.log); returns the wall seconds it took. The
    recipe's augmentation replaces the config's (none: off); `copies` > 0 precomputes that many augmented copies
    (``--augmentation_copies``), 0 augments every read in `workers` DataLoader workers."""
    os.makedirs(os.path.dirname(run_dir) or ".", exist_ok=True)
    cmd = [sys.executable, "training/train.py", "--config", config, "--output_dir", run_dir, "--overwrite_output_dir",
           "--max_steps", str(max_steps), "--save_steps", "0", "--seed", str(seed),
           "--train_data", f"audiofolder:{corpus}", "--eval_data", f"audiofolder:{corpus}",
           "--max_eval_utterances", "20", "--augmentation", json.dumps(augmentation or {}),
           "--augmentation_copies", str(copies if augmentation else 0)]
    if augmentation and not copies:  # augmentation runs in DataLoader workers, on audio decoded there
        cmd += ["--data_pipeline", "on_the_fly", "--dataloader_num_workers", str(workers)]
    else:
        cmd += ["--data_pipeline", "auto", "--dataloader_num_workers", "0"]
    start = time.time()
    with open(run_dir + ".log", "w", encoding="utf-8") as log:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=log)
    return time.time() - start


def evaluate(run_dir: str, *, corpus: str, heldout: str, max_samples: int) -> dict:
    """CER per set and size of RUN_DIR/final on the in-domain test split, the held-out engine and telephone
    (evaluate_model.py's tables in RUN_DIR_eval/)."""
    sets = [f"audiofolder:{corpus}", f"audiofolder:{heldout}/heldout_engine", f"audiofolder:{heldout}/telephone"]
    out = run_dir + "_eval"  # beside the run: a training run folder refuses files no run wrote (a re-run would stop)
    subprocess.run([sys.executable, "scripts/evaluate_model.py", "--checkpoint", os.path.join(run_dir, "final"),
                    "--data", *sets, "--split", "test", "--max_samples", str(max_samples), "--latency_runs", "0",
                    "--output_dir", out], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(out, "results_sets.json"), encoding="utf-8") as f:
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


def describe_augmentation(run: dict) -> str:
    """"none", or the families' probabilities and where the audio was perturbed (per read, or K copies)."""
    augmentation = run.get("augmentation") or {}
    families = ", ".join(f"{key[:-5]} {value}" for key, value in augmentation.items() if key.endswith("_prob"))
    if not families:
        return "none"
    copies = run.get("copies") or 0
    return f"{families}; {copies} precomputed copies" if copies else f"{families}; per read"


def results_table(record: dict) -> list[str]:
    """Markdown: per run, CER % per size (small / medium / full) on the three sets, the held-out and telephone
    ratios of the full size, steps and the training loop's wall time (training_results.json's)."""
    lines = ["| run | augmentation | steps | in-domain | held-out engine | telephone | held-out / in-domain (full) | "
             "telephone / in-domain (full) | training loop |", "|---|---|---:|---|---|---|---:|---:|---:|"]
    for name, run in record.get("runs", {}).items():
        cer = run["cer"]
        if not all(s in cer for s in SETS):
            continue
        cells = [" / ".join(f"{100 * cer[s][size]:.1f}" for size in ("small", "medium", "full")) for s in SETS]
        ratios = [f"{cer[s]['full'] / cer['demo_corpus']['full']:.2f}x" for s in SETS[1:]]
        lines.append(f"| {name} | {describe_augmentation(run)} | {run['max_steps']} | {' | '.join(cells)} | "
                     f"{' | '.join(ratios)} | "
                     f"{run['train_wall_s']:.0f} s |")
    return lines


def replace_table(doc: str, lines: list[str]) -> None:
    """Put `lines` between the two MARKER lines of `doc` (written to a temporary file, then renamed)."""
    with open(doc, encoding="utf-8") as f:
        text = f.read()
    parts = text.split(MARKER)
    if len(parts) != 3:
        raise ValueError(f"{doc} needs exactly two '{MARKER}' lines around the run table; found {len(parts) - 1}")
    tmp = doc + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(parts[0] + MARKER + "\n" + "\n".join(lines) + "\n" + MARKER + parts[2])
    os.replace(tmp, doc)
