"""Batch-1 latency of every size on this machine, and the `latency_table.json` that `pick_subnet` reads.

    from hf_dynasr.evaluation.latency import latency_table
    latency_table("ckpt")   # measures every size, writes ckpt/latency_table.json
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import numpy as np
import torch

from hf_dynasr.evaluation.inference import by_cost, load_model_and_processor, size_costs, size_model, size_names
from hf_dynasr.json_io import write_json

LATENCY_TABLE_NAME = "latency_table.json"
_TABLE_KEYS = ("latency_ms", "feature_extraction_ms", "rtf", "num_parameters", "flops")


def measure_latency(model, feature_extractor, *, duration_s: float = 10.0, runs: int = 5, warmup: int = 1,
                    num_threads: int | None = None, seed: int = 0, subnet=None) -> dict:
    """Batch-1 latency of `model` on `duration_s` of audio: median model time, feature time, RTF.

    `rtf` = (features + model) / audio duration; `latency_ms` is the model forward only."""
    previous = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(int(num_threads))
    try:
        rate = feature_extractor.sampling_rate
        audio = np.random.default_rng(seed).standard_normal(int(duration_s * rate)).astype(np.float32) * 0.1
        feat_times, model_times = [], []
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            feats = feature_extractor(audio, sampling_rate=rate, return_tensors="pt", return_attention_mask=True)
            t1 = time.perf_counter()
            with torch.inference_mode():
                model(input_features=feats["input_features"], attention_mask=feats["attention_mask"], subnet=subnet)
            t2 = time.perf_counter()
            if i >= warmup:
                feat_times.append(t1 - t0)
                model_times.append(t2 - t1)
        latency, feat = statistics.median(model_times) * 1e3, statistics.median(feat_times) * 1e3
        return {"latency_ms": latency, "feature_extraction_ms": feat, "rtf": (latency + feat) / (duration_s * 1e3)}
    finally:
        torch.set_num_threads(previous)


def machine_info(num_threads: int | None = None) -> dict:
    """The CPU, thread count, torch version and platform that latencies were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "num_threads": int(num_threads or torch.get_num_threads()), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "platform": platform.platform()}


def latency_setup(duration_s: float, runs: int, num_threads: int) -> dict:
    """How `measure_latency` was called, as results files record it."""
    return {"batch_size": 1, "duration_s": duration_s, "runs": runs, "statistic": "median",
            "num_threads": num_threads}


def latency_table(model_or_dir, processor=None, *, subnets="all", duration_s: float = 10.0, runs: int = 5,
                  num_threads: int | None = None, save: bool | str = True) -> dict:
    """Batch-1 latency per size on this machine; saved as `latency_table.json` beside the checkpoint
    (`save=True`, a local directory) or at the path `save`. `hf_dynasr.pick_subnet` reads it."""
    model, processor, path = load_model_and_processor(model_or_dir, processor)
    sizes = {}
    for name in size_names(model, subnets):
        run, subnet_arg = size_model(model, name)
        sizes[name] = {**size_costs(model, name),
                       **measure_latency(run, processor.feature_extractor, duration_s=duration_s, runs=runs,
                                         num_threads=num_threads, subnet=subnet_arg)}
    table = {
        "checkpoint": path, "machine": machine_info(num_threads), "batch_size": 1,
        "duration_s": duration_s, "runs": runs, "statistic": "median",
        "sizes": {name: {k: row[k] for k in _TABLE_KEYS} for name, row in by_cost(sizes).items()},
    }
    if save:
        table["path"] = _save_table(table, save if isinstance(save, (str, os.PathLike)) else path)
    return table


def _save_table(table: dict, target) -> str:
    if target is None or not (os.path.isdir(target) or str(target).endswith(".json")):
        raise ValueError("latency_table(save=True) needs a local checkpoint directory; pass save='path.json'")
    if os.path.isdir(target):
        target = os.path.join(target, LATENCY_TABLE_NAME)
    write_json(target, table)
    return os.fspath(target)
