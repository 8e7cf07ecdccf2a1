"""Running an exported ONNX size with onnxruntime, and what its model card says about it.

    runner = OnnxCTC("export/small/model_int8.onnx")          # the processor saved in the same folder
    runner.transcribe([audio])                                # greedy CTC transcripts
    report = measure_onnx(pytorch_model, "export/small", processor, dataset=test_set)   # latency, WER/CER

`measure_onnx` times PyTorch fp32, ONNX fp32 and ONNX int8 side by side at batch 1 on 10 s of audio and scores
all three on a dataset; the report is written next to the files (`ONNX_REPORT`) and rendered into the card
(`onnx_card_section`), also when the card is rendered again at push time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from transformers import AutoProcessor

from hf_dynasr.evaluation.inference import audio_array, greedy_transcribe
from hf_dynasr.evaluation.latency import machine_info
from hf_dynasr.evaluation.scoring import wer_cer
from hf_dynasr.evaluation.timing import timeit_side_by_side
from hf_dynasr.export.onnx_export import ONNX_INPUTS, ONNX_OUTPUT
from hf_dynasr.json_io import read_json, write_json

ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model_int8.onnx"
ONNX_REPORT = "onnx_report.json"
MIN_FRAMES = 4  # one output frame per 4 feature frames (40 ms)


class OnnxCTC:
    """An exported size (`model.onnx` or `model_int8.onnx`) with its processor, run by onnxruntime on the CPU.

    `processor`: a Wav2Vec2Processor (default: the one saved in the ONNX file's folder). `num_threads`: onnxruntime's
    intra-op threads (default: torch's thread count, so timings compare with PyTorch's)."""

    def __init__(self, path, processor=None, num_threads: int | None = None):
        import onnxruntime  # optional dependency (the `onnx` extra), slow to import

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; export one with scripts/export_subnets.py --onnx")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(num_threads or torch.get_num_threads())
        self.path = path
        self.session = onnxruntime.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
        self.processor = processor if processor is not None else AutoProcessor.from_pretrained(path.parent)
        self.num_mel_bins = int(self.session.get_inputs()[0].shape[2])

    def logits(self, input_features, attention_mask=None) -> np.ndarray:
        """Logits [B, T // 4, V] of features [B, T, F] (numpy or torch) and a mask [B, T] of bool or 0/1 integers
        (None: every frame is real). Refuses what the model refuses in PyTorch, with the same words."""
        features = np.asarray(input_features.numpy() if torch.is_tensor(input_features) else input_features,
                              dtype=np.float32)
        if features.ndim != 3 or features.shape[-1] != self.num_mel_bins or 0 in features.shape:
            raise ValueError(f"input_features must have shape [batch, frames, {self.num_mel_bins}] (log-mel of the "
                             f"saved processor); got {features.shape}")
        if attention_mask is None:
            mask = np.ones(features.shape[:2], dtype=bool)
        else:
            mask = np.asarray(attention_mask.numpy() if torch.is_tensor(attention_mask) else attention_mask) != 0
        if mask.shape != features.shape[:2]:
            raise ValueError(f"attention_mask must have shape [batch, frames] = {features.shape[:2]}; "
                             f"got {mask.shape}")
        if not np.isfinite(features).all():
            raise ValueError("input_features contain NaN or Inf: refused, a transcript of them would be meaningless")
        if (mask.sum(-1) < MIN_FRAMES).any():
            raise ValueError(f"every utterance needs at least {MIN_FRAMES} valid frames (40 ms of audio) to give "
                             f"one output frame; got valid lengths {mask.sum(-1).tolist()}")
        return self.session.run(None, {"input_features": features, "attention_mask": mask})[0]

    def transcribe(self, audio: list, sampling_rate: int | None = None) -> list[str]:
        """Greedy CTC transcripts of audio arrays (at `sampling_rate`, default the processor's; resampled),
        `{"array", "sampling_rate"}` dicts or file paths."""
        extractor = self.processor.feature_extractor
        if sampling_rate is not None:  # arrays at another rate: resampled by `audio_array`
            audio = [{"array": a, "sampling_rate": sampling_rate} if hasattr(a, "shape") else a for a in audio]
        arrays = [audio_array(a, extractor.sampling_rate, f"audio[{i}]") for i, a in enumerate(audio)]
        features = extractor(arrays, sampling_rate=extractor.sampling_rate, return_tensors="np", padding=True,
                             return_attention_mask=True)
        return self.decode(self.logits(features["input_features"], features["attention_mask"]),
                           features["attention_mask"])

    def decode(self, logits: np.ndarray, attention_mask) -> list[str]:
        """Greedy CTC decoding: best label per frame, frames past each utterance's length as blank."""
        lengths = np.asarray(attention_mask).astype(np.int64).sum(-1) // 2 // 2  # both frontends: two halvings
        ids = logits.argmax(-1)
        ids[np.arange(ids.shape[1])[None, :] >= lengths[:, None]] = self.processor.tokenizer.pad_token_id
        return self.processor.tokenizer.batch_decode(ids)


def measure_onnx(model, folder, processor, *, dataset=None, dataset_name: str | None = None,
                 split: str | None = None, duration_s: float = 10.0, repeats: int = 5, batch_size: int = 8,
                 max_samples: int | None = None) -> dict:
    """Latency (batch 1, `duration_s` of audio; medians of `repeats`, timed side by side) of the PyTorch `model`
    (fp32) and of `folder`'s ONNX files, and, with `dataset` (columns audio, text), WER/CER of each on it.
    Returns the report that `write_report` saves and `onnx_card_section` renders."""
    folder = Path(folder)
    runners = {"onnx_fp32": OnnxCTC(folder / ONNX_FILE, processor)}
    if (folder / ONNX_INT8_FILE).is_file():
        runners["onnx_int8"] = OnnxCTC(folder / ONNX_INT8_FILE, processor)
    extractor = processor.feature_extractor
    audio = np.random.default_rng(0).standard_normal(int(duration_s * extractor.sampling_rate)).astype(np.float32)
    feats = extractor(0.1 * audio, sampling_rate=extractor.sampling_rate, return_tensors="pt",
                      return_attention_mask=True)
    model = model.eval()

    def pytorch():
        with torch.inference_mode():
            model(input_features=feats["input_features"], attention_mask=feats["attention_mask"])

    calls = {"pytorch_fp32": pytorch}
    calls.update({name: (lambda r=r: r.logits(feats["input_features"], feats["attention_mask"]))
                  for name, r in runners.items()})
    latency = timeit_side_by_side(calls, repeats, warmup=2, min_repeat_ms=100.0)
    report = {"files": {"fp32": ONNX_FILE, **({"int8": ONNX_INT8_FILE} if "onnx_int8" in runners else {})},
              "latency_ms": {k: round(v, 3) for k, v in latency.items()},
              "latency_setup": {"batch_size": 1, "duration_s": duration_s, "repeats": repeats, "statistic": "median",
                                "side_by_side": True},
              "machine": machine_info()}
    if dataset is not None:
        report["eval"] = {"dataset": dataset_name, "split": split,
                          **_score(model, runners, processor, dataset, batch_size, max_samples)}
    return report


def _score(model, runners: dict, processor, dataset, batch_size: int, max_samples: int | None) -> dict:
    """WER/CER of PyTorch fp32 and every ONNX runner on the same batches of `dataset`."""
    extractor, rate = processor.feature_extractor, processor.feature_extractor.sampling_rate
    n = len(dataset) if max_samples is None else min(len(dataset), max_samples)
    refs, hyps = [], {"pytorch_fp32": [], **{name: [] for name in runners}}
    for start in range(0, n, batch_size):
        rows = dataset[start:min(n, start + batch_size)]
        arrays = [audio_array(a, rate, f"row {start + i}") for i, a in enumerate(rows["audio"])]
        refs.extend(rows["text"])
        features = extractor(arrays, sampling_rate=rate, return_tensors="pt", padding=True, return_attention_mask=True)
        texts, _, _ = greedy_transcribe(model, features["input_features"], features["attention_mask"],
                                        processor.tokenizer)
        hyps["pytorch_fp32"].extend(texts)
        for name, runner in runners.items():
            logits = runner.logits(features["input_features"], features["attention_mask"])
            hyps[name].extend(runner.decode(logits, features["attention_mask"]))
    scores = {name: wer_cer(refs, h) for name, h in hyps.items()}
    return {"num_utterances": len(refs), "wer": {k: s["wer"] for k, s in scores.items()},
            "cer": {k: s["cer"] for k, s in scores.items()}}


def write_report(folder, report: Mapping) -> str:
    path = Path(folder) / ONNX_REPORT
    write_json(path, dict(report))
    return os.fspath(path)


def read_onnx_info(folder) -> dict | bool:
    """What a card says about `folder`'s ONNX files: the saved report, `True` for a `model.onnx` without one,
    `False` when there is none."""
    folder = Path(folder)
    if (folder / ONNX_REPORT).is_file():
        return read_json(folder / ONNX_REPORT)
    return (folder / ONNX_FILE).is_file()


def onnx_card_section(info: Mapping | bool, *, whole_network: bool = False) -> str:
    """Markdown for a model card: the ONNX files, their inputs and dtypes, how to run them, and (with a report)
    latency and WER/CER of PyTorch fp32, ONNX fp32 and ONNX int8."""
    info = info if isinstance(info, Mapping) else {"files": {"fp32": ONNX_FILE}}
    files = info.get("files") or {"fp32": ONNX_FILE}
    names = " and ".join(f"`{f}` ({kind})" for kind, f in files.items())
    inputs = "; ".join(f"`{name}` {dtype} [{', '.join(axes)}]" for name, (dtype, axes) in ONNX_INPUTS.items())
    out_name, out_dtype, out_axes = ONNX_OUTPUT
    kinds = "; `int8` is dynamically quantized (`onnxruntime.quantization.quantize_dynamic`: int8 weights of the " \
        "matrix products)" if "int8" in files else ""
    what = " (the whole network)" if whole_network else ""
    usage = (f"Inputs: {inputs} (batch and frames dynamic; `frames` are the processor's 10 ms frames). The mask is "
             "**bool**, as the processor returns it; convert a 0/1 integer mask with `mask.astype(bool)`. "
             f"Output: `{out_name}` {out_dtype} [{', '.join(out_axes)}], `output_frames` = `frames // 4`; greedy "
             "CTC: argmax per frame, frames past `mask.sum(-1) // 4` are padding.")
    lines = ["## ONNX", "",
             f"{names}{what}, exported with the dynamo exporter (`torch.onnx.export(..., dynamo=True)`){kinds}.", "",
             usage, "",
             "```python",
             "import numpy as np, onnxruntime",
             "from transformers import AutoProcessor",
             "",
             "processor = AutoProcessor.from_pretrained(folder)   # the folder of this card",
             f"session = onnxruntime.InferenceSession(f\"{{folder}}/{files.get('int8', files['fp32'])}\")",
             "audio = np.zeros(16000, dtype=np.float32)           # 16 kHz mono float32",
             "features = processor(audio, sampling_rate=16000, return_tensors=\"np\", return_attention_mask=True)",
             "logits = session.run(None, {\"input_features\": features[\"input_features\"],",
             "                            \"attention_mask\": features[\"attention_mask\"]})[0]",
             "print(processor.batch_decode(logits.argmax(-1)))",
             "```",
             ("`python scripts/transcribe_onnx.py FOLDER/model.onnx speech.wav` (hf_dynasr repository) does the same "
              "for a file of any common format and rate, with input checks.")]
    if info.get("latency_ms"):
        lines += ["", *_measurement_table(info)]
    return "\n".join(lines) + "\n"


def _measurement_table(info: Mapping) -> list[str]:
    latency, evals = info["latency_ms"], info.get("eval") or {}
    setup, machine = info.get("latency_setup") or {}, info.get("machine") or {}
    rows = [("PyTorch fp32", "pytorch_fp32"), ("ONNX fp32", "onnx_fp32"), ("ONNX int8", "onnx_int8")]
    base = latency.get("pytorch_fp32")
    head = "| runtime | latency ms | speed-up |" + (" WER % | CER % |" if evals else "")
    lines = [head, "|---|---:|---:|" + ("---:|---:|" if evals else "")]
    for label, key in rows:
        if key not in latency:
            continue
        cells = [label, f"{latency[key]:.1f}", f"{base / latency[key]:.2f}x" if base else "-"]
        if evals:
            cells += [f"{100 * evals['wer'][key]:.2f}", f"{100 * evals['cer'][key]:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"Latency: median model forward at batch {setup.get('batch_size', 1)} on {setup.get('duration_s', 10):g} s "
            f"of audio, the three timed side by side, {machine.get('cpu', 'this CPU')}, "
            f"{machine.get('num_threads', '?')} threads.")
    if evals:
        note += (f" WER/CER: greedy CTC on {evals.get('num_utterances')} utterances of "
                 f"`{evals.get('dataset')}`{' (' + evals['split'] + ')' if evals.get('split') else ''}.")
    return lines + ["", note]
