"""Evaluation, per-size export, model cards and Hub push (fake server); lazy loading is in test_lazy_load.py.

Real tiny models and real safetensors files; the Hub is a stdlib fake on 127.0.0.1 (tests/fake_hub.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fake_hub import FakeHub
from hf_dynasr.evaluation.cli import evaluate_main
from hf_dynasr.export.cli import push_main
from tiny_supernet import supernet  # noqa: F401  (a fixture)
from tiny_supernet import tiny_features as _features

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hf_TESTsecretTOKEN0123456789abcdef"


# --- fixtures (module scope: the expensive artefacts are built once) -------------------------------------


@pytest.fixture(scope="module")
def tiny_dataset():
    import datasets

    rng = np.random.default_rng(0)
    audio = [(rng.standard_normal(int(16000 * s)) * 0.1).astype(np.float32) for s in (0.6, 1.0, 0.8)]
    return datasets.Dataset.from_dict({"audio": audio, "text": ["hello world", "a cat", "yes"]})


@pytest.fixture(scope="module")
def results(supernet, tiny_dataset, tmp_path_factory):
    from hf_dynasr.evaluation import evaluate_checkpoint
    from hf_dynasr.json_io import write_json

    path, _ = supernet
    res = evaluate_checkpoint(path, tiny_dataset, batch_size=2, latency_runs=1, latency_duration_s=1.0,
                              dataset_name="tiny-test", split="test")
    file = tmp_path_factory.mktemp("eval") / "results.json"
    write_json(file, res)
    return res, file


@pytest.fixture(scope="module")
def export(supernet, results, tmp_path_factory):
    from hf_dynasr.export import export_subnets

    path, _ = supernet
    out = tmp_path_factory.mktemp("export") / "out"
    training = {"method": "dynamic encoder size, joint training", "schedule": "OCLR, 10 epochs",
                "data": "tiny synthetic", "hub_token": TOKEN, "learning_rate": 1e-3}
    folders = export_subnets(path, out, results=[results[1]], training=training)  # ONNX: tests/test_onnx_export.py
    return out, folders


# --- evaluation ------------------------------------------------------------------------------------------


def test_evaluate_checkpoint_every_size(supernet, results, tmp_path):
    from hf_dynasr.evaluation import plot_pareto, results_markdown, samples_markdown

    _, model = supernet
    res, file = results
    assert list(res["sizes"]) == ["small", "mid", "full"]  # ordered by parameters
    assert json.loads(file.read_text())["num_utterances"] == 3
    for name, row in res["sizes"].items():
        assert 0 <= row["wer"] < float("inf") and 0 <= row["cer"] < float("inf")
        assert row["num_words"] == 5 and row["hits"] + row["substitutions"] + row["deletions"] == 5
        assert row["latency_ms"] > 0 and row["rtf"] > 0
        if name != "full":
            assert row["num_parameters"] == model.config.subnets[name]["num_parameters"]
            assert row["flops"] == model.config.subnets[name]["flops"]
    assert res["sizes"]["full"]["num_parameters"] > res["sizes"]["mid"]["num_parameters"]
    table = results_markdown(res)
    assert "| small |" in table and "| full |" in table
    samples = samples_markdown(res, num_samples=2).splitlines()
    first = res["sizes"]["small"]["examples"][0]
    shown = f"`{first['prediction']}`" if first["prediction"] else "(empty)"
    assert samples[2] == f"- reference: `{first['reference']}`" and samples[3] == f"  - small: {shown}"
    assert sum(line.startswith("- reference") for line in samples) == 2 and len(samples) == 2 + 2 * 4
    png = plot_pareto(res, tmp_path / "p.png", baselines={"base-s": {"num_parameters": 70000, "flops": 5e7,
                                                                     "wer": 1.0}})
    assert Path(png).stat().st_size > 1000


def test_wer_cer_and_local_evaluate_module():
    import evaluate

    from hf_dynasr.evaluation import wer_cer

    refs, hyps = ["Hello, World!", "a b c d"], ["hello word", "a b d"]
    ours = wer_cer(refs, hyps)
    assert ours["wer"] == pytest.approx(2 / 6) and ours["substitutions"] == 1 and ours["deletions"] == 1
    metric = evaluate.load(str(REPO_ROOT / "hf_dynasr" / "evaluation" / "wer_metric"))
    got = metric.compute(predictions=hyps, references=refs)
    assert set(got) == {"wer", "cer", "substitutions", "deletions", "insertions", "hits"}
    assert got["wer"] == pytest.approx(ours["wer"]) and got["cer"] == pytest.approx(ours["cer"])
    assert got["hits"] == 4 and got["insertions"] == 0


def test_training_time_and_checkpoint_evaluation_score_alike(supernet, monkeypatch):
    """Training-time evaluation, evaluate_checkpoint and the local evaluate metric give the same WER/CER on the
    same references and hypotheses: punctuation and case normalised, an empty reference counted."""
    import datasets
    import evaluate

    from hf_dynasr.evaluation import checkpoint, evaluate_checkpoint, evaluate_sizes, sizes, wer_cer

    path, model = supernet
    refs = ["Hello, World!", "", "It's a CAT.", "a well-known Café"]
    hyps = ["hello word", "uh oh", "its a cat", "a well known cafe"]
    monkeypatch.setattr(sizes, "transcribe", lambda *args, **kwargs: (list(refs), list(hyps)))
    monkeypatch.setattr(checkpoint, "transcribe_batch", lambda *args, **kwargs: list(hyps))
    during_training = evaluate_sizes(model, datasets.Dataset.from_dict({"x": [0] * len(refs)}), None, None)
    audio = [np.zeros(16000, dtype=np.float32)] * len(refs)
    evaluated = evaluate_checkpoint(path, datasets.Dataset.from_dict({"audio": audio, "text": refs}),
                                    batch_size=len(refs), latency=False)
    metric = evaluate.load(str(REPO_ROOT / "hf_dynasr" / "evaluation" / "wer_metric"))
    local = metric.compute(predictions=hyps, references=refs)
    want = wer_cer(refs, hyps)
    assert want["wer"] == pytest.approx(4 / 9) and want["insertions"] == 2  # "uh oh" against nothing
    assert set(during_training) == set(evaluated["sizes"]) == {"small", "mid", "full"}
    for name in ("small", "mid", "full"):
        for scores in (during_training[name], evaluated["sizes"][name], local):
            assert scores["wer"] == pytest.approx(want["wer"]) and scores["cer"] == pytest.approx(want["cer"])
        assert during_training[name]["utterances"] == len(refs)


def test_latency_table_and_script_guard(supernet, tmp_path):
    from hf_dynasr.evaluation import latency_table

    path, _ = supernet
    target = tmp_path / "lt.json"
    table = latency_table(path, runs=1, duration_s=0.5, save=str(target))
    assert set(json.loads(target.read_text())["sizes"]) == {"small", "mid", "full"}
    assert all(row["latency_ms"] > 0 for row in table["sizes"].values())
    assert evaluate_main(["--checkpoint", str(path)]) == 2  # needs --data or --latency-table


# --- export ----------------------------------------------------------------------------------------------


def test_export_layout_and_round_trip(supernet, export):
    import hf_dynasr  # noqa: F401  (registers the Auto classes)
    from transformers import AutoModelForCTC, pipeline

    _, model = supernet
    out, folders = export
    assert set(folders) == {"supernet", "small", "mid"}
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    x, mask = _features()
    audio = (np.random.default_rng(1).standard_normal(12000) * 0.1).astype(np.float32)
    for name in ("small", "mid"):
        folder = out / name
        for f in ("config.json", "model.safetensors", "README.md", "processor_config.json",
                  "vocab.json", "modeling_dynasr.py", "loading_dynasr.py", "pareto.png"):
            assert (folder / f).is_file(), f
        loaded = AutoModelForCTC.from_pretrained(folder)
        assert loaded.config.active_subnet == name and not loaded.subnet_heads
        assert loaded.config.architecture_spec == model.component_index.spec_for(
            model.config, model.config.subnets[name]["components"])
        assert sum(p.numel() for p in loaded.parameters()) == model.config.subnets[name]["num_parameters"]
        with torch.no_grad():
            want = model(x, mask, subnet=name).logits
            got = loaded(x, mask).logits
        assert (got - want).abs().max() <= 1e-4
        asr = pipeline("automatic-speech-recognition", model=str(folder))
        assert isinstance(asr(audio)["text"], str)
    sup = AutoModelForCTC.from_pretrained(out / "supernet")
    assert set(sup.subnet_heads) == {"small", "mid"}


def test_export_remote_code_fresh_process(supernet, export, tmp_path):
    """The exported folders load with trust_remote_code in a process that never imports hf_dynasr."""
    _, model = supernet
    out, _ = export
    x, mask = _features()
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "mask.npy", mask.numpy())
    code = textwrap.dedent(f"""
        import json, sys
        import numpy as np, torch
        from transformers import AutoModelForCTC
        x, mask = torch.from_numpy(np.load("x.npy")), torch.from_numpy(np.load("mask.npy"))
        out = {{}}
        for key, path, kw in [("small", r"{out / 'small'}", {{}}), ("mid", r"{out / 'mid'}", {{}}),
                              ("lazy-small", r"{out / 'supernet'}", {{"subnet": "small"}})]:
            m = AutoModelForCTC.from_pretrained(path, trust_remote_code=True, **kw)
            with torch.no_grad():
                np.save(key + ".npy", m(x, mask).logits.numpy())
            out[key] = type(m).__module__
        out["hf_dynasr_imported"] = "hf_dynasr" in sys.modules
        print(json.dumps(out))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info.pop("hf_dynasr_imported") is False
    assert all(mod.startswith("transformers_modules") for mod in info.values()), info
    with torch.no_grad():
        for key, name in (("small", "small"), ("mid", "mid"), ("lazy-small", "small")):
            want = model(x, mask, subnet=name).logits.numpy()
            assert np.abs(np.load(tmp_path / f"{key}.npy") - want).max() <= 1e-4


def test_export_refuses_non_empty_output(supernet, tmp_path):
    from hf_dynasr.export import export_subnets

    path, _ = supernet
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_subnets(path, out, sizes=["small"], include_supernet=False)
    folders = export_subnets(path, out, sizes="small", include_supernet=False, overwrite=True)
    assert set(folders) == {"small"} and not (out / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # temp and backup folders are gone
    with pytest.raises(ValueError, match=r"unknown size.*'tiny'.*available: (mid, small|small, mid)"):
        export_subnets(path, tmp_path / "other", sizes=["tiny"])


# --- model cards ------------------------------------------------------------------------------------------


def test_model_cards(export):
    from huggingface_hub import ModelCard

    out, _ = export
    card = ModelCard.load(out / "supernet" / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0" and data["pipeline_tag"] == "automatic-speech-recognition"
    assert set(data["tags"]) >= {"hf_dynasr", "ctc", "conformer", "supernet", "automatic-speech-recognition"}
    metrics = data["model-index"][0]["results"][0]["metrics"]
    for size in ("small", "mid", "full"):
        assert {m["type"] for m in metrics if m["config"] == size} == {"wer", "cer"}
    assert data["model-index"][0]["results"][0]["dataset"]["split"] == "test"
    text = card.text
    assert 'subnet="small"' in text and 'pipeline("automatic-speech-recognition"' in text
    assert "![WER vs parameters" in text and (out / "supernet" / "pareto.png").is_file()
    assert "OCLR, 10 epochs" in text and "b0.ffn1.c0" in text
    for size in ("small", "mid"):
        size_card = ModelCard.load(out / size / "README.md")
        entries = size_card.data.to_dict()["model-index"][0]["results"][0]["metrics"]
        assert {(m["type"], m["config"]) for m in entries} == {("wer", size), ("cer", size)}
    for folder in out.iterdir():
        for file in folder.rglob("*") if folder.is_dir() else [folder]:
            if file.is_file() and file.suffix in (".md", ".json"):
                assert TOKEN not in file.read_text(), file


# --- push -------------------------------------------------------------------------------------------------


def test_push_dry_run_lists_files_without_network(export, capsys):
    from hf_dynasr.export.hub import push_to_hub

    out, _ = export
    with FakeHub() as hub:
        report = push_to_hub(out, "org/asr", dry_run=True, token=TOKEN, endpoint=hub.url)
        assert push_main(["--checkpoint", str(out), "--repo", "org/asr", "--dry-run",
                          "--token", TOKEN, "--endpoint", hub.url]) == 0
        assert hub.requests == []
    assert [(r["repo_id"], r["revision"]) for r in report] == [("org/asr", None), ("org/asr-mid", None),
                                                               ("org/asr-small", None)]
    files = dict(report[2]["files"])
    assert files["model.safetensors"] == (out / "small" / "model.safetensors").stat().st_size
    assert {"README.md", "config.json", "vocab.json"} <= set(files)
    printed = capsys.readouterr()
    assert "org/asr-small @ main" in printed.out and "model.safetensors" in printed.out
    assert TOKEN not in printed.out + printed.err


def test_push_offline_is_immediate_and_clear(export, capsys):
    from huggingface_hub import constants

    from hf_dynasr.export.hub import HubPushError, push_to_hub

    out, _ = export
    assert constants.HF_HUB_OFFLINE  # conftest forces offline mode
    start = time.perf_counter()
    with pytest.raises(HubPushError, match="HF_HUB_OFFLINE"):
        push_to_hub(out, "org/asr", token=TOKEN)
    assert push_main(["--checkpoint", str(out), "--repo", "org/asr", "--token", TOKEN]) == 1
    assert time.perf_counter() - start < 10
    printed = capsys.readouterr()
    assert "HF_HUB_OFFLINE" in printed.err and "--dry-run" in printed.err
    assert TOKEN not in printed.out + printed.err


def test_push_unreachable_endpoint_is_clear(export, monkeypatch):
    import socket

    from huggingface_hub import constants

    from hf_dynasr.export.hub import HubPushError, push_to_hub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there
    out, _ = export
    with pytest.raises(HubPushError, match="cannot reach") as err:
        push_to_hub(out, "org/asr", token=TOKEN, endpoint=f"http://127.0.0.1:{port}")
    assert TOKEN not in str(err.value)


def test_push_branches_to_fake_hub(export, monkeypatch):
    from huggingface_hub import constants

    from hf_dynasr.export.hub import push_to_hub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    out, _ = export
    with FakeHub() as hub:
        report = push_to_hub(out, "org/asr", layout="branches", token=TOKEN, endpoint=hub.url)
        assert list(hub.repos) == ["org/asr"]
        assert {"main", "small", "mid"} <= set(hub.repos["org/asr"]["branches"])
        small = hub.files("org/asr", "small")
        assert small["model.safetensors"] == (out / "small" / "model.safetensors").read_bytes()
        assert 'revision="small"' in small["README.md"].decode()
        assert "subnets_dynasr.py" in hub.files("org/asr", "main")
    assert all(r["commit_url"] for r in report)


def test_push_script_to_fake_hub(export, tmp_path):
    """The CLI in a fresh process (HF_ENDPOINT = the fake server): repos created, files uploaded, no token shown."""
    out, _ = export
    with FakeHub() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}
        proc = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "push_to_hub.py"), "--checkpoint",
                               str(out), "--repo", "org/asr", "--private", "--token", TOKEN],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert TOKEN not in proc.stdout + proc.stderr
        assert set(hub.repos) == {"org/asr", "org/asr-small", "org/asr-mid"}
        assert all(repo["private"] for repo in hub.repos.values())
        for repo_id, folder in (("org/asr", "supernet"), ("org/asr-small", "small"), ("org/asr-mid", "mid")):
            files = hub.files(repo_id)
            expected = {p.relative_to(out / folder).as_posix() for p in (out / folder).rglob("*") if p.is_file()}
            assert set(files) == expected
            assert files["model.safetensors"] == (out / folder / "model.safetensors").read_bytes()
            card = files["README.md"].decode()
            assert TOKEN not in card and f"# {repo_id.split('/')[1]}" in card
        assert 'from_pretrained("org/asr-small"' in hub.files("org/asr-small")["README.md"].decode()
        assert f"Bearer {TOKEN}" in hub.auth_headers  # the token reached the server, and only there
