#!/usr/bin/env python
"""Export every size of an hf_dynasr supernet as its own Transformers checkpoint (plus the supernet).

    python scripts/export_subnets.py --checkpoint ckpt --output_dir export --results results.json --onnx
    python scripts/export_subnets.py --checkpoint ckpt --output_dir export --lm lm   # ship an n-gram LM per size

Writes OUTPUT_DIR/<size>/ (compact weights, config with the size's spec and active_subnet, processor,
README.md model card, model.onnx with --onnx) and OUTPUT_DIR/supernet/, atomically. An existing non-empty
OUTPUT_DIR is refused unless --overwrite.
"""

import argparse
import json
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="supernet checkpoint directory or Hub id")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--sizes", default="all", help="'all' or a comma list of size names")
    p.add_argument("--results", nargs="*", default=None, help="results.json file(s) of scripts/evaluate.py")
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
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from hf_dynasr.export.hub import export_subnets

    training = None
    if args.training:
        with open(args.training, encoding="utf-8") as f:
            training = json.load(f)
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


if __name__ == "__main__":
    sys.exit(main())
