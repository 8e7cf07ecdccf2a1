"""Honest outputs: what a run, an evaluation, an export and the report commands write, and what they say.

A resume that changes --max_steps is refused naming both values (the schedule is a function of max_steps);
training_results.json keeps every segment's history and the --eval_steps scores; evaluate writes eval/ beside
final/ with the training curve; the LM line on the Pareto plot; DMAO's parameter change per event within its
stated tolerance; model cards without --repo load their own folder, carry language/metrics and a readable
training table; reproduce --report_only writes an untracked report unless --write_docs; the demo's help.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, corpus_subset, train_in_process
from huggingface_hub import ModelCard
from tiny_supernet import supernet  # noqa: F401  (a fixture)
from transformers import AutoModelForCTC

from hf_dynasr.dmao.cli import plot_architecture
from hf_dynasr.evaluation import plot_pareto
from hf_dynasr.evaluation.cli import default_output_dir, evaluate_main, reproduce_main
from hf_dynasr.export import export_subnets
from hf_dynasr.export.model_card import render_model_card
from hf_dynasr.models.dynasr import DynaSRConfig

SMOKE = os.path.join(REPO, "training", "configs", "smoke.yaml")


@pytest.fixture(scope="module")
def corpus(smoke_corpus, tmp_path_factory):
    """12 training, 2 dev and 2 test utterances of the smoke corpus."""
    return corpus_subset(smoke_corpus, tmp_path_factory.mktemp("outputs_corpus"), {"train": 12, "dev": 2, "test": 2})


@pytest.fixture(scope="module")
def dmao_run(corpus, tmp_path_factory):
    """8 updates of the smoke model with one DMAO event at step 4, dev scores at step 4, checkpoints at 4 and 8."""
    out = tmp_path_factory.mktemp("outputs_run") / "run"
    train_in_process(_args(corpus, out, 8))
    return out


def _args(corpus, out, steps: int, *extra) -> list:
    return ["--config", SMOKE, "--train_data", f"audiofolder:{corpus}", "--eval_data", f"audiofolder:{corpus}",
            "--output_dir", out, "--max_steps", steps, "--save_steps", "4", "--eval_steps", "4", "--logging_steps",
            "2", "--max_batch_seconds", "8", "--max_eval_utterances", "2",
            "--dmao", json.dumps({"events": [0.5], "rho": 0.15}), *extra]


def test_history_keeps_dev_scores_and_evaluate_writes_the_curve_beside_final(dmao_run, corpus):
    results = json.loads((dmao_run / "final" / "training_results.json").read_text())
    steps = [r["step"] for r in results["history"]]
    assert steps == [2, 4, 6, 8]
    at4 = results["history"][1]
    assert "loss/full" in at4 and 0 <= at4["eval/full/cer"] <= 1.5 and "eval/full/wer" in at4  # on step 4's record
    assert not any(k.startswith("eval/") for r in results["history"] if r["step"] != 4 for k in r)
    assert "rank_weight_checksums" in results  # the run's own record keeps its checks
    assert default_output_dir(str(dmao_run / "final")) == str(dmao_run / "eval")
    assert evaluate_main(["--checkpoint", str(dmao_run / "final"), "--data", f"audiofolder:{corpus}",
                          "--latency_runs", "0", "--max_samples", "2"]) == 0
    written = {p.name for p in (dmao_run / "eval").iterdir()}
    assert {"results.json", "results.md", "pareto.png", "training_curve.png"} <= written
    assert not (dmao_run / "final" / "results.json").exists()  # the checkpoint folder is left as trained
    assert (dmao_run / "eval" / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_with_another_max_steps_is_refused_naming_both_values(dmao_run, corpus, tmp_path):
    """The schedule is a function of max_steps: a larger --max_steps would re-stretch it mid-run."""
    out = tmp_path / "run"
    shutil.copytree(dmao_run, out)
    shutil.rmtree(out / "final")
    before = (out / "training_args.json").read_bytes()
    with pytest.raises(SystemExit) as exc:
        train_in_process(_args(corpus, out, 12, "--resume_from_checkpoint", "latest"))
    message = str(exc.value.code)
    assert "--max_steps is 12" in message and "trained with 8" in message and "another --output_dir" in message
    assert (out / "training_args.json").read_bytes() == before and not (out / "final").exists()


def test_dmao_reports_the_parameter_change_within_its_stated_tolerance(dmao_run):
    events = [json.loads(line) for line in (dmao_run / "dmao_events.jsonl").read_text().splitlines()]
    assert len(events) == 1
    event = events[0]
    change = event["params_after"] - event["params_before"]
    assert change == event["param_change"] == event["added_cost"] - event["removed_cost"]
    assert 0 <= change < event["budget_tolerance"]
    summary = plot_architecture(["--run_dir", str(dmao_run)])["summary"]
    said = f"event 1 at step 4: {event['params_before']:,} \u2192 {event['params_after']:,} parameters"
    tolerance = f"the budget is fixed up to one unit: added \u2212 removed < {event['budget_tolerance']:,}"
    assert said in summary and tolerance in summary
    # the run's results and the card trained from them say it too
    results = json.loads((dmao_run / "final" / "training_results.json").read_text())
    assert len(results["dmao_events"]) == 1 and results["dmao_events"][0].startswith(said)
    card = render_model_card(DynaSRConfig.from_pretrained(dmao_run / "final"), repo_id="org/m", training=results)
    assert f"| DMAO events | {said}" in card.text and tolerance in card.text


def test_pareto_plot_shows_the_lm_results(tmp_path):
    sizes = {"small": {"num_parameters": 1e6, "flops": 1e9, "wer": 0.4},
             "full": {"num_parameters": 2e6, "flops": 2e9, "wer": 0.3}}
    with_lm = {"sizes": {n: {**s, "lm_wer": s["wer"] - 0.1} for n, s in sizes.items()}}
    greedy, lm = plot_pareto({"sizes": sizes}, tmp_path / "g.png"), plot_pareto(with_lm, tmp_path / "lm.png")
    assert open(greedy, "rb").read() != open(lm, "rb").read()


TRAINING_RESULTS = {"method": "ortho_softmax", "steps": 2800, "train_data": "hub:openslr/librispeech_asr",
                    "dmao": None, "wall_time_s": 900.0, "num_processes": 1, "mixed_precision": "no",
                    "rank_weight_checksums": [123.4], "subnet_choices": {"batches": 3, "checks": 1},
                    "history": [{"step": 1, "loss/full": 3.0}], "eval": {"full": {"wer": 0.5}}}


def test_cards_without_repo_load_their_folder_and_read_cleanly(supernet, tmp_path):  # noqa: F811
    path, _ = supernet
    folders = export_subnets(path, tmp_path / "export", training=TRAINING_RESULTS)
    for name, folder in folders.items():
        card = ModelCard.load(os.path.join(folder, "README.md"))
        text, data = card.text, card.data.to_dict()
        assert "<your-org>" not in str(card) and "<model>" not in str(card) and "huggingface.co/" not in text, name
        assert data["language"] == "en" and data["datasets"] == ["openslr/librispeech_asr"]
        assert "| Training time | 15.0 min |" in text and "| Updates | 2,800 |" in text
        for raw in ("rank_weight_checksums", "subnet_choices", "None", '{"', "loss/full"):
            assert raw not in text, (name, raw)
        assert f'"{folder}"' in text  # the snippets load this very folder
    small = open(os.path.join(folders["small"], "README.md")).read()
    assert f"`{folders['supernet']}`" in small  # the supernet named by its folder, not a broken Hub link
    assert AutoModelForCTC.from_pretrained(folders["small"]).num_parameters() > 0


def test_card_metrics_follow_the_results(supernet, tmp_path):  # noqa: F811
    path, _ = supernet
    config = DynaSRConfig.from_pretrained(path)
    results = {"dataset": "audiofolder:data/x", "split": "test", "sizes": {"small": {"wer": 0.5, "cer": 0.2}}}
    data = render_model_card(config, size="small", results=results, repo_id="org/m").data.to_dict()
    assert data["metrics"] == ["cer", "wer"] and "datasets" not in data  # a local corpus has no Hub id
    assert "metrics" not in render_model_card(config, repo_id="org/m").data.to_dict()


def test_report_only_writes_an_untracked_report_and_keeps_the_recorded_corpus(tmp_path, monkeypatch):
    tracked = tmp_path / "benchmarks" / "results" / "reproduction.json"
    tracked.parent.mkdir(parents=True)
    shutil.copy(os.path.join(REPO, "benchmarks", "results", "reproduction.json"), tracked)
    recorded = json.loads(tracked.read_text())
    original = tracked.read_bytes()
    monkeypatch.chdir(tmp_path)
    assert reproduce_main(["--report_only"]) == 0
    report = json.loads((tmp_path / "runs" / "repro" / "report" / "reproduction.json").read_text())
    assert (tmp_path / "runs" / "repro" / "report" / "reproduction.md").is_file()
    assert tracked.read_bytes() == original and not (tmp_path / "docs").exists()
    assert report["corpus"] == recorded["corpus"] and len(report["runs"]) == len(recorded["runs"])
    assert reproduce_main(["--report_only", "--write_docs"]) == 0
    assert (tmp_path / "docs" / "reproduction.md").is_file()
    assert json.loads(tracked.read_text())["corpus"] == recorded["corpus"]


def test_long_commands_say_how_long_and_the_quick_demo_what_to_expect():
    demo = subprocess.run(["bash", os.path.join(REPO, "scripts", "demo.sh"), "--help"], capture_output=True,
                          text=True, timeout=60)
    assert demo.returncode == 0 and "About 15 minutes" in demo.stdout and "100 % WER" in demo.stdout
    assert "[setup]" not in demo.stdout + demo.stderr  # --help installs nothing
    reproduce = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "reproduce.py"), "--help"],
                               capture_output=True, text=True, timeout=120)
    assert reproduce.returncode == 0 and "70 minutes" in reproduce.stdout and "--write_docs" in reproduce.stdout
