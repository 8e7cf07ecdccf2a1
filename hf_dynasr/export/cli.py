"""Command lines of the export package: `dynasr-export` (= `python scripts/export_subnets.py`) and `dynasr-push`
(= `python scripts/push_to_hub.py`). Results go to stdout, errors to stderr; a token is never printed."""

from __future__ import annotations

import argparse
import logging
import sys

from hf_dynasr.export import HubPushError, export_subnets, format_plan, push_to_hub
from hf_dynasr.json_io import read_json

EXPORT_USAGE = """Export every size of an hf_dynasr supernet as its own Transformers checkpoint (plus the supernet).

    python scripts/export_subnets.py --checkpoint ckpt --output_dir export --results results.json --onnx
    python scripts/export_subnets.py --checkpoint ckpt --output_dir export --lm lm   # ship an n-gram LM per size

Writes OUTPUT_DIR/<size>/ (compact weights, config with the size's spec and active_subnet, processor,
README.md model card, model.onnx with --onnx) and OUTPUT_DIR/supernet/, atomically. An existing non-empty
OUTPUT_DIR is refused unless --overwrite. `dynasr-export` is the same command.
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
    p.add_argument("--sizes", default="all", help="'all' or a comma list of size names")
    p.add_argument("--results", nargs="*", default=None, help="results.json file(s) of scripts/evaluate_model.py")
    p.add_argument("--plot", default=None, help="a PNG for the cards (default: drawn from --results)")
    p.add_argument("--baselines", default=None, help="baselines JSON for the drawn plot")
    p.add_argument("--training", default=None, help="JSON with training details (method, schedule, data, ...)")
    p.add_argument("--repo", default=None, help="future Hub repo id, used in the cards (push re-renders them)")
    p.add_argument("--layout", choices=("repos", "branches"), default="repos")
    p.add_argument("--license", default="apache-2.0")
    p.add_argument("--datasets", nargs="*", default=None, help="Hub dataset ids for the card metadata")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx per size")
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
        folders = export_subnets(
            args.checkpoint, args.output_dir, sizes=args.sizes, results=args.results, training=training,
            plot=args.plot, baselines=args.baselines, onnx=args.onnx, overwrite=args.overwrite, repo_id=args.repo,
            layout=args.layout, license=args.license, datasets=args.datasets, lm=args.lm,
        )
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, folder in folders.items():
        print(f"{name:>12}: {folder}")
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
