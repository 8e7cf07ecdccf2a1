#!/usr/bin/env python
"""Plot where DMAO moved capacity: units per block and module before / after / difference.

    # a DMAO run to plot (the smoke model, one event halfway, under a minute on a CPU):
    python training/train.py --config training/configs/smoke.yaml --output_dir runs/dmao --dmao '{"events": [0.5]}'
    python scripts/plot_architecture.py --run_dir runs/dmao      # writes runs/dmao/dmao_architecture.{png,md}
    python scripts/plot_architecture.py --events runs/dmao/dmao_events.jsonl --output arch.png [--config config.json]

The same command as `dynasr-plot-architecture`; the code is `hf_dynasr.dmao.cli` and `hf_dynasr.dmao.report`.
"""

from hf_dynasr.dmao.cli import plot_architecture_main

if __name__ == "__main__":
    raise SystemExit(plot_architecture_main())
