"""torch.export and ONNX export (dynamo exporter) of every size, int8 quantization, the ONNX report in the cards,
and transcription with onnxruntime. Real tiny models (tests/tiny_supernet.py), real files, real speech clips."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from hf_dynasr.export.onnx_export import export_program, quantize_int8
from tiny_supernet import supernet  # noqa: F401  (a fixture)
from tiny_supernet import tiny_features as _features

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def eval_set():
    import datasets

    rng = np.random.default_rng(0)
    audio = [(rng.standard_normal(int(16000 * s)) * 0.1).astype(np.float32) for s in (0.6, 1.0, 0.8)]
    return datasets.Dataset.from_dict({"audio": audio, "text": ["hello world", "a cat", "yes"]})


@pytest.fixture(scope="module")
def onnx_export(supernet, eval_set, tmp_path_factory):
    """`mid` and the whole network (supernet/) as ONNX fp32 and int8, scored on `eval_set`; warnings recorded."""
    from hf_dynasr.export import export_subnets

    path, _ = supernet
    out = tmp_path_factory.mktemp("onnx") / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folders = export_subnets(path, out, sizes="mid", int8=True, onnx_eval=eval_set, onnx_eval_name="tiny-set",
                                 onnx_eval_split="test")
    return out, folders, caught


def test_torch_export_every_size_dynamic_batch_and_time(supernet):
    """torch.export of an extracted size, of the supernet with a size chosen and of the whole network: one
    program runs every batch and length and gives the eager logits; bad shapes are refused, and the eager model
    still refuses bad values after the export."""
    _, model = supernet
    cases = {"extracted small": (model.extract_subnet("small").eval(), None), "supernet, mid": (model, "mid"),
             "whole network": (model, None)}
    for label, (net, subnet) in cases.items():
        program = export_program(net, subnet=subnet).module()
        for batch, frames in ((1, 90), (3, 333), (2, 8)):
            x, mask = _features(batch, frames, seed=frames)
            with torch.no_grad():
                want = net(x, mask, subnet=subnet).logits
            got = program(x, mask.bool())
            assert got.shape == want.shape and (got - want).abs().max() <= 1e-5, label
    x, mask = _features(2, 120)
    with pytest.raises(Exception, match="attention_mask|size|shape"):
        program(x, mask.bool()[:, :100])  # a mask shorter than the features: the program's guard refuses it
    with pytest.raises(Exception, match="80|size|shape"):
        program(x[..., :40], mask.bool())  # 40 mel bins, not the model's 80
    x[1, 5, 3] = float("nan")
    with pytest.raises(ValueError, match=r"utterance\(s\) \[1\] contain NaN"):
        model(x, mask)
    with pytest.raises(ValueError, match="at least 4 valid frames"):
        model(x[:, :3], mask[:, :3])


def test_relative_position_model_exports(tmp_path):
    """A model with relative positional self-attention (the paper recipes' setting): torch.export with dynamic
    batch and time and the ONNX file both give the eager logits (export_onnx checks 3 x 237 frames itself)."""
    from tiny_supernet import TINY

    from hf_dynasr import DynaSRConfig, DynaSRForCTC
    from hf_dynasr.export.onnx_export import export_onnx

    torch.manual_seed(0)
    model = DynaSRForCTC(DynaSRConfig(**{**TINY, "num_hidden_layers": 1}, position_encoding="relative")).eval()
    program = export_program(model).module()
    for batch, frames in ((1, 90), (3, 333)):
        x, mask = _features(batch, frames, seed=frames)
        with torch.no_grad():
            assert (program(x, mask.bool()) - model(x, mask).logits).abs().max() <= 1e-5
    path = export_onnx(model, tmp_path / "model.onnx")
    x, mask = _features(2, 150)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_features": x.numpy(), "attention_mask": mask.bool().numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - model(x, mask).logits.numpy()).max() <= 1e-4
    assert model.config._attn_implementation == "sdpa"  # the export traced "eager" and put it back


def test_onnx_export_uses_dynamo_exporter_without_hidden_warnings(onnx_export):
    """The dynamo exporter writes one self-contained file per size; no warning of ours is raised or silenced (the
    only one left is torch's own deprecation of `LeafSpec`, raised inside torch.export, pytorch/pytorch#167470)."""
    import onnx

    out, folders, caught = onnx_export
    assert set(folders) == {"supernet", "mid"}
    for name in ("supernet", "mid"):
        proto = onnx.load(str(out / name / "model.onnx"))
        assert not list((out / name).glob("*.data"))  # weights inside the file
        assert proto.producer_name == "pytorch" and max(o.version for o in proto.opset_import if o.domain == "") >= 18
        inputs = {i.name: i.type.tensor_type for i in proto.graph.input}
        assert inputs["input_features"].elem_type == onnx.TensorProto.FLOAT
        assert inputs["attention_mask"].elem_type == onnx.TensorProto.BOOL
        dims = [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
        assert dims[:2] == ["batch", "output_frames"]
    messages = [f"{w.category.__name__}: {w.message}" for w in caught]
    assert not [m for m in messages if "LeafSpec" not in m], messages
    assert not any("TorchScript" in m or "deprecated" in m.lower() and "LeafSpec" not in m for m in messages)


def test_onnx_matches_pytorch(supernet, onnx_export):
    """The ONNX files give PyTorch's logits and transcripts at other batch and time sizes than at export, with the
    processor's bool mask as it comes; the supernet folder's file is the whole network."""
    _, model = supernet
    out, _, _ = onnx_export
    for folder, extracted in (("mid", model.extract_subnet("mid").eval()), ("supernet", model)):
        session = onnxruntime.InferenceSession(str(out / folder / "model.onnx"), providers=["CPUExecutionProvider"])
        for batch, frames in ((1, 90), (3, 333)):  # other batch and time sizes than at export
            x, mask = _features(batch, frames, seed=frames)
            got = session.run(None, {"input_features": x.numpy(), "attention_mask": mask.bool().numpy()})[0]
            with torch.no_grad():
                want = extracted(x, mask).logits.numpy()
            assert got.shape == want.shape and np.abs(got - want).max() <= 1e-4


def test_int8_is_quantized_and_close(supernet, onnx_export, tmp_path):
    import onnx

    _, model = supernet
    out, _, _ = onnx_export
    fp32, int8 = out / "mid" / "model.onnx", out / "mid" / "model_int8.onnx"
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} & ops and int8.stat().st_size < fp32.stat().st_size
    x, mask = _features(2, 200)
    feeds = {"input_features": x.numpy(), "attention_mask": mask.bool().numpy()}
    got = onnxruntime.InferenceSession(str(int8), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    with torch.no_grad():
        want = model(x, mask, subnet="mid").logits.numpy()
    assert np.abs(got - want).max() <= 0.1 * np.abs(want).max()  # int8 weights: close, not equal
    assert quantize_int8(fp32, tmp_path / "again.onnx") == str(tmp_path / "again.onnx")


def test_onnx_report_and_cards(onnx_export):
    """onnx_report.json holds latency and WER/CER of PyTorch fp32, ONNX fp32 and int8; the cards show them, the
    input dtypes and how to run the file, also when re-rendered for a push; the push lists the ONNX files."""
    from huggingface_hub import ModelCard

    from hf_dynasr.export.hub import plan_push
    from hf_dynasr.json_io import read_json

    out, _, _ = onnx_export
    for name in ("mid", "supernet"):
        report = read_json(out / name / "onnx_report.json")
        assert report["files"] == {"fp32": "model.onnx", "int8": "model_int8.onnx"}
        assert set(report["latency_ms"]) == {"pytorch_fp32", "onnx_fp32", "onnx_int8"}
        assert all(v > 0 for v in report["latency_ms"].values())
        assert report["latency_setup"]["duration_s"] == 10.0 and report["latency_setup"]["batch_size"] == 1
        ev = report["eval"]
        assert ev["dataset"] == "tiny-set" and ev["split"] == "test" and ev["num_utterances"] == 3
        assert ev["cer"]["onnx_fp32"] == pytest.approx(ev["cer"]["pytorch_fp32"])  # same transcripts
        card = ModelCard.load(out / name / "README.md").text
        assert "model.onnx" in card and "model_int8.onnx" in card and "## ONNX" in card
        assert "`attention_mask` bool [batch, frames]" in card and "`input_features` float32" in card
        assert "| ONNX int8 |" in card and "tiny-set" in card
    assert "whole network" in ModelCard.load(out / "supernet" / "README.md").text
    targets = plan_push(out, "org/asr")
    mid = next(t for t in targets if t.size == "mid")
    files = {p for p, _ in mid.files}
    assert {"model.onnx", "model_int8.onnx", "onnx_report.json", "README.md"} <= files
    pushed_card = next(op for op in mid.operations if op.path_in_repo == "README.md").path_or_fileobj.decode()
    assert "| ONNX int8 |" in pushed_card and "org/asr-mid" in pushed_card


def test_full_size_is_exported_on_request(supernet, tmp_path):
    """`sizes` may name "full" (the whole network alone: every weight, one head); unknown names list it."""
    from hf_dynasr.export import export_subnets
    from hf_dynasr.models.dynasr.modeling_dynasr import DynaSRForCTC

    path, model = supernet
    folders = export_subnets(path, tmp_path / "out", sizes="small,full", include_supernet=False)
    assert set(folders) == {"small", "full"}
    full = DynaSRForCTC.from_pretrained(folders["full"])
    assert full.config.subnets == {} and not full.subnet_heads
    x, mask = _features()
    with torch.no_grad():
        assert (full(x, mask).logits - model(x, mask).logits).abs().max() <= 1e-5
    with pytest.raises(ValueError, match=r"unknown size.*'tiny'.*available: .*full"):
        export_subnets(path, tmp_path / "other", sizes=["tiny"])


def test_export_cli_onnx_options(supernet, tmp_path, capsys):
    """`--onnx_eval` without an ONNX export is refused before anything is written; `--sizes full` is accepted."""
    from hf_dynasr.export.cli import export_main

    path, _ = supernet
    assert export_main(["--checkpoint", str(path), "--output_dir", str(tmp_path / "a"), "--onnx_eval",
                        "audiofolder:/nowhere"]) == 2
    assert "add --onnx" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert export_main(["--checkpoint", str(path), "--output_dir", str(tmp_path / "b"), "--sizes", "full"]) == 0
    assert (tmp_path / "b" / "full" / "config.json").is_file()


def test_transcribe_onnx_script_gives_pytorch_transcripts(supernet, onnx_export, speech_clips, capsys):
    """scripts/transcribe_onnx.py on real 22.05 kHz speech files: the transcripts of the PyTorch model (same
    decoding, resampling and features); clear errors for a missing file and a missing processor."""
    from transformers import AutoProcessor

    from hf_dynasr.evaluation.inference import transcribe_batch
    from hf_dynasr.export.cli import transcribe_onnx_main

    _, model = supernet
    out, _, _ = onnx_export
    clips = [str(p) for p in list(speech_clips.values())[:3]]
    assert transcribe_onnx_main([str(out / "mid" / "model.onnx"), *clips]) == 0
    printed = capsys.readouterr().out.splitlines()
    processor = AutoProcessor.from_pretrained(out / "mid")
    want = transcribe_batch(model.extract_subnet("mid").eval(), processor.feature_extractor, processor.tokenizer,
                            [{"path": c} for c in clips])
    assert printed == [f"{c}\t{w}" for c, w in zip(clips, want)]
    assert transcribe_onnx_main([str(out / "mid" / "model.onnx"), str(out / "missing.wav")]) == 2
    assert "missing.wav" in capsys.readouterr().err
    lone = out.parent / "lone.onnx"
    lone.write_bytes((out / "mid" / "model.onnx").read_bytes())
    assert transcribe_onnx_main([str(lone), clips[0]]) == 2
    assert "--processor" in capsys.readouterr().err
    assert transcribe_onnx_main([str(lone), clips[0], "--processor", str(out / "mid")]) == 0


def test_onnx_runner_checks_inputs(onnx_export):
    """`OnnxCTC.logits` accepts the processor's bool mask and 0/1 integer masks alike, and refuses bad input with
    the model's own words instead of onnxruntime's."""
    from hf_dynasr.export.onnx_report import OnnxCTC

    out, _, _ = onnx_export
    runner = OnnxCTC(out / "mid" / "model.onnx")
    x, mask = _features(2, 120)
    assert np.array_equal(runner.logits(x, mask.bool()), runner.logits(x.numpy(), mask.numpy()))
    with pytest.raises(ValueError, match=r"shape \[batch, frames, 80\]"):
        runner.logits(x[..., :40], mask)
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        runner.logits(x, mask[:, :100])
    with pytest.raises(ValueError, match="at least 4 valid frames"):
        runner.logits(x[:, :3], mask[:, :3])
    with pytest.raises(FileNotFoundError, match="export_subnets.py --onnx"):
        OnnxCTC(out / "mid" / "nothing.onnx")
