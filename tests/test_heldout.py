"""Held-out test sets (hf_dynasr.data.heldout) and the evaluation table with a column per set
(evaluate_model.py --data A B C): the held-out engine speaks the test split's sentences with an engine the
training split lacks, the telephone copy has no energy above 4 kHz, and one table reports every set."""

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, corpus_subset
from tiny_supernet import supernet  # noqa: F401  (a fixture)

from hf_dynasr.data.heldout import make_heldout_sets, read_metadata
from hf_dynasr.evaluation.cli import evaluate_main


@pytest.fixture(scope="module")
def corpus(smoke_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("heldout") / "corpus"
    root.mkdir()
    return corpus_subset(smoke_corpus, root, {"train": 4, "dev": 1, "test": 3})


@pytest.mark.skipif(shutil.which("text2wave") is None, reason="needs apt-get install -y festival festvox-kallpc16k")
def test_heldout_engine_and_telephone_sets(corpus, tmp_path):
    out = tmp_path / "heldout"
    counts = make_heldout_sets(str(corpus), str(out), engine="festival", num_workers=1)
    assert counts == {"heldout_engine": 3, "telephone": 3}
    test = read_metadata(str(corpus / "test"))
    engine, phone = read_metadata(str(out / "heldout_engine" / "test")), read_metadata(str(out / "telephone" / "test"))
    assert [r["transcription"] for r in engine] == [r["transcription"] for r in phone] == \
        [r["transcription"] for r in test]
    assert {r["engine"] for r in engine} == {"festival"}
    for row in phone:
        audio, sr = sf.read(str(out / "telephone" / "test" / row["file_name"]), dtype="float32")
        power = np.abs(np.fft.rfft(audio.astype(np.float64))) ** 2
        assert sr == 16000 and power[np.fft.rfftfreq(audio.size, 1 / sr) > 4000].sum() < 1e-4 * power.sum()
    with pytest.raises(ValueError, match="no training utterance uses"):
        make_heldout_sets(str(corpus), str(tmp_path / "x"), engine="espeak")


def test_evaluate_reports_a_column_per_set(supernet, corpus, tmp_path):  # noqa: F811
    path, _ = supernet
    spec = f"audiofolder:{corpus}"
    other = tmp_path / "other"
    shutil.copytree(corpus / "test", other / "test")
    assert evaluate_main(["--checkpoint", str(path), "--data", spec, f"audiofolder:{other}", "--latency_runs", "0",
                          "--output_dir", str(tmp_path / "eval")]) == 0
    results = json.loads((tmp_path / "eval" / "results_sets.json").read_text())
    assert list(results["sets"]) == ["corpus", "other"]
    first, second = (results["sets"][k]["sizes"] for k in ("corpus", "other"))
    assert set(first) == {"small", "mid", "full"} and all(first[k]["cer"] == second[k]["cer"] for k in first)
    table = (tmp_path / "eval" / "results_sets.md").read_text()
    assert "| size | corpus CER % | other CER % | other / corpus |" in table
    assert f"| full | {100 * first['full']['cer']:.1f} | {100 * second['full']['cer']:.1f} | 1.00x |" in table


def test_evaluate_scores_each_group_apart(supernet, corpus, tmp_path):  # noqa: F811
    """--group_by engine: each engine's rows scored apart, the counts adding up to the set and the per-group CER
    equal to scoring those rows alone; a column the data lacks is refused naming the columns it has."""
    path, _ = supernet
    spec = f"audiofolder:{corpus}"
    assert evaluate_main(["--checkpoint", str(path), "--data", spec, "--latency_runs", "0", "--group_by", "engine",
                          "--output_dir", str(tmp_path / "eval")]) == 0
    sizes = json.loads((tmp_path / "eval" / "results.json").read_text())["sizes"]
    engines = {row["engine"] for row in read_metadata(str(corpus / "test"))}
    for size in sizes.values():
        assert set(size["groups"]) == engines
        assert sum(g["num_utterances"] for g in size["groups"].values()) == 3
        if len(engines) == 1:
            assert next(iter(size["groups"].values()))["cer"] == size["cer"]
    table = (tmp_path / "eval" / "results.md").read_text()
    assert "CER % by engine:" in table and "| group | utterances |" in table
    for engine in engines:
        group = sizes["full"]["groups"][engine]
        assert f"| {engine} | {group['num_utterances']} |" in table
        assert table.split(f"| {engine} |")[1].split("\n")[0].endswith(f"{100 * group['cer']:.1f} |")
    assert evaluate_main(["--checkpoint", str(path), "--data", spec, "--latency_runs", "0", "--group_by", "speaker",
                          "--output_dir", str(tmp_path / "eval2")]) == 2


def test_robustness_table_and_docs_markers(tmp_path):
    """The run table of docs/robustness_of_models.md is rendered from the results JSON, between its markers."""
    from hf_dynasr.evaluation import robustness

    cer = {"demo_corpus": {"small": 0.40, "medium": 0.38, "full": 0.30},
           "heldout_engine": {"small": 0.5, "medium": 0.5, "full": 0.36},
           "telephone": {"small": 0.6, "medium": 0.6, "full": 0.60}}
    copies = {"max_steps": 2800, "train_wall_s": 669.1, "cer": cer, "augmentation": {"telephone_prob": 0.25,
                                                                                     "telephone_mu_law": 0.5},
              "copies": 2}
    lines = robustness.results_table({"runs": {"none_s0": {"max_steps": 800, "train_wall_s": 215.3, "cer": cer},
                                               "copies": copies}})
    assert lines[2] == ("| none_s0 | none | 800 | 40.0 / 38.0 / 30.0 | 50.0 / 50.0 / 36.0 | 60.0 / 60.0 / 60.0 | 1.20x | "
                        "2.00x | 215 s |")
    assert lines[3].startswith("| copies | telephone 0.25; 2 precomputed copies | 2800 |")
    doc = tmp_path / "page.md"
    doc.write_text(f"intro\n{robustness.MARKER}\nold table\n{robustness.MARKER}\nafter\n")
    robustness.replace_table(str(doc), lines)
    text = doc.read_text()
    assert "old table" not in text and lines[2] in text and text.startswith("intro\n") and text.endswith("after\n")
    doc.write_text("no markers\n")
    with pytest.raises(ValueError, match="needs exactly two '<!-- robustness-runs -->' lines"):
        robustness.replace_table(str(doc), lines)
    assert doc.read_text() == "no markers\n"  # left as it was


def test_robustness_recipes_replace_the_configs_augmentation(monkeypatch, tmp_path):
    """A recipe's training command states its augmentation whatever the config says: "none" trains without the
    demo config's telephone augmentation, an augmented recipe per read (on_the_fly) or from precomputed copies."""
    from hf_dynasr.evaluation import robustness
    from hf_dynasr.trainer.options import parse_args

    commands = []
    monkeypatch.setattr(robustness.subprocess, "run", lambda cmd, **kwargs: commands.append(cmd))
    table = robustness.recipes()
    for recipe, copies in (("none", 0), ("only_telephone", 0), ("telephone_speed", 3)):
        robustness.train(str(tmp_path / recipe), table[recipe], 0, config=os.path.join(REPO, "training", "configs", "demo_cpu.yaml"),
                         corpus="data/demo_corpus", max_steps=10, workers=1, copies=copies)
    none, per_read, precomputed = (parse_args(cmd[2:]) for cmd in commands)
    assert not none.augmentation_config().enabled and none.augmentation_copies == 0
    assert per_read.augmentation == {"telephone_prob": 0.25} and per_read.augmentation_copies == 0
    assert per_read.data_pipeline == "on_the_fly"
    assert precomputed.augmentation == {"telephone_prob": 0.25, "speed_prob": 0.6}
    assert precomputed.augmentation_copies == 3 and precomputed.data_pipeline == "auto"
