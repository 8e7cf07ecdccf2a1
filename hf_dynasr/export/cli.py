"""Command lines of the export package: `dynasr-export` (= `python scripts/export_subnets.py`), `dynasr-push`
(= `python scripts/push_to_hub.py`) and `python scripts/transcribe_onnx.py`. Results go to stdout, errors to stderr;
a token is never printed."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from transformers import AutoProcessor

from hf_dynasr.data import load_speech_dataset
from hf_dynasr.export import HubPushError, export_subnets, format_plan, push_to_hub
from hf_dynasr.export.onnx_report import OnnxCTC
from hf_dynasr.json_io import read_json

EXPORT_USAGE = """Export every size of an hf_dynasr supernet as its own Transformers checkpoint (plus the supernet).

    python scripts/export_subnets.py --checkpoint ckpt --output_dir export --results results.json --onnx
    python scripts/export_subnets.py --checkpoint ckpt --output_dir export --onnx --int8 \
        --onnx_eval audiofolder:data/demo_corpus --onnx_eval_split test     # + int8 ONNX, WER/CER of both
    python scripts/export_subnets.py --checkpoint ckpt --output_dir export --sizes small,full --onnx
    python scripts/export_subnets.py --checkpoint ckpt --output_dir export --lm lm   # ship an n-gram LM per size

Writes OUTPUT_DIR/<size>/ (compact weights, config with the size's spec and active_subnet, processor,
README.md model card) and OUTPUT_DIR/supernet/, atomically; "full" in --sizes is the whole network on its own.
--onnx adds model.onnx to every size and to supernet/ (the whole network), --int8 also model_int8.onnx
(onnxruntime dynamic quantization); their latency next to PyTorch's (batch 1, 10 s of audio) and, with
--onnx_eval, their WER/CER go into onnx_report.json and the model cards. ONNX inputs: input_features float32
[batch, frames, 80], attention_mask bool [batch, frames] (what the processor returns); scripts/transcribe_onnx.py
runs one. An existing non-empty OUTPUT_DIR is refused unless --overwrite. `dynasr-export` is the same command.
"""

PUSH_USAGE = """Push an hf_dynasr supernet and every size to the Hugging Face Hub.

    python scripts/push_to_hub.py --checkpoint export --repo org/asr --dry-run      # list files, no network
    python scripts/push_to_hub.py --checkpoint export --repo org/asr                # org/asr + org/asr-<size>
    python scripts/push_to_hub.py --checkpoint ckpt --repo org/asr --layout branches  # one repo, a branch per size

--checkpoint is an export folder (scripts/export_subnets.py) or a supernet checkpoint (exported to a
temporary folder first). The token comes from --token, HF_TOKEN or `hf auth login`; it is never printed.
`dynasr-push` is the same command.
"""


def export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=EXPORT_USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="supernet checkpoint directory or Hub id")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--sizes", default="all", help="'all' (every named size) or a comma list of size names; "
                   "'full' is the whole network")
    p.add_argument("--results", nargs="*", default=None, help="results.json file(s) of scripts/evaluate_model.py")
    p.add_argument("--plot", default=None, help="a PNG for the cards (default: drawn from --results)")
    p.add_argument("--baselines", default=None, help="baselines JSON for the drawn plot")
    p.add_argument("--training", default=None, help="JSON with training details (method, schedule, data, ...)")
    p.add_argument("--repo", default=None, help="future Hub repo id, used in the cards (push re-renders them)")
    p.add_argument("--layout", choices=("repos", "branches"), default="repos")
    p.add_argument("--license", default="apache-2.0")
    p.add_argument("--datasets", nargs="*", default=None, help="Hub dataset ids for the card metadata")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx per size and the whole network's "
                   "in supernet/ (dynamo exporter, checked against PyTorch, latency measured)")
    p.add_argument("--int8", action="store_true", help="also write model_int8.onnx per size, dynamically "
                   "quantized with onnxruntime (implies --onnx)")
    p.add_argument("--onnx_eval", default=None, help="dataset spec to score PyTorch, ONNX fp32 and int8 on "
                   "(e.g. audiofolder:data/demo_corpus); its WER/CER go into the cards")
    p.add_argument("--onnx_eval_split", default="test", help="split of --onnx_eval (default: test)")
    p.add_argument("--onnx_eval_max_samples", type=int, default=None, help="score only the first N utterances")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output_dir")
    p.add_argument("--lm", default=None, help="LM folder of scripts/build_lm.py to copy into each size's "
                   "language_model/")
    return p


def export_main(argv: list[str] | None = None) -> int:
    """Export the sizes and print their folders; 2 on bad input."""
    args = export_parser().parse_args(argv)
    logging.basicConfig(format="%(levelname)s: %(message)s")
    training = read_json(args.training) if args.training else None
    try:
        onnx_eval = _onnx_eval_data(args)
        folders = export_subnets(
            args.checkpoint, args.output_dir, sizes=args.sizes, results=args.results, training=training,
            plot=args.plot, baselines=args.baselines, onnx=args.onnx, int8=args.int8, onnx_eval=onnx_eval,
            onnx_eval_name=args.onnx_eval, onnx_eval_split=args.onnx_eval_split if args.onnx_eval else None,
            overwrite=args.overwrite, repo_id=args.repo, layout=args.layout, license=args.license,
            datasets=args.datasets, lm=args.lm,
        )
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, folder in folders.items():
        print(f"{name:>12}: {folder}")
    return 0


def _onnx_eval_data(args):
    """The dataset of --onnx_eval (first --onnx_eval_max_samples rows), or None."""
    if args.onnx_eval is None:
        return None
    if not (args.onnx or args.int8):
        raise ValueError("--onnx_eval scores the ONNX export; add --onnx (and --int8 for the quantized model)")
    dataset = load_speech_dataset(args.onnx_eval, split=args.onnx_eval_split)
    if args.onnx_eval_max_samples is not None:
        dataset = dataset.select(range(min(len(dataset), args.onnx_eval_max_samples)))
    return dataset


TRANSCRIBE_ONNX_USAGE = """Transcribe audio files with an exported ONNX size and onnxruntime (no PyTorch model needed).

    python scripts/transcribe_onnx.py export/small/model.onnx speech.wav
    python scripts/transcribe_onnx.py export/small/model_int8.onnx a.flac b.mp3 --processor export/small

Audio of any common format and sampling rate is decoded, mixed to mono and resampled to 16 kHz as in training;
features come from the processor saved next to the ONNX file (or --processor). Prints one line per file:
`path<TAB>transcript`. Greedy CTC decoding.
"""


def transcribe_onnx_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=TRANSCRIBE_ONNX_USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("onnx", help="model.onnx or model_int8.onnx of an export folder (scripts/export_subnets.py --onnx)")
    p.add_argument("audio", nargs="+", help="audio file(s): wav, flac, mp3, ogg, ...")
    p.add_argument("--processor", default=None, help="processor folder (default: the ONNX file's folder)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: torch's)")
    return p


def transcribe_onnx_main(argv: list[str] | None = None) -> int:
    """Print the transcript of every file; 2 on bad input (missing file, no processor, undecodable audio)."""
    args = transcribe_onnx_parser().parse_args(argv)
    logging.basicConfig(format="%(levelname)s: %(message)s")
    try:
        processor = AutoProcessor.from_pretrained(args.processor or os.path.dirname(os.path.abspath(args.onnx)))
    except (OSError, ValueError) as err:
        print(f"error: no processor for {args.onnx} ({err}); pass --processor FOLDER (the export folder of the "
              "size, which holds preprocessor_config.json and vocab.json)", file=sys.stderr)
        return 2
    try:
        runner = OnnxCTC(args.onnx, processor, num_threads=args.threads)
        for path in args.audio:
            print(f"{path}\t{runner.transcribe([path])[0]}")
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def push_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=PUSH_USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="export folder or supernet checkpoint")
    p.add_argument("--repo", required=True, help="supernet repo id, org/name; sizes go to org/name-<size>")
    p.add_argument("--layout", choices=("repos", "branches"), default="repos")
    p.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                   help="list every file and its size; no network")
    p.add_argument("--private", action="store_true")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN / cached login)")
    p.add_argument("--endpoint", default=None, help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    p.add_argument("--results", nargs="*", default=None, help="results.json for the cards (checkpoint input)")
    p.add_argument("--onnx", action="store_true", help="include model.onnx (checkpoint input)")
    p.add_argument("--message", default="Upload hf_dynasr model", help="commit message")
    return p


def push_main(argv: list[str] | None = None) -> int:
    """Push (or with --dry-run list) the supernet and every size; 1 when the push fails."""
    args = push_parser().parse_args(argv)
    logging.basicConfig(format="%(levelname)s: %(message)s")
    token = args.token
    try:
        report = push_to_hub(
            args.checkpoint, args.repo, layout=args.layout, private=args.private, token=token,
            endpoint=args.endpoint, dry_run=args.dry_run, commit_message=args.message, results=args.results,
            onnx=args.onnx,
        )
    except (HubPushError, FileNotFoundError, ValueError) as err:
        message = str(err).replace(token, "***") if token else str(err)
        print(f"error: {message}", file=sys.stderr)
        return 1
    if args.dry_run:
        print("dry run: nothing was uploaded")
        print(format_plan(report))
        return 0
    for r in report:
        print(f"pushed {len(r['files'])} files to {r['repo_id']} @ {r['revision'] or 'main'}: {r.get('commit_url')}")
    return 0
