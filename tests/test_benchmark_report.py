"""scripts/benchmark.py's headline ratios and docs page (hf_dynasr.evaluation.benchmark_report), from suite
result files, and its side-by-side timing (hf_dynasr.evaluation.timing); the suites themselves are timed runs and
live outside the test suite."""

import json
from pathlib import Path

from hf_dynasr.evaluation import benchmark_report as report
from hf_dynasr.evaluation.timing import timeit_side_by_side


def _write(results_dir, suite, results):
    machine = {"commit": "abc1234", "torch": "2", "threads": 2, "cpu": "x", "date": "today"}
    (results_dir / f"{suite}.json").write_text(json.dumps({"suite": suite, "machine": machine, "results": results}))


def test_headline_ratios_cover_every_suite(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    _write(results, "supernet", {"stage2_ratio_vs_sum": 0.98, "stage1_ratio_vs_2x_full": 1.2})
    small = {"b1_ms": 10.0, "b1_masked_ms": 11.0, "b1_speedup_over_flops_ratio": 0.8, "b8_speedup_over_flops_ratio": 1.0}
    _write(results, "inference", {"component": {"full": {"b1_ms": 15.0}, "small": small},
                                  "module": {"full": {"b1_ms": 15.0}, "small": dict(small, b1_masked_ms=10.2)}})
    _write(results, "encoder", {"10M": {"ratio_conv2d4x_vs_parakeet_b1": 0.9, "ratio_conv2d4x_vs_parakeet_b8": 1.1}})
    _write(results, "loading", {"small_load_ratio": 1.1})
    _write(results, "training", {"share_of_peak": 0.5, "data_share_of_step": 0.01})
    _write(results, "dmao", {"dmao_share": 0.003})
    rows = report.headline_ratios(str(results))
    assert rows["stage2_step_vs_sum_of_standalone"] == {"value": 0.98, "goal": "<= 1.10", "met": True}
    assert rows["stage1_step_vs_2x_full"]["met"] is False
    assert rows["smallest_speedup_over_flops_ratio_component_b1"] == {"value": 0.8, "goal": ">= 0.9", "met": False}
    assert rows["masked_vs_extracted_component_b1"]["value"] == 1.1
    assert rows["masked_vs_extracted_module_b1"] == {"value": 1.02, "goal": "<= 1.05", "met": True}
    assert rows["ours_vs_parakeet_10M_b8"]["met"] is False
    assert all(set(r) == {"value", "goal", "met"} for r in rows.values())  # nothing else leaks into the table
    assert len(rows) == 14
    _write(results, "speed", rows)
    page = Path(report.write_docs(str(results), ["supernet", "inference", "encoder", "loading", "training", "dmao"])
                ).read_text()
    assert page == (tmp_path / "docs" / "benchmarks.md").read_text()
    assert "| stage1_step_vs_2x_full | 1.2 | <= 1.10 | **no** |" in page
    assert "## supernet" in page and "## speed" not in page


def test_side_by_side_timing_interleaves_the_variants(tmp_path):
    """Ratios come from variants timed in turn within each repeat, so host drift hits them alike."""
    calls = []
    ms = timeit_side_by_side({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3,
                                   warmup=1, min_repeat_ms=0.0)
    assert set(ms) == {"a", "b"} and all(v >= 0 for v in ms.values())
    assert calls[4:] == ["a", "b"] * 3  # after warm-up and calibration (2 calls each): round-robin repeats
