"""The DMAO architecture plot (`dynasr-plot-architecture`, scripts/plot_architecture.py): before / after /
difference heatmaps and a markdown summary."""

import json
import os

import pytest
from conftest import REPO, train_in_process

from hf_dynasr.dmao.cli import plot_architecture
from hf_dynasr.dmao.report import unit_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _block(ffn1, mhsa, cgmlp, ffn2):
    return {"ffn1": ffn1 * 32, "mhsa": mhsa, "cgmlp": cgmlp * 24, "ffn2": ffn2 * 32}


def _events():
    """Two E-Branchformer events over 3 blocks (FFN chunks of 32, cgMLP chunks of 24)."""
    start = [_block(4, 4, 4, 4) for _ in range(3)]
    middle = [_block(4, 4, 0, 4), _block(5, 4, 4, 2), _block(4, 6, 5, 4)]  # b0 loses its cgMLP branch
    end = [_block(4, 3, 0, 4), _block(5, 4, 4, 2), _block(4, 7, 5, 4)]
    sources = {"b1.ffn1": ["b1.ffn1.c0"] * 5, "b2.cgmlp": ["b2.cgmlp.c0"] * 5}  # 160 / 5 = 32, 120 / 5 = 24
    return [
        {"step": 10, "event": 1, "before": start, "after": middle, "dropped": ["b0.cgmlp.c0"] * 6,
         "grown": ["b1.ffn1.c0"] * 5, "sources": sources, "params_before": 1000, "params_after": 1010},
        {"step": 20, "event": 2, "before": middle, "after": end, "dropped": ["b0.mhsa.h0"], "grown": ["b2.mhsa.h1"],
         "sources": {}, "params_before": 1010, "params_after": 1012},
    ]


def _write_events(path, events):
    path.write_text("".join(json.dumps(e) + "\n" for e in events))


def _assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    assert os.path.getsize(path) > 5_000


def test_synthetic_run_dir_with_config(tmp_path):
    _write_events(tmp_path / "dmao_events.jsonl", _events())
    (tmp_path / "checkpoints" / "step_10").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step_20").mkdir(parents=True)
    config = {"block_type": "ebranchformer", "ffn_chunk_size": 32, "cgmlp_chunk_size": 24}
    (tmp_path / "checkpoints" / "step_10" / "config.json").write_text(json.dumps({**config, "ffn_chunk_size": 1}))
    (tmp_path / "checkpoints" / "step_20" / "config.json").write_text(json.dumps(config))  # the latest wins
    out = plot_architecture(["--run_dir", str(tmp_path)])
    assert out["png"] == str(tmp_path / "dmao_architecture.png") and out["unit_origin"] == "config"
    assert out["config"].endswith(os.path.join("step_20", "config.json"))
    _assert_png(out["png"])
    assert out["modules"] == ["ffn1", "mhsa", "cgmlp", "ffn2"]
    assert out["before"] == [[4, 4, 4], [4, 4, 4], [4, 4, 4], [4, 4, 4]]
    assert out["after"] == [[4, 5, 4], [3, 4, 7], [0, 4, 5], [4, 2, 4]]  # first "before" -> last "after"
    summary = (tmp_path / "dmao_architecture.md").read_text()
    assert "2 event(s): step 10 (dropped 6, grew 5), step 20 (dropped 1, grew 1)" in summary
    assert "Parameters: 1,000 \u2192 1,012 (+12)" in summary
    assert "- **b0**: shrank mhsa \u22121 (4 \u2192 3); removed cgmlp (4 \u2192 0)" in summary
    assert "- **b1**: grew ffn1 +1 (4 \u2192 5); shrank ffn2 \u22122 (4 \u2192 2)" in summary
    assert "- **b2**: grew mhsa +3 (4 \u2192 7), cgmlp +1 (4 \u2192 5)" in summary
    assert "- cgmlp: shrank \u22123 (12 \u2192 9 units)" in summary
    assert "| cgmlp | 4 \u2192 0 | 4 | 4 \u2192 5 | 12 \u2192 9 (\u22123) |" in summary


def test_events_file_without_config(tmp_path, capsys):
    events = tmp_path / "events.jsonl"
    _write_events(events, _events())
    out = plot_architecture(["--events", str(events), "--output", str(tmp_path / "figs" / "arch.png")])
    assert out["unit_origin"] == "events" and out["unit_sizes"] == {"mhsa": 1, "ffn1": 32, "cgmlp": 24, "ffn2": 32}
    _assert_png(tmp_path / "figs" / "arch.png")
    assert "inferred from the events" in (tmp_path / "figs" / "arch.md").read_text()
    assert "# DMAO architecture change: events.jsonl" in capsys.readouterr().out
    # without "sources" either, sizes are raw (hidden units / heads / channels)
    bare = [{k: v for k, v in e.items() if k != "sources"} for e in _events()]
    _write_events(events, bare)
    out = plot_architecture(["--events", str(events)])
    assert out["unit_origin"] == "raw" and out["before"][0] == [128, 128, 128]
    _assert_png(tmp_path / "events_architecture.png")


def test_bad_input_gets_clear_errors(tmp_path):
    with pytest.raises(SystemExit, match="no DMAO events file"):
        plot_architecture(["--run_dir", str(tmp_path)])
    (tmp_path / "dmao_events.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(SystemExit, match="lacks \\['after', 'before'\\]"):
        plot_architecture(["--run_dir", str(tmp_path)])


def test_real_tiny_dmao_run(smoke_corpus, tmp_path):
    """train.py with DMAO (conv chunks) writes dmao_events.jsonl; the plot reads it and final/config.json."""
    model = {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 96,
             "conv_kernel_size": 15, "frontend_type": "conv2d4x", "frontend_channels": 16, "hidden_dropout": 0.0,
             "activation_dropout": 0.0, "attention_dropout": 0.0, "reference_duration_s": 2.0,
             "conv_granularity": "chunk"}
    run = tmp_path / "run"
    train_in_process(["--config", os.path.join(REPO, "training", "configs", "smoke.yaml"), "--output_dir", run,
               "--train_data", f"audiofolder:{smoke_corpus}", "--eval_data", f"audiofolder:{smoke_corpus}",
               "--max_steps", "6", "--save_steps", "0", "--max_eval_utterances", "2", "--max_batch_seconds", "8",
               "--dmao", json.dumps({"events": [0.3], "update_every": 1}), "--model", json.dumps(model)])
    out = plot_architecture(["--run_dir", str(run)])
    assert out["config"] == str(run / "final" / "config.json") and out["unit_origin"] == "config"
    assert out["unit_sizes"] == {"mhsa": 1, "ffn1": 24, "conv": 12, "ffn2": 24}
    final = json.loads((run / "final" / "config.json").read_text())["architecture_spec"]
    assert out["after"] == unit_table(final, out["modules"], out["unit_sizes"])
    assert out["before"] != out["after"]
    _assert_png(out["png"])
    assert "## Per block" in (run / "dmao_architecture.md").read_text()
