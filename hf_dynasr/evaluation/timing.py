"""Wall-clock timing for the benchmarks (scripts/benchmark.py): medians of repeats, variants timed side by side,
and the machine's fp32 matmul throughput. Tests never assert on timings; they check how these functions time."""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable

import torch


def timeit(fn: Callable[[], object], repeats: int, warmup: int = 1, min_repeat_ms: float = 250.0) -> float:
    """Median wall time of one call in milliseconds (see `timeit_side_by_side`)."""
    return timeit_side_by_side({"fn": fn}, repeats, warmup, min_repeat_ms)["fn"]


def timeit_side_by_side(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                        min_repeat_ms: float = 250.0) -> dict[str, float]:
    """Median wall time of one call of each function, in milliseconds, measured round-robin.

    Two things made ratios of sequential timings swing by 10-20 % on a shared 2-core VM: a short forward timed
    once per repeat catches the scheduler's noise, and a slow phase of the host hits whichever variant runs then.
    So each repeat calls a function as many times as fill `min_repeat_ms` (their mean counts), and every repeat
    times all functions in turn, so drift hits them alike.
    """
    calls = {name: _calls_per_repeat(fn, warmup, min_repeat_ms) for name, fn in fns.items()}
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            times[name].append((time.perf_counter() - start) * 1000 / calls[name])
    return {name: statistics.median(t) for name, t in times.items()}


def _calls_per_repeat(fn: Callable[[], object], warmup: int, min_repeat_ms: float) -> int:
    """Warm `fn` up, then time one call: how many calls fill `min_repeat_ms` (at least one)."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    fn()
    return max(1, math.ceil(min_repeat_ms / max(1e-3, (time.perf_counter() - start) * 1000)))


def matmul_peak_gflops(size: int = 1024, repeats: int = 10) -> float:
    """fp32 matmul throughput of this machine right now (the roofline the training GFLOP/s is compared to)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    ms = timeit(lambda: a @ b, repeats, warmup=3)
    return 2 * size**3 / (ms / 1000) / 1e9
