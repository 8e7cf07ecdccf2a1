"""scripts/reproduce.py's run matrix and report (hf_dynasr.evaluation.reproduction and reproduction_report; the
runs themselves are too long for the suite), and the warm-up/stable/decay schedule the demo uses."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_dynasr.evaluation.reproduction_report import write_report

ROOT = Path(__file__).resolve().parents[1]


def _run(config, seed, sizes, dmao=False, method="ortho_softmax"):
    return {"name": f"{config}_s{seed}", "config": config, "seed": seed, "method": method, "steps": 1000,
            "train_wall_time_s": 600.0, "num_processes": 1, "dmao": dmao, "test_utterances": 200,
            "sizes": {name: {"num_parameters": p, "flops": 2 * p, "wer": w, "cer": c} for name, (p, w, c) in sizes.items()}}


def _record():
    runs = [_run("baseline_small", s, {"full": (1.0e6, 0.90, 0.40 + 0.01 * s)}, method=None) for s in (0, 1)]
    runs += [_run("baseline_medium", s, {"full": (1.5e6, 0.88, 0.36 + 0.01 * s)}, method=None) for s in (0, 1)]
    runs += [_run("baseline_full", s, {"full": (2.0e6, 0.86, 0.34 + 0.01 * s)}, method=None) for s in (0, 1)]
    sizes = {"small": (1.0e6, 0.9, 0.50), "medium": (1.5e6, 0.9, 0.37), "full": (2.0e6, 0.86, 0.345)}
    runs.append(_run("stk_module", 0, sizes, method="simple_top_k"))
    good = {"small": (1.0e6, 0.9, 0.40), "medium": (1.5e6, 0.9, 0.36), "full": (2.0e6, 0.86, 0.34)}
    runs += [_run("ortho_flops_component", s, good) for s in (0, 1)]
    runs.append(_run("dmao_full", 0, {"full": (2.0e6, 0.80, 0.33)}, dmao=True, method=None))
    return {"command": "python scripts/reproduce.py", "commit": "abc1234", "dirty": False, "date": "today",
            "machine": {"cpu": "cpu", "cores": 2, "python": "3"}, "corpus": "data/demo_corpus", "parallel": 2,
            "threads_per_run": 1, "runs": runs}


def test_report_compares_each_size_with_its_baseline(tmp_path):
    doc = tmp_path / "reproduction.md"
    write_report(_record(), str(doc))
    text = doc.read_text()
    assert "at commit `abc1234`" in text and "python scripts/reproduce.py" in text
    # small: baseline mean 40.5 +- 0.5; STk 50.0 is +23.5 % worse, OrthoSoftmax 40.0 is -1.2 %
    assert "| individually trained (2) | 40.5 ± 0.5 | 36.5 ± 0.5 | 34.5 ± 0.5 |" in text
    assert "| stk_module (1) | 50.0 (+23.5 %) |" in text
    assert "| ortho_flops_component (2) | 40.0 (-1.2 %) |" in text
    assert "best method `ortho_flops_component` 40.0 % CER against 40.5 % individually trained (-1.2 %): " \
           "within the seed noise" in text
    assert "(best first): ortho_flops_component, stk_module" in text
    assert "`ortho_flops_component`, ranks 1 of 2 here: the claim holds" in text
    # DMAO against baseline_full with the same seed (0): WER 80 vs 86 -> -7.0 %
    assert "WER -7.0 %" in text and "CER -2.9 %" in text
    assert (tmp_path / "reproduction.png").stat().st_size > 1000


def test_run_matrix_and_unknown_run():
    out = subprocess.run([sys.executable, "scripts/reproduce.py", "--list"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0
    names = [line.split()[0] for line in out.stdout.splitlines()]
    assert {"baseline_small_s0", "baseline_small_s1", "ortho_flops_component_s0", "dmao_full_s0",
            "best_supernet_s1"} <= set(names)
    for name in names:  # every config of the matrix exists
        config = out.stdout.splitlines()[names.index(name)].split()[1]
        assert config == "best_supernet.yaml" or (ROOT / "training/configs/repro" / config).is_file()
    bad = subprocess.run([sys.executable, "scripts/reproduce.py", "--runs", "nope_s0", "--report_only"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown run(s) ['nope_s0']; available: " in bad.stderr


def test_warmup_stable_decay_schedule():
    from hf_dynasr.trainer.schedule import build_scheduler

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=1.0)
    sched = build_scheduler(opt, "warmup_stable_decay", 100, warmup_fraction=0.1, decay_fraction=0.3)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5)
    assert all(lr == pytest.approx(1.0) for lr in lrs[10:70])  # the stable phase holds the peak
    assert lrs[85] == pytest.approx(0.5, abs=0.02) and lrs[-1] < 0.05
    with pytest.raises(ValueError, match="decay_fraction <= 1 - warmup_fraction"):
        build_scheduler(opt, "warmup_stable_decay", 100, warmup_fraction=0.5, decay_fraction=0.6)


def test_report_only_writes_json(tmp_path):
    results, doc = tmp_path / "r.json", tmp_path / "d.md"
    out = subprocess.run([sys.executable, "scripts/reproduce.py", "--report_only", "--output_dir", str(tmp_path / "none"),
                          "--results", str(results), "--doc", str(doc)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(results.read_text())["runs"] == [] and "not enough finished runs" in doc.read_text()


def test_report_only_keeps_recorded_runs_whose_folders_are_gone(tmp_path):
    """Rebuilding the report on a machine without runs/repro must not drop what the results file recorded."""
    results, doc = tmp_path / "r.json", tmp_path / "d.md"
    results.write_text(json.dumps(_record()))
    out = subprocess.run([sys.executable, "scripts/reproduce.py", "--report_only", "--output_dir", str(tmp_path / "none"),
                          "--corpus", str(tmp_path / "no_corpus"), "--results", str(results), "--doc", str(doc)],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    runs = json.loads(results.read_text())["runs"]
    assert sorted(r["name"] for r in runs) == sorted(r["name"] for r in _record()["runs"])
    assert all(r["recorded"]["commit"] == "abc1234" and r["recorded"]["machine"]["cpu"] == "cpu" for r in runs)
    assert "Runs recorded at commit `abc1234` (today) on cpu, 2 cores, 2 runs at a time" in doc.read_text()
