#!/usr/bin/env python
"""Push an hf_dynasr supernet and every size to the Hugging Face Hub.

    python scripts/push_to_hub.py --checkpoint export --repo org/asr --dry-run      # list files, no network
    python scripts/push_to_hub.py --checkpoint export --repo org/asr                # org/asr + org/asr-<size>
    python scripts/push_to_hub.py --checkpoint ckpt --repo org/asr --layout branches  # one repo, a branch per size

--checkpoint is an export folder (scripts/export_subnets.py) or a supernet checkpoint (exported to a
temporary folder first). The token comes from --token, HF_TOKEN or `hf auth login`; it is never printed.
"""

import argparse
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    token = args.token
    from hf_dynasr.export.hub import HubPushError, format_plan, push_to_hub

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


if __name__ == "__main__":
    sys.exit(main())
