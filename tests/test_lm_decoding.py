"""N-gram LM building (pure Python always; IRSTLM / KenLM when installed) and lexicon + LM CTC beam search.

Decoding runs on synthetic CTC logits (peaked frames spelling words, with confusions), so it needs no
trained model; one test runs `evaluate_checkpoint(decoder=...)` and an export on a tiny random model.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from hf_dynasr.lm import arpa as lm_arpa
from hf_dynasr.lm import decoding as lm_decoding
from hf_dynasr.lm import (
    CONFIG_FILE,
    LEXICON_FILE,
    LM_FILE,
    build_lm,
    load_lm_decoder,
    read_lexicon,
    read_transcriptions,
)
from hf_dynasr.data import DEFAULT_VOCAB, build_tokenizer
from hf_dynasr.lm.cli import build_lm_main

REPO_ROOT = Path(__file__).resolve().parent.parent
HAS_FLASHLIGHT = importlib.util.find_spec("flashlight") is not None and \
    importlib.util.find_spec("flashlight.lib.text") is not None
needs_flashlight = pytest.mark.skipif(not HAS_FLASHLIGHT, reason="flashlight-text not installed "
                                      "(pip install flashlight-text)")

SENTENCES = [
    "the cat sat on the mat", "the cat sat on the mat again", "a cat sat on the mat", "the dog sat on the mat",
    "the cat is on the mat", "my cat likes the mat", "the cat sat on the red mat", "the fat cat sat on the mat",
    "the dog is mad", "the man is mad at the dog", "he was mad", "do not get mad",
    "the dog ran to the park", "we went to the park", "the park is green", "she reads a book",
    "he reads the paper", "the paper is on the table", "put the book on the table", "the table is red",
    "i like green tea", "she likes black tea", "tea is hot", "the sun is hot today",
    "today is a good day", "it's a good day for the park", "they don't like rain", "rain fell on the park",
    "the bird sang a song", "a song for the cat",
]


# --- synthetic CTC logits ---------------------------------------------------------------------------------

TOKEN_ID = {t: i for i, t in enumerate(DEFAULT_VOCAB)}


def ctc_logits(slots, floor=1e-4):
    """Log-probabilities [T, V] for `slots`: each a character or {char: prob}, followed by a blank frame;
    a space is a word delimiter frame. Peaked: the named characters get their mass, the rest `floor`."""
    frames = []
    for slot in slots:
        dist = {"|" if slot == " " else slot: 1.0} if isinstance(slot, str) else slot
        row = np.full(len(DEFAULT_VOCAB), floor)
        for ch, p in dist.items():
            row[TOKEN_ID[ch]] = p
        frames += [row / row.sum(), np.eye(len(DEFAULT_VOCAB))[0] * (1 - floor * 30) + floor]
    return np.log(np.stack(frames)).astype(np.float32)


def greedy(logp) -> str:
    return build_tokenizer().decode(np.asarray(logp).argmax(-1).tolist())


def spell(text, **confusions):
    """Slots spelling `text`; `confusions` {word_index_char_index: {char: p}} via key 'w{i}c{j}'."""
    slots = []
    for i, word in enumerate(text.split()):
        if i:
            slots.append(" ")
        for j, ch in enumerate(word):
            slots.append(confusions.get(f"w{i}c{j}", ch))
    return slots


# --- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def lm_dir(text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm") / "python"
    build_lm(text_file, out, order=3, tool="python")
    return out


@pytest.fixture(scope="module")
def decoder(lm_dir):
    if not HAS_FLASHLIGHT:
        pytest.skip("flashlight-text not installed (pip install flashlight-text)")
    return load_lm_decoder(lm_dir, build_tokenizer(), lm_weight=1.0, word_score=0.0, beam_size=20)


# --- ARPA reader (for checking the estimator) ---------------------------------------------------------------


def read_arpa(path):
    probs, backoffs, order = {}, {}, 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("\\") and line.endswith("-grams:"):
                order = int(line[1:line.index("-")])
                continue
            if not order or not line or line.startswith("\\"):
                continue
            fields = line.split("\t")
            words = tuple(fields[1].split())
            probs[words] = float(fields[0])
            if len(fields) > 2:
                backoffs[words] = float(fields[2])
    return probs, backoffs


def arpa_log10(probs, backoffs, context, word):
    context = tuple(context)
    while (context + (word,)) not in probs:
        if not context:
            return probs[("<unk>",)]
        bo = backoffs.get(context, 0.0)
        context = context[1:]
        return bo + arpa_log10(probs, backoffs, context, word)
    return probs[context + (word,)]


# --- building -----------------------------------------------------------------------------------------------


def test_python_kneser_ney_arpa_is_normalised(lm_dir):
    config = json.loads((lm_dir / CONFIG_FILE).read_text())
    assert config["tool"] == "python" and config["order"] == 3 and config["num_sentences"] == len(SENTENCES)
    vocab = sorted({w for s in SENTENCES for w in s.split()})
    assert config["vocabulary_size"] == len(vocab) and config["tokens"] == list(DEFAULT_VOCAB)
    assert set(config["decoding"]) >= {"lm_weight", "word_score", "beam_size"}
    probs, backoffs = read_arpa(lm_dir / LM_FILE)
    assert config["ngram_counts"]["1"] == len(vocab) + 3  # + <s>, </s>, <unk>
    outcomes = vocab + ["</s>", "<unk>"]
    for context in [(), ("<s>",), ("the",), ("on", "the"), ("<s>", "the"), ("mad",), ("zebra", "the")]:
        total = sum(10 ** arpa_log10(probs, backoffs, context, w) for w in outcomes)
        assert total == pytest.approx(1.0, abs=1e-6), context
    # trigram evidence beats the unigram: "on the mat" is frequent, "on the mad" unseen
    assert arpa_log10(probs, backoffs, ("on", "the"), "mat") > arpa_log10(probs, backoffs, ("on", "the"), "mad") + 1
    lex = read_lexicon(lm_dir / LEXICON_FILE)
    assert set(lex) == set(vocab) and lex["cat"] == [["c", "a", "t", "|"]] and lex["it's"] == [list("it's") + ["|"]]


def test_transcriptions_from_corpus_use_the_train_split(tmp_path):
    for split, text in (("train", "hello there, World!"), ("test", "secret test words")):
        (tmp_path / split).mkdir()
        (tmp_path / split / "metadata.csv").write_text(f'file_name,transcription\na.wav,"{text}"\n', encoding="utf-8")
    assert read_transcriptions(tmp_path) == ["hello there, World!"]
    assert read_transcriptions(tmp_path, split="test") == ["secret test words"]
    config = build_lm(tmp_path, tmp_path / "lm", order=2, tool="python")
    assert set(read_lexicon(tmp_path / "lm" / LEXICON_FILE)) == {"hello", "there", "world"}
    assert config["source"] == tmp_path.name and config["split"] == "train"
    with pytest.raises(FileNotFoundError, match="metadata"):
        read_transcriptions(tmp_path / "lm")


def test_build_lm_script(text_file, tmp_path, capsys):
    assert build_lm_main(["--text", str(text_file), "--order", "2", "--output_dir", str(tmp_path / "lm"),
                        "--tool", "python", "--lm_weight", "0.7"]) == 0
    assert "2-gram LM (python" in capsys.readouterr().out
    config = json.loads((tmp_path / "lm" / CONFIG_FILE).read_text())
    assert config["decoding"]["lm_weight"] == 0.7 and config["order"] == 2
    assert build_lm_main(["--text", str(tmp_path / "missing.txt"), "--output_dir", str(tmp_path / "x")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize("tool", ["irstlm", "kenlm"])
def test_external_tool_arpa(tool, text_file, tmp_path):
    if tool not in lm_arpa.available_tools():
        pytest.skip(f"{tool} not installed" + (" (apt-get install -y irstlm)" if tool == "irstlm" else ""))
    config = build_lm(text_file, tmp_path / tool, order=3, tool=tool)
    assert config["tool"] == tool and config["ngram_counts"]["1"] >= config["vocabulary_size"]
    probs, _ = read_arpa(tmp_path / tool / LM_FILE)
    assert {("cat",), ("</s>",), ("on", "the", "mat")} <= set(probs)
    if HAS_FLASHLIGHT:  # the ARPA loads into flashlight's KenLM and decodes
        dec = load_lm_decoder(tmp_path / tool, build_tokenizer())
        assert dec.decode(ctc_logits(spell("the cat sat on the mat"))) == ["the cat sat on the mat"]


def test_unavailable_tool_is_a_clear_error(text_file, tmp_path, monkeypatch):
    monkeypatch.setattr(lm_arpa, "available_tools", lambda: ["python"])
    with pytest.raises(RuntimeError, match="apt-get install -y irstlm"):
        build_lm(text_file, tmp_path, tool="irstlm")


# --- decoding -----------------------------------------------------------------------------------------------


@needs_flashlight
def test_lm_fixes_a_word_that_greedy_gets_wrong(decoder):
    # acoustics prefer "mad" (0.55 vs 0.45); "mad" is a lexicon word, but the LM knows "on the mat"
    logp = ctc_logits(spell("the cat sat on the mat", w5c2={"d": 0.55, "t": 0.45}))
    assert greedy(logp) == "the cat sat on the mad"
    assert decoder.decode(logp) == ["the cat sat on the mat"]
    # a non-word ("kat") is fixed by the lexicon; a clean "mad" in its usual context is kept
    logp = ctc_logits(spell("the cat is mad", w1c0={"k": 0.6, "c": 0.4}))
    assert greedy(logp) == "the kat is mad"
    assert decoder.decode(logp) == ["the cat is mad"]


@needs_flashlight
def test_lm_weight_zero_follows_the_acoustics(lm_dir):
    dec = load_lm_decoder(lm_dir, build_tokenizer(), lm_weight=0.0)
    logp = ctc_logits(spell("the cat sat on the mat", w5c2={"d": 0.55, "t": 0.45}))
    assert dec.decode(logp) == ["the cat sat on the mad"]


@needs_flashlight
def test_batch_lengths_torch_and_only_lexicon_words(decoder, lm_dir):
    import torch

    a = ctc_logits(spell("we went to the park"))
    b = ctc_logits(spell("tea is hot", w0c0={"p": 0.7, "t": 0.3}))  # greedy: "pea is hot"
    batch = np.full((2, len(a), len(DEFAULT_VOCAB)), -50.0, dtype=np.float32)
    batch[0], batch[1, :len(b)] = a, b
    batch[1, len(b):, TOKEN_ID["z"]] = 0.0  # padding frames spell "zzz..." if lengths were ignored
    assert decoder.decode(torch.from_numpy(batch), torch.tensor([len(a), len(b)])) == \
        ["we went to the park", "tea is hot"]
    assert decoder(batch[0]) == ["we went to the park"]  # [T, V], all frames
    lexicon = set(read_lexicon(lm_dir / LEXICON_FILE))
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((3, 60, len(DEFAULT_VOCAB))).astype(np.float32) * 3
    for text in decoder.decode(noise):
        assert set(text.split()) <= lexicon
    assert decoder.decode(np.zeros((0, len(DEFAULT_VOCAB)), dtype=np.float32)) == [""]
    assert decoder.decoded_frames > 0 and decoder.decode_seconds > 0


@needs_flashlight
def test_bad_inputs_are_clear_errors(decoder, lm_dir, tmp_path):
    with pytest.raises(ValueError, match="31 classes but the decoder's vocabulary has 30"):
        decoder.decode(np.zeros((10, 31), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[T, V\] or \[B, T, V\]"):
        decoder.decode(np.zeros(10, dtype=np.float32))
    with pytest.raises(ValueError, match="lengths"):
        decoder.decode(np.zeros((2, 10, 30), dtype=np.float32), [10, 11])
    with pytest.raises(FileNotFoundError, match="lexicon not found"):
        lm_decoding.LexiconLMDecoder(lm_dir / LM_FILE, tmp_path / "missing.txt", DEFAULT_VOCAB)
    with pytest.raises(FileNotFoundError, match="build_lm.py"):
        load_lm_decoder(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(lm_dir, broken)
    (broken / LEXICON_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="lexicon.txt is missing"):
        load_lm_decoder(broken)
    (broken / LEXICON_FILE).write_text("cat\n", encoding="utf-8")
    with pytest.raises(ValueError, match="expected 'word"):
        lm_decoding.LexiconLMDecoder(broken / LM_FILE, broken / LEXICON_FILE, DEFAULT_VOCAB)
    (broken / LEXICON_FILE).write_text("über ü b e r |\n", encoding="utf-8")
    with pytest.raises(ValueError, match="can be spelled"):
        lm_decoding.LexiconLMDecoder(broken / LM_FILE, broken / LEXICON_FILE, DEFAULT_VOCAB)
    with pytest.raises(ValueError, match="word_delimiter"):
        lm_decoding.LexiconLMDecoder(lm_dir / LM_FILE, lm_dir / LEXICON_FILE, [t for t in DEFAULT_VOCAB if t != "|"])


def test_missing_flashlight_names_the_install(lm_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "flashlight.lib.text", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install flashlight-text"):
        load_lm_decoder(lm_dir, build_tokenizer())


# --- evaluation and export --------------------------------------------------------------------------------


@needs_flashlight
def test_evaluate_and_export_with_lm(lm_dir, tmp_path):
    import datasets
    import torch

    from hf_dynasr import DynaSRConfig, DynaSRForCTC, build_processor
    from hf_dynasr.export import export_subnets
    from hf_dynasr.evaluation import evaluate_checkpoint, results_markdown

    torch.manual_seed(0)
    model = DynaSRForCTC(DynaSRConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, frontend_type="conv2d4x", frontend_channels=8)).eval()
    model.add_subnet("small", components=list(range(0, len(model.component_index), 2)))
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    processor = build_processor()
    processor.save_pretrained(ckpt)
    rng = np.random.default_rng(0)
    data = datasets.Dataset.from_dict({"audio": [(rng.standard_normal(8000) * 0.1).astype(np.float32)] * 2,
                                       "text": ["the cat sat", "tea is hot"]})
    dec = load_lm_decoder(lm_dir, processor.tokenizer)
    res = evaluate_checkpoint(ckpt, data, subnets="small,full", latency=False, decoder=dec)
    lexicon = set(read_lexicon(lm_dir / LEXICON_FILE))
    for size in ("small", "full"):
        row = res["sizes"][size]
        assert {"wer", "lm_wer", "lm_cer"} <= set(row) and math.isfinite(row["lm_wer"])
        assert all(set(e["prediction"].split()) <= lexicon for e in row["lm"]["examples"])
    assert res["lm_decoder"]["lm_weight"] == 1.0 and "LM WER %" in results_markdown(res)

    folders = export_subnets(ckpt, tmp_path / "export", lm=lm_dir, include_supernet=False)
    shipped = Path(folders["small"]) / "language_model"
    assert sorted(p.name for p in shipped.iterdir()) == sorted([CONFIG_FILE, LM_FILE, LEXICON_FILE])
    card = (Path(folders["small"]) / "README.md").read_text()
    assert "## Decoding with the n-gram language model" in card and "load_lm_decoder" in card
    assert "3-gram" in card and "pip install flashlight-text" in card
    assert load_lm_decoder(shipped, processor.tokenizer).decode(ctc_logits(spell("tea is hot"))) == ["tea is hot"]
    with pytest.raises(FileNotFoundError, match="build_lm.py"):
        export_subnets(ckpt, tmp_path / "export2", lm=tmp_path)


def test_decoding_speed(decoder):
    """Not a benchmark: a sanity bound (flashlight is C++; 100 utterances of 100 frames take well under 5 s)."""
    logp = ctc_logits(spell("the fat cat sat on the red mat today"))
    batch = np.repeat(logp[None], 100, axis=0)
    decoder.decode_seconds = 0.0
    decoder.decode(batch)
    assert decoder.decode_seconds < 5.0
