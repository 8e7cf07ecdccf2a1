"""`dynasr-synthesize` (= `python scripts/synthesize_corpus.py`): the command line of `hf_dynasr.data.synthesis`."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from hf_dynasr.data import synthesis


def synthesize_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=synthesis.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--num_utterances", type=int, required=True, help="total over train+dev+test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engines", default="espeak,flite", help=f"comma list from {','.join(synthesis.ALL_ENGINES)}")
    p.add_argument("--dev_fraction", type=float, default=0.05)
    p.add_argument("--test_fraction", type=float, default=0.05)
    p.add_argument("--num_workers", type=int, default=os.cpu_count() or 1)
    return p


def synthesize_main(argv: list[str] | None = None) -> int:
    """Synthesize the corpus and print a summary per split; 1 when a tool is missing or the size is too small."""
    parser = synthesize_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s: %(message)s")
    try:
        engines = synthesis.parse_engines(args.engines)
    except ValueError as err:
        parser.error(str(err))
    try:
        summary = synthesis.synthesize_corpus(
            args.output_dir, args.num_utterances, seed=args.seed, engines=engines, dev_fraction=args.dev_fraction,
            test_fraction=args.test_fraction, num_workers=args.num_workers)
    except (synthesis.MissingToolError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print_summary(summary)
    return 0


def print_summary(summary: dict) -> None:
    """The corpus, hours per split, synthesized / reused / failed counts and the first failures."""
    print(f"corpus: {summary['output_dir']}  (seed {summary['seed']}, engines {','.join(summary['engines'])})")
    for split, row in summary["splits"].items():
        engines = ", ".join(f"{name} {n}" for name, n in row.get("engines", {}).items())
        print(f"  {split:5s}: {row['utterances']:6d} utterances, {row['hours']:7.3f} h  ({engines})")
    wall, failures = summary["wall_s"], summary["failures"]
    print(f"  synthesized {summary['synthesized']}, reused {summary['reused']}, failed {len(failures)}; "
          f"{wall:.1f} s wall ({summary['jobs'] / max(wall, 1e-9):.1f} utt/s)")
    for line in failures[:10]:
        print(f"  failed: {line}")
    if len(failures) > 10:
        print(f"  ... and {len(failures) - 10} more failures")
