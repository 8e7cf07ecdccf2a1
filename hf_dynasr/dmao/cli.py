"""Command line of the DMAO architecture plot (`dynasr-plot-architecture`, `scripts/plot_architecture.py`).

    dynasr-plot-architecture --run_dir runs/dmao      # writes runs/dmao/dmao_architecture.{png,md}
    dynasr-plot-architecture --events runs/dmao/dmao_events.jsonl --output arch.png [--config config.json]
"""

from __future__ import annotations

import argparse
import sys

from hf_dynasr.dmao.report import ReportInputError, architecture_report

DESCRIPTION = """Plot where DMAO moved capacity: units per block and module before / after / difference.

Reads the DMAO events training/train.py appends to OUTPUT_DIR/dmao_events.jsonl (one JSON object per event with
"before" / "after" architecture specs, "dropped", "grown", "sources", parameter counts). "before" is the first
event's spec and "after" the last event's, so several events show their total effect.

Units are DMAO's: FFN and cgMLP chunks, conv chunks, attention heads. Chunk sizes come from the run's config
(--config, else RUN_DIR/final/config.json, else the latest RUN_DIR/checkpoints/*/config.json, else a
config.json next to the events file); without a config they are inferred from the events' "sources" (units
per module) and, failing that, shown as raw sizes (hidden units / heads / channels).

Writes a PNG (matplotlib, Agg backend) and a markdown summary next to it (same name, .md), which is also
printed: which modules grew, shrank or vanished, per block and in total.

    # a DMAO run to plot (the smoke model, one event halfway, under a minute on a CPU):
    python training/train.py --config training/configs/smoke.yaml --output_dir runs/dmao --dmao '{"events": [0.5]}'
    python scripts/plot_architecture.py --run_dir runs/dmao      # writes runs/dmao/dmao_architecture.{png,md}
    python scripts/plot_architecture.py --events runs/dmao/dmao_events.jsonl --output arch.png [--config config.json]
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run_dir", help="training output directory holding dmao_events.jsonl")
    src.add_argument("--events", help="a dmao_events.jsonl file")
    p.add_argument("--config", default=None, help="config.json giving the chunk sizes (default: found in the run)")
    p.add_argument("--output", default=None,
                   help="PNG path (default: RUN_DIR/dmao_architecture.png, or next to --events)")
    return p.parse_args(argv)


def plot_architecture(argv=None) -> dict:
    """Write the figure and summary of a run's DMAO events, print the summary; returns
    `hf_dynasr.dmao.report.architecture_report`'s result."""
    args = parse_args(argv)
    try:
        result = architecture_report(run_dir=args.run_dir, events=args.events, config=args.config,
                                     output=args.output)
    except ReportInputError as err:
        raise SystemExit(f"error: {err}") from None
    print(result["summary"])
    print(f"wrote {result['png']} and {result['markdown']}", file=sys.stderr)
    return result


def plot_architecture_main(argv=None) -> int:
    """The `dynasr-plot-architecture` command: exit status 0 on success."""
    plot_architecture(argv)
    return 0


if __name__ == "__main__":
    sys.exit(plot_architecture_main())
