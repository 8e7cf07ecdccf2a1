"""The ASR pipeline and the Hub remote-code path (`trust_remote_code=True`) on saved folders."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
from conftest import make_model
from transformers import pipeline

from hf_dynasr import build_processor


@pytest.fixture(scope="module")
def sentence_audio(tmp_path_factory):
    """A real synthesized sentence at 16 kHz (espeak-ng + sox, as the corpus generator uses)."""
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.fail("espeak-ng and sox are required; run scripts/test.sh, which installs them")
    d = tmp_path_factory.mktemp("audio")
    subprocess.run(["espeak-ng", "-w", str(d / "raw.wav"), "the quick brown fox"], check=True)
    subprocess.run(["sox", str(d / "raw.wav"), "-r", "16000", "-c", "1", "-b", "16", str(d / "s.wav")], check=True)
    audio, rate = sf.read(d / "s.wav", dtype="float32")
    assert rate == 16000 and audio.ndim == 1 and len(audio) > 8000
    return audio


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = make_model()
    model.add_subnet("small", components=list(range(0, len(model.component_index), 2)))
    d = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(d / "supernet")
    build_processor().save_pretrained(d / "supernet")
    small = model.extract_subnet("small")
    small.save_pretrained(d / "small")
    build_processor().save_pretrained(d / "small")
    return d


@pytest.mark.parametrize("folder", ["supernet", "small"])
def test_pipeline_transcribes_from_a_folder(checkpoint, folder, sentence_audio):
    asr = pipeline("automatic-speech-recognition", model=str(checkpoint / folder))
    assert asr.model.config.inputs_to_logits_ratio == 640
    out = asr(sentence_audio)
    assert isinstance(out["text"], str)
    # an untrained model emits something from the character vocabulary (or nothing), never ids
    assert set(out["text"]) <= set("abcdefghijklmnopqrstuvwxyz' ")
    batch = asr([sentence_audio, sentence_audio[:16000]], batch_size=2)
    assert len(batch) == 2
    chunked = asr(sentence_audio, chunk_length_s=1.0, stride_length_s=0.2)
    assert isinstance(chunked["text"], str)


def test_pipeline_on_supernet_folder_with_subnet(checkpoint, sentence_audio):
    from transformers import AutoModelForCTC

    model = AutoModelForCTC.from_pretrained(checkpoint / "supernet", subnet="small")
    processor = build_processor()
    asr = pipeline(
        "automatic-speech-recognition", model=model,
        tokenizer=processor.tokenizer, feature_extractor=processor.feature_extractor,
    )
    assert isinstance(asr(sentence_audio)["text"], str)


def test_remote_code_load_in_a_fresh_process_without_hf_dynasr(checkpoint, tmp_path):
    """trust_remote_code=True loads the copied modeling files; hf_dynasr is never imported."""
    code = textwrap.dedent(
        f"""
        import json, sys, torch
        from transformers import AutoModelForCTC
        model = AutoModelForCTC.from_pretrained({str(checkpoint / 'supernet')!r}, trust_remote_code=True,
                                                subnet="small")
        feats = torch.randn(1, 120, 80)
        print(json.dumps({{
            "module": type(model).__module__,
            "imported_hf_dynasr": any(m == "hf_dynasr" or m.startswith("hf_dynasr.") for m in sys.modules),
            "active": model.config.active_subnet,
            "params": model.num_parameters(),
            "frames": model(feats).logits.shape[1],
        }}))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    env.pop("PYTHONPATH", None)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["module"].startswith("transformers_modules")
    assert info["imported_hf_dynasr"] is False
    assert info["active"] == "small" and info["frames"] == 30
    config = json.loads((checkpoint / "supernet" / "config.json").read_text())
    assert info["params"] == config["subnets"]["small"]["num_parameters"]
    assert config["auto_map"] == {
        "AutoConfig": "configuration_dynasr.DynaSRConfig",
        "AutoModelForCTC": "modeling_dynasr.DynaSRForCTC",
    }


def test_processor_files_travel_with_the_checkpoint(checkpoint):
    from transformers import AutoFeatureExtractor, AutoTokenizer

    fe = AutoFeatureExtractor.from_pretrained(checkpoint / "small")
    tok = AutoTokenizer.from_pretrained(checkpoint / "small")
    assert fe.feature_size == 80 and len(tok) == 30
    ids = tok("hello world").input_ids
    assert tok.decode(ids, group_tokens=False) == "hello world"
    feats = fe(np.zeros(16000, dtype=np.float32), sampling_rate=16000, return_tensors="pt")
    assert feats["input_features"].shape[-1] == 80 and "attention_mask" in feats
